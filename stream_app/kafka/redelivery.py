"""Heal a partition whose records the consumer passed without delivering them.

After a rebalance Faust can move a partition's read position past records that no agent
ever receives: records fetched before the rebalance and dropped by its fetch loop (it
discards a fetched batch when the generation changes, and skips offsets below its own
read offset, faust/transport/consumer.py `_drain_messages`), or skipped by a stream for
their old generation (faust/_cython/streams.pyx `_prepare_event`; the skip came with
faust-streaming PR #223). Upstream reports: see `stream_app.kafka.faust_fixes`
(`track_fetched_batches`), which also holds the one method this watch replaces.
Kafka delivers such records again only after the next rebalance or restart: when the
worker keeps the partition, nothing comes, the records get no outcome and their job stays
`running` with a healthy worker (seen here: tests/test_failover_reads.py, after the
owner's SIGKILL the survivor stopped with 15 to 54 records of the job undelivered, in
about one run of three).

The commit side already holds: a partition is never committed past a record that has no
outcome (`stream_app.kafka.faust_fixes.guard_unacked_commits`, `guard_stale_acks`, and
`hold_commits_at_skipped_offsets` for records the fetch loop skipped), so the
committed offset C is the first record not yet done (the log's start while the group has
committed nothing on the partition). This watch checks every few seconds,
for each partition this worker consumes, whether C is still somewhere on its way: not yet
fetched (the consumer's position is at or before C), waiting in a stream's queue, held
unacknowledged (the look-ahead, a call slot), or acknowledged and about to be committed.
A batch the fetch loop is still handing out counts as on its way as a whole (the loop can
wait minutes on a full stream queue or the producer buffer under a backlog: judged record
by record, those records looked lost, and a first version of this watch sought back again
and again under a 200,000-record backlog). When C is none of those on two checks in a row
while the group is stable, its record was lost in between, and the watch seeks the
partition back to C, at most once in COOLDOWN_SECONDS per partition (at-least-once: the records
after C that were processed meanwhile come again, and the processed-records table re-sends
their known outcomes instead of calling Claude).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import faust
from faust.types import TP

from stream_app.core.logs import get_logger
from stream_app.kafka.faust_fixes import track_fetched_batches

log = get_logger(__name__)

K = TypeVar("K")

CHECK_INTERVAL_SECONDS = 2.5
# Checks in a row that must find the committed offset lost before the partition is sought
# back: a record between the fetcher and a stream's queue is there for microseconds, so
# two checks CHECK_INTERVAL_SECONDS apart never both miss a live one.
CHECKS_BEFORE_SEEK = 2
# The least time between two seeks of one partition.
COOLDOWN_SECONDS = 30.0
# How long a partition's log start, once asked, is taken as known.
LOG_START_TTL_SECONDS = 60.0


@dataclass(frozen=True)
class PartitionView:
    """What one check sees of a partition (offsets are Kafka offsets)."""

    committed: int  # the next offset to commit: the first record without an outcome
    position: int  # the consumer's position: the next offset its fetcher hands out
    in_hand: bool  # the committed offset's record is queued, unacknowledged or acknowledged


class LostOffsetWatch(Generic[K]):
    """Pure rule: which partitions to seek back, and where. Keys are partitions."""

    def __init__(
        self, checks: int = CHECKS_BEFORE_SEEK, cooldown_seconds: float = COOLDOWN_SECONDS
    ) -> None:
        if checks < 1:
            raise ValueError("at least one check must find the offset lost")
        self._checks = checks
        self._cooldown = cooldown_seconds
        self._suspects: dict[K, tuple[int, int]] = {}  # partition -> (offset, checks)
        self._sought: dict[K, float] = {}  # partition -> when it was last sought back

    def observe(self, partition: K, view: PartitionView, now: float) -> int | None:
        """The offset to seek `partition` back to, or None while nothing is lost. `now`:
        seconds on a monotonic clock; a partition is sought back at most once in
        `cooldown_seconds`, so a misjudged one costs a bounded amount of re-reading."""
        if view.position <= view.committed or view.in_hand:
            self._suspects.pop(partition, None)
            return None
        offset, seen = self._suspects.get(partition, (view.committed, 0))
        seen = seen + 1 if offset == view.committed else 1
        if seen < self._checks or now - self._sought.get(partition, -math.inf) < self._cooldown:
            self._suspects[partition] = (view.committed, seen)
            return None
        del self._suspects[partition]
        self._sought[partition] = now
        return view.committed

    def forget(self, keep: Iterable[K] = ()) -> None:
        """Drop suspicions (a rebalance started, or partitions left this worker)."""
        kept = set(keep)
        for partition in [p for p in self._suspects if p not in kept]:
            del self._suspects[partition]


def heal_lost_deliveries(app: faust.App, topics: Iterable[str]) -> LostOffsetWatch[TP]:
    """Run the watch on `topics` (the agents' source topics) every CHECK_INTERVAL_SECONDS
    as a Faust timer; a seek is logged as a warning (`records fetched but never
    delivered`)."""
    watched = frozenset(topics)
    watch: LostOffsetWatch[TP] = LostOffsetWatch()
    delivering = track_fetched_batches(app.consumer)
    log_start = _LogStart(app.consumer)

    @app.timer(CHECK_INTERVAL_SECONDS, name="heal-lost-deliveries")
    async def check() -> None:
        # A failing check must not take the worker down with it (a Faust timer that raises
        # crashes the app): it is logged, and the next one tries again.
        try:
            await _check(app, watched, watch, delivering, log_start)
        except Exception:
            log.exception("could not check for records fetched but never delivered")

    del check
    return watch


async def _check(
    app: faust.App,
    watched: frozenset[str],
    watch: LostOffsetWatch[TP],
    delivering: Callable[[], bool],
    log_start: Callable[[TP], Awaitable[int]],
) -> None:
    """One pass of the watch over the partitions of `watched` this worker consumes."""
    consumer: Any = app.consumer
    now = time.monotonic()
    # While a fetched batch is being handed out (the fetch loop may wait minutes on a full
    # stream queue, the producer buffer or flow control), its records are on their way.
    # While a commit runs, Faust has taken the acknowledged offsets it commits off its
    # list and records the new committed offset only when the broker has answered (seconds
    # when the producer buffer it flushes first is long): the committed offset's record
    # looks lost meanwhile (seen under a burst of 6,000 skipped outcomes).
    busy = delivering() or consumer._commit_fut is not None
    if app.rebalancing or consumer.suspend_flow.is_set() or not app.flow_control.is_active():
        watch.forget()
        return
    positions = _positions(consumer)
    if positions is None:
        return
    assigned = [tp for tp in consumer.assignment() if tp.topic in watched]
    watch.forget(assigned)
    for tp in assigned:
        position = positions(tp)
        if not position:
            continue  # nothing handed out yet (or the position is being reset)
        committed = consumer._committed_offset.get(tp)
        if committed is None:
            # Nothing committed yet by the group: its first record is at the log's start
            # (consumer_auto_offset_reset="earliest").
            committed = await log_start(tp)
        # Looking for the record (every unacknowledged message, every queued event) only
        # matters once the consumer has passed it.
        in_hand = busy or (position > committed and _in_hand(app, consumer, tp, committed))
        offset = watch.observe(tp, PartitionView(committed, position, in_hand), now)
        if offset is not None:
            log.warning(
                "records fetched but never delivered: reading them again",
                topic=tp.topic,
                partition=tp.partition,
                offset=offset,
                position=position,
            )
            await consumer.seek(tp, offset)


class _LogStart:
    """The first offset still in a partition's log (Kafka's ListOffsets, earliest), asked in
    the consumer's own thread and event loop (Faust runs aiokafka's consumer there), and
    kept LOG_START_TTL_SECONDS: each question waits behind the fetch in that thread (up to
    a second), and a check asking for every uncommitted partition took 3.5 s. A start moved
    by retention meanwhile is only later: a seek to the older one is reset by aiokafka to
    the log's start (`auto_offset_reset`)."""

    def __init__(self, consumer: Any, ttl_seconds: float = LOG_START_TTL_SECONDS) -> None:
        self._consumer = consumer
        self._ttl = ttl_seconds
        self._known: dict[TP, tuple[float, int]] = {}

    async def __call__(self, tp: TP) -> int:
        now = time.monotonic()
        known = self._known.get(tp)
        if known is not None and now - known[0] < self._ttl:
            return known[1]
        starts = await self._consumer.earliest_offsets(tp)
        start: int = starts[tp]
        self._known[tp] = (now, start)
        return start


def _positions(consumer: Any) -> Any:
    """A function partition -> the aiokafka consumer's position (None when unknown), or
    None while the consumer has no assignment."""
    try:
        assignment = consumer._thread._consumer._subscription.subscription.assignment
    except AttributeError:
        return None
    if assignment is None:
        return None

    def position(tp: TP) -> int | None:
        state = assignment.state_value(tp)
        if state is None or not state.has_valid_position:
            return None
        value: int = state.position
        return value

    return position


def _in_hand(app: faust.App, consumer: Any, tp: TP, offset: int) -> bool:
    """Whether the record at `offset` of `tp` is on its way to an outcome in this worker."""
    if offset in consumer._acked.get(tp, ()):
        return True
    if any(m.tp == tp and m.offset == offset for m in list(consumer._unacked_messages)):
        return True
    conductor: Any = app.topics
    for channel in conductor._tp_index.get(tp, ()):
        queued = channel.queue
        if queued.full():
            return True  # the fetch loop may be waiting to put it there
        if any(
            event.message.tp == tp and event.message.offset == offset for event in queued._queue
        ):
            return True
    return False
