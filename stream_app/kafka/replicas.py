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

from stream_app.core.logs import get_logger
from stream_app.jobs.aggregation import result_prefix

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
            _unreadable(table.name, partition, exc)


def _unreadable(table: str, partition: int, exc: Exception) -> None:
    log.warning(
        "could not read a local table partition",
        table=table,
        partition=partition,
        error=type(exc).__name__,
    )


def values_with_prefix(
    table: TableT, prefix: str, chunk: int = 2000
) -> Iterator[list[tuple[bytes, bytes]]] | None:
    """(the rest of the key after `prefix`, the stored value), as stored (bytes), for every
    key of `table` that starts with `prefix`, held locally (active and standby partitions
    alike), in key order per partition, in lists of at most `chunk`; None when the store
    cannot seek (the memory store): the caller then looks keys up one by one. The rest of a
    key is exact for keys of plain ASCII (as JSON encodes them: the digits of an index).

    One seek per partition database and chunk, and a read of only the keys that exist,
    where a lookup per possible key costs a search of every partition database for each
    (see the module's docstring): a job's results are read in time proportional to how
    many it has, not to its size. Nothing is decoded here (Faust's key decoding costs tens
    of microseconds a key). No database iterator is held between chunks, so the caller
    may give the event loop back between them; a partition closed by a rebalance
    meanwhile is left out from there on (logged), as in `stored_values`."""
    store: Any = table.data
    dbs = getattr(store, "_dbs", None)
    if dbs is None or not getattr(store, "use_rocksdict", False):
        return None
    return _chunks_with_prefix(table.name, store, dict(dbs), prefix, chunk)


def _chunks_with_prefix(
    name: str, store: Any, dbs: dict[int, Any], prefix: str, chunk: int
) -> Iterator[list[tuple[bytes, bytes]]]:
    start, trailer = _key_frame(store, prefix)
    begin, cut, own = len(start), len(trailer), store.offset_key
    for partition, db in dbs.items():
        seek: bytes | None = start
        while seek is not None:
            found: list[tuple[bytes, bytes]] = []
            scanned, last = 0, seek
            try:
                for key, raw in db.items(from_key=seek):
                    if not key.startswith(start):
                        break
                    if key.endswith(trailer) and key != own:
                        found.append((key[begin : len(key) - cut], raw))
                    scanned, last = scanned + 1, key
                    if scanned >= chunk:
                        break
            except Exception as exc:  # a store closed by a rebalance while it was read
                _unreadable(name, partition, exc)
                scanned = 0
            # The next chunk starts right after the last key read (the smallest greater key).
            seek = last + b"\0" if scanned >= chunk else None
            if found:
                yield found


def _key_frame(store: Any, prefix: str) -> tuple[bytes, bytes]:
    """(what every stored key that starts with `prefix` starts with, what such a key ends
    with after its rest). Faust stores a table's keys serialized (as JSON strings here,
    quotes included, whatever the table's schema says: see Pipeline.job_partition)."""
    one, other = store._encode_key(prefix + "0"), store._encode_key(prefix + "1")
    shared = 0
    while shared < min(len(one), len(other)) and one[shared] == other[shared]:
        shared += 1
    return bytes(one[:shared]), bytes(one[shared + 1 :])


def stored_results(table: TableT, job_id: str) -> Iterator[list[bytes]] | None:
    """The stored value (JSON, undecoded) of every result of one job held locally in the
    record-results `table` (keyed `job_id#index`), in no particular order, a chunk at a
    time; None when the store cannot seek (see `values_with_prefix`)."""
    chunks = values_with_prefix(table, result_prefix(job_id))
    if chunks is None:
        return None
    # Another job's id may start with this one's and "#": this job's keys end in an index.
    return ([raw for rest, raw in found if rest.isdigit()] for found in chunks)


def active_partitions(table: TableT) -> set[int]:
    """The partitions of `table`'s changelog this worker owns now (empty while it holds
    none, e.g. before the first assignment)."""
    topic = table.changelog_topic.get_topic_name()
    try:
        actives = table.app.assignor.assigned_actives()
    except Exception:  # the assignor has no assignment yet
        return set()
    return {tp.partition for tp in actives if tp.topic == topic}
