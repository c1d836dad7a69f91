"""Removing a deleted job's entries from the processed-records table.

That table is keyed per record (`job_id#index`) and co-partitioned with `batch.records`,
whose records of one job spread over every partition: no single worker holds all of a
job's entries. So every worker, when its batch.jobs reader sees the `deleted` event,
removes the entries on the partitions it owns now (active, not standby): from its local
store, and with a tombstone on the table's changelog partition, which the compaction and
the standby replicas follow. An entry a call in flight writes after the deletion is not
written at all (stream_app.kafka.record_handler skips deleted jobs).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from faust.types import TableT

from stream_app.jobs.aggregation import result_prefix
from stream_app.kafka.bulk_publish import key_partition
from stream_app.kafka.replicas import active_partitions, values_with_prefix


def job_keys(table: TableT, job_id: str) -> list[str]:
    """Every key of the job held locally in `table` (keyed `job_id#index`), active and
    standby partitions alike."""
    prefix = result_prefix(job_id)
    chunks = values_with_prefix(table, prefix)
    if chunks is not None:
        return [prefix + rest.decode() for found in chunks for rest, _ in found if rest.isdigit()]
    # The memory store: its keys are decoded.
    keys: Iterable[Any] = list(table.data.keys())
    return [
        k
        for k in keys
        if isinstance(k, str) and k.startswith(prefix) and k[len(prefix) :].isdigit()
    ]


def purge_job(table: TableT, job_id: str, partitions: int) -> int:
    """Remove the job's entries from `table` on the partitions this worker owns (the
    partition of a key is Kafka's default partitioner's, as `batch.records` was keyed);
    returns how many. Each removal also sends a tombstone to the table's changelog."""
    owned = active_partitions(table)
    if not owned:
        return 0
    store: Any = table.data
    removed = 0
    for key in job_keys(table, job_id):
        partition = key_partition(key.encode(), partitions)
        if partition not in owned:
            continue
        if key in store:
            del store[key]
        table.send_changelog(partition, key, None, value_serializer="raw")
        removed += 1
    return removed
