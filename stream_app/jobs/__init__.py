"""The domain of jobs and records, plain objects and pure functions tested without Kafka:
processing one record into exactly one outcome (`processing`), folding job events and
outcomes into a job's status and results (`aggregation`), which waiting record goes next
(`scheduler`), which task a job has (`tasks`), the worker's one directory of jobs with each
job's owner, priority, task and spending cap (`job_rules`), the spend ledgers of capped jobs
and tenant budgets (`spend_ledger`), estimates before a job runs (`estimate`), cancelled
jobs (`cancellation`), the SQLite mirror (`mirror`), which lane runs a job (`lanes`) and a
batch-lane record's next step after each provider answer (`batch_outcomes`). It imports
`stream_app.provider`, `stream_app.core` and `schemas`; never Faust, aiokafka or the API
(`stream_app.kafka` feeds it from the topics).
"""
