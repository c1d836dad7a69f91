"""The provider (Claude through the official `anthropic` SDK): the request a task sends
(`request`, `task_schema`), the client and how its answers are read (`client`, `answers`),
when to retry (`retry_timing`), the circuit breaker on provider outages (`breaker`), the
cluster-wide request budget (`budget`), token usage (`usage`), prices (`pricing`) and the
Message Batches API for the batch lane (`batches`). It
imports only `stream_app.core` and `schemas`: nothing here knows about Kafka or jobs.
"""
