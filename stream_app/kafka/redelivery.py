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
from stream_app.kafka.faust_fixes import is_current, track_fetched_batches

log = get_logger(__name__)

K = TypeVar("K")

CHECK_INTERVAL_SECONDS = 2.5
# Checks in a row that must find a partition with records waiting quiet (nothing of it on
# its way, its committed offset and its position unchanged) before it is read again.
IDLE_CHECKS = 4
# Checks in a row that must find the committed offset lost before the partition is sought
# back: a record between the fetcher and a stream's queue is there for microseconds, so
# two checks CHECK_INTERVAL_SECONDS apart never both miss a live one.
CHECKS_BEFORE_SEEK = 2
# The least time between two seeks of one partition.
COOLDOWN_SECONDS = 30.0
# How long a partition's committed offset may stay put with records behind it before its
# state is logged (once, until it moves): what the consumer holds of it, for diagnosis.
STUCK_LOG_SECONDS = 45.0
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


@dataclass(frozen=True)
class IdleView:
    """What one check sees of a partition for the idle rule (offsets are Kafka offsets)."""

    committed: int  # the next offset to commit
    position: int | None  # the consumer's position (None while unknown)
    quiet: bool  # nothing of it queued, unacknowledged or acknowledged, no fetch handed out


class IdlePartitionWatch(Generic[K]):
    """Pure rule: which partitions have sat quiet for `checks` checks in a row (nothing of
    them on its way, the committed offset and the position unchanged). The caller then
    asks the partition's end offset: records waiting behind a quiet partition were never
    fetched, and it is read again from its committed offset. Keys are partitions."""

    def __init__(self, checks: int = IDLE_CHECKS, cooldown_seconds: float = COOLDOWN_SECONDS):
        if checks < 1:
            raise ValueError("at least one check must find the partition quiet")
        self._checks = checks
        self._cooldown = cooldown_seconds
        self._quiet: dict[K, tuple[int, int | None, int]] = {}  # (committed, position, checks)
        self._read_again: dict[K, float] = {}

    def observe(self, partition: K, view: IdleView, now: float) -> bool:
        """Whether `partition` has been quiet and unmoved for `checks` checks (and was not
        read again within `cooldown_seconds`). `now`: seconds on a monotonic clock."""
        if not view.quiet:
            self._quiet.pop(partition, None)
            return False
        committed, position, seen = self._quiet.get(partition, (view.committed, view.position, 0))
        moved = (committed, position) != (view.committed, view.position)
        seen = 1 if moved else seen + 1
        self._quiet[partition] = (view.committed, view.position, seen)
        if seen < self._checks:
            return False
        return now - self._read_again.get(partition, -math.inf) >= self._cooldown

    def read_again(self, partition: K, now: float) -> None:
        """The partition was read again (sought back) at `now`: start counting anew."""
        self._quiet.pop(partition, None)
        self._read_again[partition] = now

    def forget(self, keep: Iterable[K] = ()) -> None:
        """Drop what was seen (a rebalance started, or partitions left this worker)."""
        kept = set(keep)
        for partition in [p for p in self._quiet if p not in kept]:
            del self._quiet[partition]


def heal_lost_deliveries(app: faust.App, topics: Iterable[str]) -> LostOffsetWatch[TP]:
    """Run the watch on `topics` (the agents' source topics) every CHECK_INTERVAL_SECONDS
    as a Faust timer; a seek is logged as a warning (`records fetched but never
    delivered`)."""
    watched = frozenset(topics)
    watch: LostOffsetWatch[TP] = LostOffsetWatch()
    idle: IdlePartitionWatch[TP] = IdlePartitionWatch()
    stuck = _StuckLog()
    delivering = track_fetched_batches(app.consumer)
    log_start = _LogStart(app.consumer)

    @app.timer(CHECK_INTERVAL_SECONDS, name="heal-lost-deliveries")
    async def check() -> None:
        # A failing check must not take the worker down with it (a Faust timer that raises
        # crashes the app): it is logged, and the next one tries again.
        try:
            await _check(app, watched, watch, delivering, log_start, idle, stuck)
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
    idle: IdlePartitionWatch[TP] | None = None,
    stuck: _StuckLog | None = None,
) -> None:
    """One pass of the watches over the partitions of `watched` this worker consumes."""
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
        if idle is not None:
            idle.forget()
        return
    positions = _positions(consumer)
    if positions is None:
        return
    assigned = [tp for tp in consumer.assignment() if tp.topic in watched]
    watch.forget(assigned)
    quiet: list[tuple[TP, int, int | None]] = []
    for tp in assigned:
        position = positions(tp)
        committed = consumer._committed_offset.get(tp)
        if committed is None:
            # Nothing committed yet by the group: its first record is at the log's start
            # (consumer_auto_offset_reset="earliest").
            committed = await log_start(tp)
        if stuck is not None:
            stuck.observe(app, consumer, tp, committed, position, now)
        if idle is not None:
            view = IdleView(committed, position, not busy and _quiet(app, consumer, tp))
            if idle.observe(tp, view, now):
                quiet.append((tp, committed, position))
        if not position:
            continue  # nothing handed out yet (or the position is being reset)
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
    if quiet and idle is not None:
        await _read_idle_again(app, consumer, idle, quiet, now)


async def _read_idle_again(
    app: faust.App,
    consumer: Any,
    idle: IdlePartitionWatch[TP],
    quiet: list[tuple[TP, int, int | None]],
    now: float,
) -> None:
    """Ask the end offsets of the partitions found quiet (one request); each with records
    past its committed offset is resumed and sought back to that offset, logged with what
    the consumer held of it; the others are caught up and are counted anew."""
    ends = await consumer.highwaters(*(tp for tp, _, _ in quiet))
    for tp, committed, position in quiet:
        end = ends.get(tp)
        idle.read_again(tp, now)
        if end is None or end <= committed:
            continue
        log.warning(
            "records wait on a partition nothing reads: reading them again",
            topic=tp.topic,
            partition=tp.partition,
            committed=committed,
            end=end,
            position=position,
            **_consumer_state(app, consumer, tp),
        )
        consumer.resume_partitions({tp})
        consumer._buffered_partitions.discard(tp)
        await consumer.seek(tp, committed)


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


def _quiet(app: faust.App, consumer: Any, tp: TP) -> bool:
    """Whether nothing of `tp` is on its way in this worker: no message of it unacknowledged
    (a stream's queue, the look-ahead, a call slot), none acknowledged and not committed,
    and its streams' queues empty (a queue holding other partitions' records can keep a
    partition out of the fetches: stream_app.kafka.faust_fixes)."""
    if consumer._acked.get(tp):
        return False
    if any(m.tp == tp and is_current(app, m) for m in list(consumer._unacked_messages)):
        return False
    conductor: Any = app.topics
    return all(not channel.queue.qsize() for channel in conductor._tp_index.get(tp, ()))


class _StuckLog:
    """Logs, once until it moves, a partition whose committed offset stayed put for
    STUCK_LOG_SECONDS with records behind it (as the consumer last saw its end), with what
    Faust and aiokafka hold of it: whatever keeps it there, the log line shows."""

    def __init__(self) -> None:
        self._since: dict[TP, tuple[int, float, bool]] = {}  # committed, since, logged

    def observe(
        self,
        app: faust.App,
        consumer: Any,
        tp: TP,
        committed: int,
        position: int | None,
        now: float,
    ) -> None:
        seen = self._since.get(tp)
        if seen is None or seen[0] != committed:
            self._since[tp] = (committed, now, False)
            return
        _, since, logged = seen
        if logged or now - since < STUCK_LOG_SECONDS:
            return
        state = _consumer_state(app, consumer, tp)
        end = state.get("aiokafka_highwater")
        if end is None or end <= committed:
            return
        self._since[tp] = (committed, since, True)
        unacked = sorted(m.offset for m in list(consumer._unacked_messages) if m.tp == tp)
        log.warning(
            "a partition's committed offset has not moved with records behind it",
            topic=tp.topic,
            partition=tp.partition,
            committed=committed,
            position=position,
            seconds=round(now - since),
            in_hand=_in_hand(app, consumer, tp, committed),
            unacked=",".join(map(str, unacked[:10])),
            unacked_count=len(unacked),
            acked=",".join(map(str, sorted(consumer._acked.get(tp, ()))[:10])),
            holes=str(dict(getattr(consumer, "_insight_holes", {}).get(tp, {}))),
            stale=str(sorted(getattr(consumer, "_insight_stale_offsets", {}).get(tp, ()))[:10]),
            queued=",".join(
                f"{channel.queue.qsize()}/{channel.queue.maxsize}"
                for channel in app.topics._tp_index.get(tp, ())  # type: ignore[attr-defined]
            ),
            **state,
        )


def _consumer_state(app: faust.App, consumer: Any, tp: TP) -> dict[str, Any]:
    """What Faust and aiokafka hold of `tp`, for the log line of a partition read again."""
    state: dict[str, Any] = {
        "faust_paused": tp in consumer._paused_partitions,
        "faust_active": tp in (consumer._active_partitions or ()),
        "faust_buffered": tp in consumer._buffered_partitions,
        "read_offset": consumer._read_offset.get(tp),
        "flow_active": consumer.flow_active,
        "generation": app.consumer_generation_id,
    }
    try:
        aiokafka_consumer = consumer._thread._consumer
        assignment = aiokafka_consumer._subscription.subscription.assignment
        tp_state = assignment.state_value(tp) if assignment is not None else None
        fetcher = aiokafka_consumer._fetcher
        state["aiokafka_paused"] = tp_state.paused if tp_state is not None else None
        state["aiokafka_highwater"] = tp_state.highwater if tp_state is not None else None
        state["aiokafka_buffered"] = tp in fetcher._records
        state["fetch_task_done"] = fetcher._fetch_task.done()
    except AttributeError as exc:
        state["aiokafka"] = f"unreadable: {exc}"
    return state


def _in_hand(app: faust.App, consumer: Any, tp: TP, offset: int) -> bool:
    """Whether the record at `offset` of `tp` is on its way to an outcome in this worker."""
    if offset in consumer._acked.get(tp, ()):
        return True
    unacked = list(consumer._unacked_messages)
    if any(m.tp == tp and m.offset == offset and is_current(app, m) for m in unacked):
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
