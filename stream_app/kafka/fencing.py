"""No table write from a worker that lost its partition, and no store that claims changelog
entries it never applied.

Faust assumes one writer per table partition: the worker that owns it. Each partition
store records the changelog offset it has applied up to (its persisted offset), and a
worker that owns or mirrors a partition again reads the changelog from there
(faust/tables/recovery.py). But Faust records as that offset the offset of the worker's
own last changelog write once the broker has acknowledged it (`Table._on_changelog_sent`),
whoever else wrote to the partition meanwhile. Two writers do happen:

- a worker that lost a partition still writes to it: a call slot whose record's partition
  was revoked while its call was with Claude writes its processed-records entry when the
  answer comes (the stream no longer waits for it: `stream_wait_empty=False`), and Faust's
  RocksDB store reopens the revoked partition for it (`_db_for_partition`);
- a worker the group has left behind without its knowing (its heartbeats late on a busy
  machine, or its revoke callback, a producer flush, longer than the rebalance timeout
  after a broker restart) goes on writing until it learns it; meanwhile the new owner has
  recovered the partition and writes to it too (seen in the chaos soak: both workers
  logged `budget share partitions="8/8"` within 4 s, then one `member_id was not
  recognized`).

Either way the late writer's store records a persisted offset past entries of the other
writer that it never applied. When the partition comes back to it (as owner or standby
replica), it reads the changelog from there and misses them for good: seen as a job whose
results table held 344 of 400 results while the changelog held all 400, and as a recount
after a redelivery that read an incomplete results table, so the job stayed `running` with
every outcome on `batch.results` and its offsets committed.

The fence, per table:
- a write (set or delete) for a partition this worker does not own in its current
  assignment is left out: no changelog entry, no local write (the record it belongs to is
  not committed by this worker: its new owner processes it again, at-least-once);
- the persisted offset of the worker's own writes is recorded only at a commit the broker
  accepted (the worker was then a member of the group's current generation: a worker the
  group has left behind gets its commits refused), for writes sent and acknowledged in the
  same ownership term (no rebalance started since), of partitions it still owns. Otherwise
  the store keeps its older persisted offset and, the next time it recovers, reads again
  entries it may already hold (the same values: applying them is idempotent), so a store
  never skips an entry of the changelog. The cost: a recovery may replay up to one commit
  interval (2.8 s) of the worker's own writes more, and after a rebalance the writes of the
  term before it.

Offsets are already safe: Faust commits only partitions in the current assignment
(`Consumer._commit_offsets`, `_commit`), drops the acknowledgements of revoked partitions,
and a commit from a member the group has left behind is refused by the broker;
`guard_stale_acks` keeps records read before a rebalance uncommitted.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.types import TP, TableT

from stream_app.core.logs import get_logger

log = get_logger(__name__)


@dataclass
class WriteFence:
    """The fence's state: what it left out, and the persisted offsets waiting for a commit."""

    app: faust.App
    writes_refused: int = 0
    offsets_not_recorded: int = 0
    offsets_recorded: int = 0
    # (table, changelog partition) -> (term, highest offset of this worker's own writes
    # acknowledged in that term), recorded at the next successful commit of the term.
    pending: dict[tuple[str, TP], tuple[int, int]] = field(default_factory=dict)
    stores: dict[str, Any] = field(default_factory=dict)
    # (table, partition, rebalance count) already logged: one warning per partition a term.
    _logged: set[tuple[str, int, int]] = field(default_factory=set)

    def owns(self, changelog: str, partition: int) -> bool:
        """Whether this worker owns `partition` of the `changelog` topic now."""
        # Asked twice for every table write (the changelog entry, the local write): the
        # assignment's own topic -> partitions lists, not `assigned_actives()`, which
        # builds a set of every owned partition at each call. Faust replaces the
        # assignment object at each rebalance (PartitionAssignor.on_assignment).
        try:
            assignor: Any = self.app.assignor
            partitions = assignor._assignment.actives.get(changelog)
        except Exception:  # no assignment yet
            return False
        return partitions is not None and partition in partitions

    def term(self) -> int:
        """Rebalances started so far (Faust increments it as a rebalance begins)."""
        return int(self.app.rebalancing_count)

    def refused(self, table: str, partition: int) -> None:
        self.writes_refused += 1
        mark = (table, partition, self.term())
        if mark not in self._logged:
            self._logged.add(mark)
            log.warning(
                "table write for a partition this worker no longer owns left out; its new "
                "owner processes the record again",
                table=table,
                partition=partition,
            )

    def acknowledged(self, table: str, tp: TP, term: int, offset: int) -> None:
        """One of this worker's own changelog writes, sent in `term`, was acknowledged."""
        if term != self.term():
            self.offsets_not_recorded += 1
            return
        held = self.pending.get((table, tp))
        if held is not None and held[0] == term:
            offset = max(offset, held[1])
        self.pending[(table, tp)] = (term, offset)

    def record(self, waiting: dict[tuple[str, TP], tuple[int, int]], term: int) -> None:
        """After a commit the broker accepted in `term` (this worker was then a member of
        the group's current generation): record the offsets that waited for it."""
        for (table, tp), (written_in, offset) in waiting.items():
            if self.pending.get((table, tp)) == (written_in, offset):
                del self.pending[(table, tp)]
            if written_in != term or not self.owns(tp.topic, tp.partition):
                self.offsets_not_recorded += 1
                continue
            self.stores[table].set_persisted_offset(tp, offset)
            self.offsets_recorded += 1
        for key in [k for k, (t, _) in self.pending.items() if t != self.term()]:
            del self.pending[key]
            self.offsets_not_recorded += 1


def fence_table_writes(app: faust.App, tables: Iterable[TableT]) -> WriteFence:
    """Install the fence on `tables` and on the app's commits (before the app starts);
    returns its state."""
    fence = WriteFence(app)
    for table in tables:
        _fence(fence, table)
    _record_offsets_at_commits(fence)
    return fence


def _record_offsets_at_commits(fence: WriteFence) -> None:
    consumer: Any = fence.app.consumer
    commit = consumer._commit

    async def commit_then_record(offsets: Any) -> bool:
        # Faust flushed the producer before this call (Consumer._commit_offsets): the
        # writes whose acknowledgement is pending now came before the commit.
        term = fence.term()
        waiting = dict(fence.pending)
        committed: bool = await commit(offsets)
        if committed and not fence.app.rebalancing and fence.term() == term:
            fence.record(waiting, term)
        return committed

    consumer._commit = commit_then_record


def _fence(fence: WriteFence, table: Any) -> None:
    changelog = table.changelog_topic.get_topic_name()
    name = table.name
    on_key_set, on_key_del = table.on_key_set, table.on_key_del
    send_changelog, on_sent = table.send_changelog, table._on_changelog_sent
    fence.stores[name] = table.data

    def owned(key: Any) -> bool:
        partition = table.partition_for_key(key)
        if partition is None or fence.owns(changelog, partition):
            return True
        fence.refused(name, partition)
        return False

    # Table.__setitem__ (mode's ManagedUserDict) calls on_key_set (the changelog entry),
    # then the store's __setitem__ (the local write): both are checked.
    def fenced_set(key: Any, value: Any) -> None:
        if owned(key):
            on_key_set(key, value)

    def fenced_del(key: Any) -> None:
        if owned(key):
            on_key_del(key)

    def send_in_term(*args: Any, **kwargs: Any) -> Any:
        term = fence.term()
        original = table._on_changelog_sent
        # Faust passes its own callback from inside send_changelog: swap it for the one
        # that remembers the term during the call.
        table._on_changelog_sent = functools.partial(sent, term)
        try:
            return send_changelog(*args, **kwargs)
        finally:
            table._on_changelog_sent = original

    def sent(term: int, fut: Any) -> None:
        if fut.cancelled() or fut.exception() is not None:
            on_sent(fut)  # Faust's own handling of a failed send
            return
        metadata = fut.result()
        fence.acknowledged(name, metadata.topic_partition, term, metadata.offset)

    table.on_key_set = fenced_set
    table.on_key_del = fenced_del
    table.send_changelog = send_in_term
    store = table.data
    local_set: Callable[[bytes, bytes | None], None] | None = getattr(store, "_set", None)
    if local_set is not None and hasattr(store, "_db_for_partition"):
        store._set = _fenced_local_write(fence, changelog, local_set)


def _fenced_local_write(
    fence: WriteFence, changelog: str, local_set: Callable[[bytes, bytes | None], None]
) -> Callable[[bytes, bytes | None], None]:
    from faust.streams import current_event

    def fenced(key: bytes, value: bytes | None) -> None:
        event = current_event()
        partition = event.message.partition if event is not None else None
        if partition is not None and not fence.owns(changelog, partition):
            return  # refused (and counted) by on_key_set already
        local_set(key, value)

    return fenced
