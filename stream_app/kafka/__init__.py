"""The Kafka side: Faust agents, topics and tables (`pipeline`, `topics`), the records'
look-ahead (`lookahead`), healing lost deliveries (`redelivery`), Faust's repairs
(`faust_fixes`), local table state and standby replicas (`local_state`, `replicas`), the
stall watch (`stall`), the job feed and the `batch.jobs` reader (`job_feed`,
`jobs_reader`) and bulk publishing (`bulk_publish`). It imports the job domain, the
provider, `stream_app.core` and `schemas`; never `stream_app.running` or the API.
"""
