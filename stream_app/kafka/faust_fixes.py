"""Every repair of Faust (faust-streaming 0.15.3) and aiokafka (0.14.0) behaviour, in one place:
each function here replaces methods of the app, its consumer, its producer buffer or a Faust
module, and is installed on the worker's app by `stream_app.kafka.faust_app.install_repairs`.
Nothing else in the service replaces a method of Faust or aiokafka.

Each repair names its upstream report (or says that none was found), and has a canary test in
tests/kafka/test_faust_fixes.py, `test_canary_<what upstream does>`, that runs the unpatched
library and asserts the defect (or, for tuning, the upstream value) is still there: the day
an upgrade fixes it, the canary fails with "upstream fixed this: remove <repair>".

Commits (at-least-once: a partition is never committed past a record without an outcome):
- `guard_stale_acks`: an ack of a message fetched before the rebalance commits nothing.
- `guard_unacked_commits`: the commit stops at the lowest message still unacknowledged
  (faust-streaming #606, open PR #707).
- `hold_commits_at_skipped_offsets`: offsets the fetch loop skipped hold the commit.
- `track_fetched_batches`: what the redelivery watch (`stream_app.kafka.redelivery`,
  `heal_lost_deliveries`) reads to tell a record on its way from a lost one; the watch seeks
  back to records Faust passed without delivering them.
Latency and throughput (measured in bench/README.md):
- `deliver_without_a_task_per_message`, `send_without_an_event_loop_turn`,
  `take_several_events_per_event_loop_turn`: an event loop turn per message, send or event.
- `ebb_when_the_producer_buffer_drains`: delivery held for 100 sends per full buffer.
- `fetch_only_what_the_streams_can_take`, `fetch_these_topics_first`,
  `bound_the_fetch_wait`: which partitions a fetch asks for, in which order, how long.

Upstream reports were searched on 2026-12-07 (faust-streaming/faust, robinhood/faust and
aio-libs/aiokafka issues and pull requests).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable
from typing import Any

import faust
from faust.types import TP
from faust.types.tuples import Message
from mode.services import WaitResults

from stream_app.core.logs import get_logger

log = get_logger(__name__)


def guard_stale_acks(app: faust.App) -> None:
    """Never commit a message fetched before the current rebalance generation.

    Faust's stream skips a message whose `generation_id` is older than the consumer's (it
    was fetched before a rebalance); its pure-Python iterator acknowledges it while skipping
    it, even on a `noack()` stream (faust/streams.py `_py_aiter`; the skip came with
    faust-streaming PR #223, for issue #221). And Faust's `Consumer.ack` takes any message
    whatever its generation, so one fetched before the rebalance and acknowledged after it
    (held meanwhile by the look-ahead or a call slot) counts as done too. When the partition
    stayed with this worker, such an ack lets the next commit move past a record that was
    never processed: the record has no outcome and its job never completes. Seen here once
    in three 2-minute outage runs.

    Upstream: no report of this loss found; the closest, faust-streaming #527 (a `noack()`
    stream's offsets skipped after a rebalance, open), names no cause. Canary:
    `test_canary_faust_counts_an_ack_from_before_the_rebalance`.

    The same holds for an ack that comes while the rebalance revoking the message's
    partition is under way: Faust's generation changes only with the new assignment, so
    such a message still looks current. Faust has just forgotten the partition's committed
    offset at the revoke (`Consumer.on_partitions_revoked`), so it takes the ack without
    comparing it with anything, and its "gap at the head" check (`Consumer._new_offset`
    commits nothing while the first acknowledged offset lies more than one past the
    committed one) is skipped while it knows no committed offset: a commit after the new
    assignment, before the table recovery seeks to the committed offsets, moves the
    partition to just past that ack, over every record between that had no outcome. Seen
    in the chaos soak: a call in flight at a revoke acknowledged offsets 14-16 of a
    `batch.records` partition during the rebalance, and 10 ms after the assignment its
    commit moved from 3 to 17; the 11 records in between never got an outcome and their
    job stayed `running` with both workers idle. So an ack of a message of the generation
    in which a revoke began is stale too.

    With this guard such an ack only marks the message done in memory: its offset stays
    uncommitted, so Kafka delivers the record again after the rebalance (at-least-once),
    and the processed-records table keeps that redelivery from paying twice.
    """
    consumer: Any = app.consumer
    acknowledge = consumer.ack
    stale = _stale_offsets(consumer)
    rebalance_start = app.on_rebalance_start

    def on_rebalance_start() -> None:
        # aiokafka's rebalance listener calls this first, in the consumer's thread, before
        # Faust forgets anything of the revoked partitions.
        consumer._insight_revoked_in = app.consumer_generation_id
        rebalance_start()

    app.on_rebalance_start = on_rebalance_start  # type: ignore[method-assign]

    def ack(message: Message) -> bool:
        if not is_current(app, message):
            message.acked = True
            consumer._unacked_messages.discard(message)
            # Until its redelivered copy is acknowledged, no commit passes it
            # (guard_unacked_commits).
            stale[message.tp].add(message.offset)
            log.debug(
                "not committing a message fetched before the rebalance",
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
            )
            return False
        result: bool = acknowledge(message)
        return result

    consumer.ack = ack


def is_current(app: faust.App, message: Message) -> bool:
    """Whether `message` was fetched in the current ownership term of its partition: in the
    consumer's current generation, with no revoke begun since (`guard_stale_acks` notes
    the generation in which one begins). Such a message's partition is this worker's."""
    generation = message.generation_id
    revoked_in = getattr(app.consumer, "_insight_revoked_in", None)
    # Once the rebalance is over, a message of an earlier term is told apart by its
    # generation alone. (Tansu keeps generation 0 through every rebalance: a revoke's
    # mark must not make every later message stale there.)
    revoked = generation == revoked_in and app.rebalancing
    return bool(generation == app.consumer_generation_id and not revoked)


def guard_unacked_commits(app: faust.App) -> None:
    """Never commit a partition past a message that was delivered and not acknowledged.

    Faust commits the first run of consecutive acknowledged offsets, and withholds the
    commit only when the run starts more than one offset past the committed one
    (`Consumer._new_offset`, faust/transport/consumer.py): when the one unacknowledged
    message sits exactly at the committed offset (or nothing was committed yet), it
    commits past it, and after a crash that record is never delivered again: it has no
    outcome and its job never completes (faust-streaming issue #606, open PR #707). Out
    of order acknowledgement (several call slots, and the scheduler's look-ahead) makes
    that common.

    With this guard the commit stops at the lowest offset of a delivered message still
    unacknowledged (Faust's own `_unacked_messages`; the look-ahead holds its messages, so
    they stay in that weak set) or skipped as stale by `guard_stale_acks` and not yet
    acknowledged again, as PR #707 does upstream.

    And nothing is committed while a rebalance is under way (from the revoke until the
    table recovery has sought the partitions to their committed offsets): Faust forgets a
    partition's committed offset at the revoke and learns it again only then, and without
    it its `_new_offset` commits acknowledged offsets however far past the committed one
    they lie (see `guard_stale_acks`, which keeps such acks from being counted at all).

    A message fetched before the current rebalance does not hold the commit: its ack would
    be stale anyway (`guard_stale_acks`), and the assignment sought every partition back to
    its committed offset, so its record comes again as a current message, which holds it.
    Such a message can stay in Faust's weak set of unacknowledged messages long after
    nothing uses it (its event and message refer to each other: only the cyclic garbage
    collector frees them): seen in the chaos soak as a `batch.records` partition whose
    commit stayed at offset 2 for 46 s while offsets 2-11 were acknowledged again.

    Upstream: faust-streaming #606 (open), fix proposed in PR #707 (open). Canary:
    `test_canary_faust_commits_past_the_one_message_still_in_flight`.
    """
    consumer: Any = app.consumer
    new_offset = consumer._new_offset

    def capped_new_offset(tp: TP) -> int | None:
        if app.rebalancing:
            return None  # the acknowledged offsets stay for the first commit after it
        floor = _lowest_pending(consumer, tp, lambda message: is_current(app, message))
        if floor is None:
            result: int | None = new_offset(tp)
            return result
        acked: list[int] = consumer._acked[tp]
        # Offsets at or past the floor stay for a later commit.
        held = [offset for offset in acked if offset >= floor]
        acked[:] = [offset for offset in acked if offset < floor]
        try:
            result = new_offset(tp) if acked else None
        finally:
            acked.extend(held)
        if result is not None and result > floor:
            return floor
        return result

    consumer._new_offset = capped_new_offset


def hold_commits_at_skipped_offsets(app: faust.App) -> None:
    """Never commit a partition past offsets that its fetch loop skipped.

    When the fetch loop hands a message more than one offset past the last one it handed
    out on that partition, Faust takes the offsets in between for offsets that do not exist
    (compaction, transaction markers) and commits past them (`Consumer._add_gap`, used by
    `_new_offset`). But Faust itself can skip records that exist: around a rebalance its
    fetch loop discards the rest of a fetched batch, and the partition's position is
    already past them (stream_app/kafka/redelivery.py). Seen by a new-user trial: after a
    worker's SIGKILL, 27 outcomes on a `batch.results` partition were committed past
    without being counted, and the job stayed `running` at 373/400 for good, restarts
    included.

    With this guard such offsets are a hole that holds the partition's commit at its first
    offset (`guard_unacked_commits` reads it), and the redelivery watch, which sees that
    offset neither fetched again nor in hand, seeks the partition back to it. A hole is
    forgotten once its first offset is delivered again, or when a seek or Faust's own seek
    to the committed offsets makes the consumer read it again. A one-offset gap that really
    does not exist (a transaction's commit marker from an upstream producer) is then passed
    by Faust's commit as before; a longer one (a compacted input topic, which this service's
    topics are not) would be sought back every COOLDOWN_SECONDS of the watch.

    Upstream: no report found. Faust's gap handling dates from robinhood/faust #401 (gaps of
    compacted topics stopped the commits), which took every gap for offsets that do not
    exist. Canary: `test_canary_faust_commits_past_offsets_its_fetch_loop_skipped`.
    """
    consumer: Any = app.consumer
    holes = _holes(consumer)
    seek = consumer.seek
    perform_seek = consumer.perform_seek

    async def add_gap(tp: TP, offset_from: int, offset_to: int) -> None:
        # Faust passes [the first offset skipped, the offset handed out now].
        if offset_from < offset_to:
            holes[tp][offset_from] = offset_to
            log.warning(
                "offsets skipped by the fetch loop: the commit waits for them",
                topic=tp.topic,
                partition=tp.partition,
                first=offset_from,
                last=offset_to - 1,
            )

    async def seek_and_reread(partition: TP, offset: int) -> None:
        await seek(partition, offset)
        tp_holes = holes.get(partition)
        if tp_holes:
            for start in [start for start in tp_holes if start >= offset]:
                del tp_holes[start]

    async def perform_seek_and_reread() -> None:
        await perform_seek()
        holes.clear()

    consumer._add_gap = add_gap
    consumer.seek = seek_and_reread
    consumer.perform_seek = perform_seek_and_reread


def _holes(consumer: Any) -> defaultdict[TP, dict[int, int]]:
    """Offsets skipped by the fetch loop (`hold_commits_at_skipped_offsets`): per partition,
    first offset -> the offset after the last."""
    holes: defaultdict[TP, dict[int, int]] = _kept_on(consumer, "_insight_holes", dict)
    return holes


def _stale_offsets(consumer: Any) -> defaultdict[TP, set[int]]:
    """Offsets of stale messages acknowledged by `guard_stale_acks`, per partition."""
    stale: defaultdict[TP, set[int]] = _kept_on(consumer, "_insight_stale_offsets", set)
    return stale


def _kept_on(consumer: Any, name: str, factory: Callable[[], Any]) -> Any:
    """A per-partition `defaultdict(factory)` kept on the consumer as `name`, shared by the
    guards that write it and `_lowest_pending`, which reads it."""
    kept = getattr(consumer, name, None)
    if kept is None:
        kept = defaultdict(factory)
        setattr(consumer, name, kept)
    return kept


def _lowest_pending(
    consumer: Any, tp: TP, current: Callable[[Message], bool] | None = None
) -> int | None:
    offsets = [
        m.offset
        for m in list(consumer._unacked_messages)
        if m.tp == tp and (current is None or current(m))
    ]
    committed = consumer._committed_offset.get(tp)
    acked_index = consumer._acked_index.get(tp, ())
    stale = _stale_offsets(consumer)
    if tp in stale:
        if committed is not None:
            stale[tp] = {offset for offset in stale[tp] if offset >= committed}
        offsets += [offset for offset in stale[tp] if offset not in acked_index]
        if not stale[tp]:
            del stale[tp]
    holes = _holes(consumer)
    if tp in holes:
        delivered = set(offsets)  # unacknowledged, or stale and waiting for its copy
        for start in list(holes[tp]):
            passed = committed is not None and start < committed
            if passed or start in acked_index or start in delivered:
                del holes[tp][start]  # committed already, or delivered again since
        offsets += list(holes[tp])
        if not holes[tp]:
            del holes[tp]
    return min(offsets) if offsets else None


def track_fetched_batches(consumer: Any) -> Callable[[], bool]:
    """Wrap the consumer's `getmany` (Faust's fetch loop takes it once, when it starts, so
    this runs before the app starts); returns whether a fetched batch is being handed out
    now: from its first record until the fetch loop asks for the next batch.

    Not a repair by itself: the redelivery watch (`stream_app.kafka.redelivery`) reads it, so
    that records of a batch the fetch loop is still handing out count as on their way.
    The watch exists for records Faust passes without delivering them: its fetch loop drops
    a fetched batch when the generation changes and skips offsets below its read offset
    (faust/transport/consumer.py `_drain_messages`), and its stream skips a message of an
    older generation without a trace (faust/_cython/streams.pyx `_prepare_event`).
    Upstream: robinhood/faust #115 ("DROPPED MESSAGE ROFF" after a rebalance, closed without
    a fix); no report of records left undelivered while the worker keeps the partition
    found. Canary: `test_canary_faust_drops_a_message_of_an_older_generation_without_a_trace`.
    """
    getmany = consumer.getmany
    open_batch = [False]

    async def tracked(timeout: float) -> AsyncIterator[Any]:
        open_batch[0] = False  # the previous batch is done: the loop asks for the next
        async for item in getmany(timeout=timeout):
            open_batch[0] = True
            yield item
        open_batch[0] = False

    consumer.getmany = tracked
    return lambda: open_batch[0]


def deliver_without_a_task_per_message(app: faust.App) -> None:
    """Hand a fetched message to its streams' queues without two tasks and an event loop
    round trip per message, when nothing on the way can wait.

    Faust's fetch loop delivers every message through `Service.wait_first(callback(message),
    suspend_flow.wait())` (faust/transport/consumer.py, `Consumer._drain_messages`): a task
    for the delivery, one for the suspend event, and `asyncio.wait` on both, so each message
    costs at least one full turn of the event loop. With 32 calls in flight that turn takes
    tens of milliseconds on a busy machine, and delivery became the pipeline's bottleneck
    (measured: 15 to 20 messages/s, 50 ms between deliveries, records and results queued
    behind each other; bench/README.md). The suspend event is there to interrupt a delivery
    that waits (a stream's queue full, the producer buffer over its limit, flow control
    suspended for a rebalance).

    With this fix, a message whose delivery cannot wait on any of those (checked just
    before) is delivered by awaiting the conductor directly, which then completes without
    suspending; any other message takes Faust's own path, interruptible as before. What is
    delivered, in which order, and how it is acknowledged are unchanged.

    Upstream: no report found. Canary:
    `test_canary_faust_takes_an_event_loop_turn_to_deliver_each_message`.
    """
    consumer: Any = app.consumer
    deliver = consumer.callback
    wait_first = consumer.wait_first
    suspend_flow = consumer.suspend_flow
    flow_control = app.flow_control
    conductor: Any = app.topics

    def callback(message: Message) -> _Delivery:
        return _Delivery(message, deliver(message))

    def cannot_wait(message: Message) -> bool:
        if suspend_flow.is_set() or not flow_control.is_active():
            return False
        buffer = app.producer.buffer
        if buffer.size > buffer.max_messages:
            return False
        return not any(channel.queue.full() for channel in conductor._tp_index.get(message.tp, ()))

    async def first_of(*coros: Any, timeout: Any = None) -> WaitResults:
        if (
            len(coros) == 2
            and timeout is None
            and isinstance(coros[0], _Delivery)
            and cannot_wait(coros[0].message)
        ):
            delivery, suspended = coros
            if inspect.iscoroutine(suspended):
                suspended.close()  # never started: nothing to cancel
            await delivery.delivering
            return WaitResults([delivery], [None], False)
        result: WaitResults = await wait_first(*coros, timeout=timeout)
        return result

    consumer.callback = callback
    consumer.wait_first = first_of


class _Delivery:
    """The conductor's delivery of one message, with the message it delivers."""

    __slots__ = ("delivering", "message")

    def __init__(self, message: Message, delivering: Awaitable[None]) -> None:
        self.message = message
        self.delivering = delivering

    def __await__(self) -> Generator[Any, None, None]:
        return self.delivering.__await__()


def ebb_when_the_producer_buffer_drains(app: faust.App, max_messages: int) -> None:
    """Hold message delivery only until the producer buffer is back under `max_messages`.

    Table writes are queued in Faust's producer buffer (`send_soon`), and Faust's
    conductor waits before delivering each message while that buffer holds more than
    100 of them (`ProducerBuffer.wait_until_ebb`). That wait returns only after 100
    separate "one more sent" wake-ups (`flush_atmost(100)`), each one turn of the event
    loop, while the outcomes still being written refill the buffer: a burst of outcomes
    (32 call slots, or the aggregate agent's two writes per result) stopped delivery for
    4 to 6 seconds at a time, so results reached the aggregate agent seconds late
    (measured, bench/README.md). With this fix, delivery goes on as soon as the buffer is
    back under `max_messages` (1,000 here: about 1.5 MB of outcomes). The buffer still
    bounds what table writes may queue, and a commit still flushes it first.

    Upstream: faust-streaming #173 ("producer buffer full", a flush of 13.8 s; open), whose
    workaround raises `max_messages` as this repair does. Canary:
    `test_canary_faust_holds_delivery_for_a_hundred_sends_once_the_buffer_is_full`.
    """
    buffer: Any = app.producer.buffer
    buffer.max_messages = max_messages

    async def wait_until_ebb() -> None:
        while buffer.size > buffer.max_messages:
            buffer.message_sent.clear()
            await buffer.message_sent.wait()

    buffer.wait_until_ebb = wait_until_ebb


def send_without_an_event_loop_turn(app: faust.App) -> None:
    """Let a send to a topic (table changelog entries, `batch.results`, the dead-letter
    topic) reach the producer without giving up the event loop first.

    Every `Topic.publish_message` awaits `app.maybe_start_producer()`, which Faust wraps in
    mode's `stampede` (faust/app/base.py, mode/utils/futures.py): that wrapper starts with
    `await asyncio.sleep(0)`, so each message waits for one full turn of the event loop even
    when the producer runs long since. Faust's producer buffer sends the queued table
    writes one after the other, so it drained one changelog entry per turn: 30 to 60 ms
    each with 32 calls in flight on a busy machine, about 25 entries/s for the three the
    pipeline writes per record (measured, bench/README.md). With this fix a started
    producer is returned at once; before it has started, Faust's own path starts it.

    Upstream: no report found. Canary:
    `test_canary_faust_takes_an_event_loop_turn_before_each_send`.
    """
    maybe_start_producer = app.maybe_start_producer

    async def started_producer() -> Any:
        producer = app.producer
        if producer.started and not app.in_transaction:
            return producer
        return await maybe_start_producer()

    app.maybe_start_producer = started_producer  # type: ignore[method-assign]


def bound_the_fetch_wait(app: faust.App, seconds: float, min_bytes: int = 1) -> None:
    """Let the broker hold a fetch request at most `seconds` when none of its partitions
    has new data (aiokafka's `fetch_max_wait_ms`; Faust hard-codes 1,500 ms in
    faust/transport/drivers/aiokafka.py `_create_worker_consumer`), and until `min_bytes`
    of new data are there within that time (`fetch_min_bytes`, which Faust leaves at
    aiokafka's 1: stream_app.kafka.fetching says why more).

    aiokafka leaves out of a fetch request every partition whose fetched records the
    worker has not taken yet (aiokafka/consumer/fetcher.py `_get_actions_per_node`), and
    sends one request at a time to a broker. So when the `batch.results` partition still
    had records buffered, the next request asked only for partitions without new data (at
    the end of a job: the drained `batch.records` partitions), the broker held it the full
    1.5 s, and the results produced meanwhile waited for it: no result was counted for
    1.4 s, twice in a 6,000-record job, and those results showed in the status 1 to 1.8 s
    after Claude answered (bench.overhead's visibility p99, measured with the per-result
    produce time against the aggregate agent's). With a short wait the worst such delay is
    `seconds`; an idle worker sends that many more empty fetches (one every `seconds`).

    Tuning, not a defect: Faust has no setting for it. Upstream: no report found. Canary:
    `test_canary_faust_lets_the_broker_hold_a_fetch_for_1500_ms`.
    """
    thread: Any = app.consumer._thread  # type: ignore[attr-defined]
    create = thread._create_worker_consumer

    def create_worker_consumer(transport: Any) -> Any:
        consumer = create(transport)
        # Both read by its fetcher when it starts.
        consumer._fetch_max_wait_ms = int(seconds * 1000)
        consumer._fetch_min_bytes = min_bytes
        return consumer

    thread._create_worker_consumer = create_worker_consumer


# How long a fetch waits when every partition's stream queue is too full to take one.
_NO_ROOM_WAIT_SECONDS = 0.05


def fetch_only_what_the_streams_can_take(app: faust.App, max_records: int) -> None:
    """Leave out of each fetch the partitions whose stream queues could not take a whole
    fetch (`max_records` messages, aiokafka's `max_poll_records`) without filling up.

    Faust reads every topic of a worker through one fetch loop, and a message whose stream
    queue is full makes that loop wait until the stream takes one (the conductor's
    `_handle_full`): every other topic waits behind it. Faust pauses a partition only when
    one of its own messages is delivered while its queue is over 80 % full
    (`on_pressure_high`, faust/transport/conductor.py), so when several partitions feed one
    queue (the process agent reads all of `batch.records`) each of them can still add a
    whole fetch after the mark, and the queue fills. A big job's records then held the
    results and job events of the worker behind them at the processing rate: a
    100,000-record job showed `pending` for minutes, and its cancel answered 503 (issue 9,
    tests/test_backlog.py). With this fix a fetch asks only for partitions that have room;
    the others stay buffered in aiokafka (it fetches no more of them meanwhile) until
    their stream has taken what it holds. What is delivered, in which order, and how it is
    acknowledged are unchanged.

    Upstream: faust-streaming #53 (one slow agent's full buffer starves the others),
    closed by PR #55, which added the 80 % pause this repair goes beyond. Canary:
    `test_canary_faust_fetches_for_a_stream_queue_without_room_for_a_fetch`.
    """
    consumer: Any = app.consumer
    conductor: Any = app.topics
    fetch = consumer._getmany

    def has_room(tp: TP) -> bool:
        for channel in conductor._tp_index.get(tp, ()):
            queue = channel.queue
            if queue.maxsize and queue.maxsize - queue.qsize() < max_records:
                return False
        return True

    async def getmany(active_partitions: set[TP] | None, timeout: float) -> Any:
        if active_partitions:
            ready = {tp for tp in active_partitions if has_room(tp)}
            if len(ready) < len(active_partitions):
                if not ready:
                    # An empty set would mean "every partition" to aiokafka.
                    await asyncio.sleep(min(timeout, _NO_ROOM_WAIT_SECONDS))
                    return {}
                active_partitions = ready
        return await fetch(active_partitions=active_partitions, timeout=timeout)

    consumer._getmany = getmany


def fetch_these_topics_first(app: faust.App, topics: Iterable[str]) -> None:
    """Hand the streams what is buffered for `topics` before the other partitions' records,
    in each round of Faust's fetch loop.

    One round takes at most `max_poll_records` messages from aiokafka's buffer, partition
    after partition in the order they were fetched (aiokafka/consumer/fetcher.py
    `fetched_records`). At the start of a big job the buffer holds thousands of its
    records, so the round after round took 500 records each while the first outcomes sat
    behind them in the buffer: they were counted 1.0 to 1.3 s after they were produced
    (bench.overhead, 6,000 records), and a job's cancel or its `created` event waited the
    same way. With this fix a round first takes what is buffered for `topics` (without
    waiting), then what is buffered for the rest; when nothing was buffered for
    `topics`, the round is Faust's own. Each partition's order is unchanged (Kafka orders
    nothing across partitions); a round may hand over twice `max_poll_records`.

    Tuning, not a defect: aiokafka documents no order across partitions. Upstream: no
    report found (aio-libs/aiokafka #525, a per-partition limit for `getmany`, is the
    nearest request; open). Canary:
    `test_canary_aiokafka_hands_out_its_buffer_partition_after_partition`.
    """
    consumer: Any = app.consumer
    fetch = consumer._getmany
    first = frozenset(topics)

    async def getmany(active_partitions: set[TP] | None, timeout: float) -> Any:
        ahead = {tp for tp in active_partitions or () if tp.topic in first}
        rest = (active_partitions or set()) - ahead
        if not ahead or not rest:  # also None or empty: "every partition" to aiokafka
            return await fetch(active_partitions=active_partitions, timeout=timeout)
        records = dict(await fetch(active_partitions=ahead, timeout=0))
        if not records:
            # Nothing buffered for them: wait for whatever comes first, as Faust does (a
            # wait for `rest` alone would leave their records waiting out the timeout).
            return await fetch(active_partitions=active_partitions, timeout=timeout)
        records.update(await fetch(active_partitions=rest, timeout=0))
        return records

    consumer._getmany = getmany


def take_several_events_per_event_loop_turn(budget_seconds: float) -> bool:
    """Let a stream hand its agent the events already queued for up to `budget_seconds`
    before it gives up the event loop, instead of one event per turn.

    Faust's stream iterator awaits `asyncio.sleep(0)` before every event
    (faust/_cython/streams.pyx, `StreamIterator.next`; faust/streams.py `_py_aiter`), so an
    agent takes one event per turn of the event loop. With 32 call slots a turn takes 15 to
    20 ms on a busy worker, so the aggregate agent counted 50 to 75 results a second while
    two workers produced about 100: its queue grew to 1,500 results and they showed in the
    status 8 to 13 s after Claude answered, growing with the job (measured: one event per
    loop turn, exactly; README "Performance"). With this fix the iterator yields when
    `budget_seconds` have passed since the last yield (or when its queue is empty, as
    before). What is delivered, in which order, and how it is acknowledged are unchanged.
    Returns False (nothing changed) when Faust runs without its Cython extension, whose
    pure-Python iterator binds `asyncio.sleep` locally.

    Upstream: no report found. Canary:
    `test_canary_faust_streams_take_an_event_loop_turn_per_event`.
    """
    try:
        import faust._cython.streams as cython_streams
    except ImportError:
        return False
    # Always wrap Faust's own sleep, so that applying this twice does not stack budgets.
    real_sleep = getattr(cython_streams, "_insight_faust_sleep", cython_streams.sleep)
    cython_streams._insight_faust_sleep = real_sleep  # type: ignore[attr-defined]
    last_yield = [time.perf_counter()]

    async def sleep(delay: float, result: Any = None) -> Any:
        if delay:
            return await real_sleep(delay, result)
        now = time.perf_counter()
        if now - last_yield[0] >= budget_seconds:
            await real_sleep(0)
            last_yield[0] = time.perf_counter()
        return result

    cython_streams.sleep = sleep
    return True
