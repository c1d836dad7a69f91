"""The domain of jobs and records, pure logic tested without Kafka: processing one record
into exactly one outcome (`processing`), folding outcomes into a job's status and ledger
(`aggregation`), which job's record goes next (`scheduler`), a job's task and rules
(`tasks`, `job_rules`, `spend_ledger`), estimates (`estimate`), cancellation
(`cancellation`) and the SQLite mirror (`mirror`). It imports `stream_app.provider`,
`stream_app.core` and `schemas`, never Kafka, Faust or the API.
"""
