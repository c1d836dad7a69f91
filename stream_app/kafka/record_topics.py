"""Which record topic a job's records go to: size lanes, so that a small job is never
queued in a partition behind a big job's backlog.

Kafka hands a partition's records in offset order, and a worker reads only so far ahead
(BATCH_LOOKAHEAD_RECORDS): a small job published behind 20,000 records of a big one would
be out of the fair scheduler's reach until those were nearly done. So the records of a job
bigger than BATCH_BULK_JOB_RECORDS go to their own topic (TOPIC_RECORDS_BULK,
`batch.records.bulk`), every other job's to `batch.records` (TOPIC_RECORDS), where
upstream producers publish too. Each worker reads both topics into one look-ahead, each
topic up to half of it (stream_app.kafka.lookahead), and the scheduler picks from both:
however deep the bulk backlog, the small jobs' records are read as soon as they arrive.

The two topics have the same partition count and keys, so Faust assigns partition p of
both to the same worker, with the processed-records table's partition p (co-partitioned).
"""

from __future__ import annotations

from stream_app.core.settings import Settings


def record_topics(settings: Settings) -> tuple[str, ...]:
    """The topics the process agents read, default lane first."""
    return (settings.topic_records, settings.topic_records_bulk)


def topic_for_job(settings: Settings, total_records: int) -> str:
    """Where a job of `total_records` records is published: the bulk topic when it has more
    than BATCH_BULK_JOB_RECORDS records and the scheduling is fair; `batch.records`
    otherwise (BATCH_SCHEDULING=fifo keeps one queue in publication order, for comparison).
    """
    bulk = settings.batch_scheduling == "fair" and total_records > settings.batch_bulk_job_records
    return settings.topic_records_bulk if bulk else settings.topic_records
