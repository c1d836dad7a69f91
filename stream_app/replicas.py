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


def active_partitions(table: TableT) -> set[int]:
    """The partitions of `table`'s changelog this worker owns now (empty while it holds
    none, e.g. before the first assignment)."""
    topic = table.changelog_topic.get_topic_name()
    try:
        actives = table.app.assignor.assigned_actives()
    except Exception:  # the assignor has no assignment yet
        return set()
    return {tp.partition for tp in actives if tp.topic == topic}
