"""The Kafka side. The Faust app, its plain-bytes topics and its tables (`faust_app`), wired
into the worker's pipeline (`pipeline`: three agents a few lines long, the rebalance hooks
and the `Pipeline` handle the service and the API use); what the agents do, as plain
objects: `RecordHandler` for the process agent (`record_handler`) and `Aggregator` for the
aggregate agent (`aggregator`); reading consumed messages and dead-lettering the unreadable
ones (`messages`); the records' look-ahead (`lookahead`) and which record topic a job goes
to (`record_topics`); the group-less `batch.jobs` reader that feeds every worker's directory
of jobs (`jobs_reader`), the `batch.spend` reader (`spend_log`) and the consumer outside the
group they share with reading records back (`groupless`, `record_reader`); the job feed
(`job_feed`); topic creation (`topics`); bulk publishing (`bulk_publish`); local table state
and standby replicas (`local_state`, `replicas`); the stall watch (`stall`); the batch lane
(`batch_lane`: batch-lane records grouped into the provider's message batches, their ids
kept in a changelog-backed table); and the repairs: every replaced method of Faust or
aiokafka (`faust_fixes`, each naming its upstream report) and the redelivery watch
(`redelivery`). It imports the job domain, the provider, `stream_app.core` and `schemas`;
never `stream_app.running` or the API.
"""
