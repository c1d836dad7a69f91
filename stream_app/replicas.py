"""What a worker holds of a table: the partitions it owns (active) and the standby replicas
it keeps for other workers (TABLE_STANDBY_REPLICAS), both read from its local store.

Faust reads one key from every partition store the worker has open, standby ones included
(faust/stores/rocksdb.py `_get` without a current event searches all of `_dbs`), so a
single job's status or result is found in a standby with `table.get`. Iterating a table
only walks its active partitions (`_dbs_for_actives`); the job list needs the standbys too,
which `stored_values` reads here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
from faust.types import TableT

from stream_app.aggregation import result_prefix
from stream_app.logs import get_logger

log = get_logger(__name__)


def stored_values(table: TableT) -> Iterator[Any]:
    """Every value held locally for `table`, active and standby partitions alike (values
    are JSON, as the pipeline's tables serialize them). With the memory store, standby
    entries land in the same dictionary as active ones, so its items are all of them."""
    store: Any = table.data
    dbs = getattr(store, "_dbs", None)
    if dbs is None:
        yield from table.values()
        return
    for partition, db in list(dbs.items()):
        try:
            for _, raw in store._visible_items(db):
                yield orjson.loads(raw)
        except Exception as exc:  # a store closed by a rebalance while it was read
            log.warning(
                "could not read a local table partition",
                table=table.name,
                partition=partition,
                error=type(exc).__name__,
            )


def values_with_prefix(table: TableT, prefix: str) -> list[tuple[str, Any]] | None:
    """(key, value) of every key of `table` that starts with `prefix`, held locally (active
    and standby partitions alike), in key order per partition; None when the store cannot
    seek (the memory store): the caller then looks keys up one by one.

    One seek per partition database and a read of only the keys that exist, where a
    lookup per possible key costs a search of every partition database for each (see the
    module's docstring): a job's results are read in time proportional to how many it has,
    not to its size. A partition closed by a rebalance meanwhile is left out (logged), as
    in `stored_values`."""
    store: Any = table.data
    dbs = getattr(store, "_dbs", None)
    if dbs is None or not getattr(store, "use_rocksdict", False):
        return None
    start = _encoded_prefix(store, prefix)
    found: list[tuple[str, Any]] = []
    for partition, db in list(dbs.items()):
        try:
            for key, raw in db.items(from_key=start):
                if not key.startswith(start):
                    break
                if key != store.offset_key:
                    found.append((store._decode_key(key), orjson.loads(raw)))
        except Exception as exc:  # a store closed by a rebalance while it was read
            log.warning(
                "could not read a local table partition",
                table=table.name,
                partition=partition,
                error=type(exc).__name__,
            )
    return found


def _encoded_prefix(store: Any, prefix: str) -> bytes:
    """What every stored key that starts with `prefix` starts with. Faust stores a table's
    keys serialized (as JSON strings here, quotes included, whatever the table's schema
    says: see Pipeline.job_partition), so the prefix is what two such keys share."""
    one, other = store._encode_key(prefix + "0"), store._encode_key(prefix + "1")
    shared = 0
    while shared < min(len(one), len(other)) and one[shared] == other[shared]:
        shared += 1
    return bytes(one[:shared])


def stored_results(table: TableT, job_id: str) -> list[Any] | None:
    """Every result of one job held locally in the record-results `table` (keyed
    `job_id#index`), in no particular order; None when the store cannot seek (see
    `values_with_prefix`)."""
    prefix = result_prefix(job_id)
    found = values_with_prefix(table, prefix)
    if found is None:
        return None
    # Another job's id may start with this one's and "#": this job's keys end in an index.
    start = len(prefix)
    return [value for key, value in found if key[start:].isdigit()]


def active_partitions(table: TableT) -> set[int]:
    """The partitions of `table`'s changelog this worker owns now (empty while it holds
    none, e.g. before the first assignment)."""
    topic = table.changelog_topic.get_topic_name()
    try:
        actives = table.app.assignor.assigned_actives()
    except Exception:  # the assignor has no assignment yet
        return set()
    return {tp.partition for tp in actives if tp.topic == topic}
