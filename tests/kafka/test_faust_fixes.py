"""Faust's repairs (stream_app.kafka.faust_fixes) on Faust's real app and consumer (no broker
needed: nothing connects).

Each repair has a canary, `test_canary_<what upstream does>`, that runs the unpatched library
and asserts the defect (or, for tuning, the upstream value) is still there: the day an upgrade
fixes it, the canary fails with "upstream fixed this: remove <repair>". The repair's own tests
follow its canary."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from aiokafka.consumer.fetcher import Fetcher, FetchResult
from faust.events import Event
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from stream_app.kafka.faust_fixes import (
    bound_the_fetch_wait,
    deliver_without_a_task_per_message,
    ebb_when_the_producer_buffer_drains,
    fetch_only_what_the_streams_can_take,
    fetch_these_topics_first,
    guard_stale_acks,
    guard_unacked_commits,
    hold_commits_at_skipped_offsets,
    send_without_an_event_loop_turn,
    take_several_events_per_event_loop_turn,
    track_fetched_batches,
)
from stream_app.kafka.redelivery import heal_lost_deliveries


def still_upstream(defect_seen: bool, repair: Callable[..., Any], note: str = "") -> None:
    """A canary's verdict: the upstream behaviour `repair` exists for is still there."""
    where = f"{repair.__module__}.{repair.__name__}"
    assert defect_seen, f"upstream fixed this: remove {where}" + (f" ({note})" if note else "")


def message(offset: int, generation_id: int) -> ConsumerMessage:
    return ConsumerMessage(
        "records",
        0,
        offset,
        0.0,
        None,
        None,
        b"k",
        b"v",
        None,
        1,
        1,
        TP("records", 0),
        generation_id=generation_id,
    )


def consumer_with_acks() -> tuple[faust.App, object]:
    app = faust.App("guard-test", broker="kafka://127.0.0.1:1", autodiscover=False)
    app.consumer_generation_id = 5
    # What subscribing an agent to the topic does: acks count for its offsets.
    app.topics._acking_topics.add("records")
    return app, app.consumer


def event(app: faust.App, offset: int, generation_id: int) -> Event:
    m = message(offset, generation_id)
    return Event(app, m.key, m.value, m.headers, m)


@contextlib.contextmanager
def counting_turns() -> Any:
    """Counts the turns of the running event loop while the block runs (`turns[0]`)."""
    loop = asyncio.get_running_loop()
    turns = [0]
    ticking = [True]

    def tick() -> None:
        if ticking[0]:
            turns[0] += 1
            loop.call_soon(tick)

    loop.call_soon(tick)
    try:
        yield turns
    finally:
        ticking[0] = False


async def stream_offsets(app: faust.App, events: list[Event], count: int) -> list[int]:
    """The offsets a Faust stream over `records` hands its agent, for `events` queued in it,
    until it has handed `count` of them."""
    stream = app.stream(app.topic("records"))
    for queued in events:
        stream.channel.queue.put_nowait(queued)  # what the conductor does for a fetched message
    offsets: list[int] = []
    try:
        async for handed in stream.events():
            offsets.append(handed.message.offset)
            if len(offsets) == count:
                break
    finally:
        await stream.stop()
    return offsets


# guard_stale_acks


def test_canary_faust_counts_an_ack_from_before_the_rebalance() -> None:
    # Faust's Consumer.ack takes a message of generation 4 while the consumer is at 5: the
    # next commit would pass it.
    app, consumer = consumer_with_acks()
    counted = consumer.ack(message(7, generation_id=4))  # type: ignore[attr-defined]
    acked = dict(consumer._acked)  # type: ignore[attr-defined]
    still_upstream(counted is True and acked == {TP("records", 0): [7]}, guard_stale_acks)


def test_an_ack_from_before_the_rebalance_commits_nothing() -> None:
    app, consumer = consumer_with_acks()
    guard_stale_acks(app)
    stale = message(7, generation_id=4)
    assert consumer.ack(stale) is False  # type: ignore[attr-defined]
    assert stale.acked
    assert dict(consumer._acked) == {}  # type: ignore[attr-defined]


def test_an_ack_of_the_current_generation_is_counted() -> None:
    app, consumer = consumer_with_acks()
    guard_stale_acks(app)
    assert consumer.ack(message(7, generation_id=5)) is True  # type: ignore[attr-defined]
    assert dict(consumer._acked) == {TP("records", 0): [7]}  # type: ignore[attr-defined]


def revoke_and_ack_during_the_rebalance(app: faust.App, consumer: Any) -> None:
    """Offset 3 of `records` 0 is committed; a rebalance begins (aiokafka's listener calls
    `on_rebalance_start`, then Faust's revoke forgets the partition's acks and committed
    offset, `Consumer.on_partitions_revoked`); calls in flight at the revoke acknowledge
    offsets 14-16 before the new assignment (generation 6) comes with the partition again."""
    tp = TP("records", 0)
    consumer._committed_offset[tp] = 3
    app.on_rebalance_start()
    for forget in (consumer._acked, consumer._acked_index, consumer._committed_offset):
        forget.pop(tp, None)
    for offset in (14, 15, 16):
        consumer.ack(message(offset, generation_id=5))
    app.consumer_generation_id = 6


def test_canary_faust_commits_past_unprocessed_records_after_an_ack_during_a_revoke() -> None:
    """What the chaos soak saw: the commit moved from 3 to 17 right after the assignment,
    and records 3-13 never got an outcome."""
    app, consumer = consumer_with_acks()
    revoke_and_ack_during_the_rebalance(app, consumer)
    committed = consumer._new_offset(TP("records", 0))  # type: ignore[attr-defined]
    still_upstream(
        committed == 17, guard_stale_acks, "and the rebalancing check of guard_unacked_commits"
    )


def test_an_ack_during_the_revoke_of_its_partition_commits_nothing() -> None:
    app, consumer = consumer_with_acks()
    guard_stale_acks(app)
    guard_unacked_commits(app)
    revoke_and_ack_during_the_rebalance(app, consumer)
    tp = TP("records", 0)
    assert dict(consumer._acked) == {}  # type: ignore[attr-defined]
    assert consumer._new_offset(tp) is None  # type: ignore[attr-defined]
    # The recovery seeks to the committed offset (3): 3-16 come again in generation 6
    # (the processed-records table answers 14-16 without a call), and only then does the
    # commit move, to 17.
    consumer._committed_offset[tp] = 3  # type: ignore[attr-defined]
    app.on_rebalance_end()
    for offset in range(3, 16):
        consumer.ack(message(offset, generation_id=6))  # type: ignore[attr-defined]
    # 16 was acknowledged during the revoke only: the commit waits for its copy.
    assert consumer._new_offset(tp) == 16  # type: ignore[attr-defined]
    consumer._committed_offset[tp] = 16  # type: ignore[attr-defined]  # as the commit does
    consumer.ack(message(16, generation_id=6))  # type: ignore[attr-defined]
    assert consumer._new_offset(tp) == 17  # type: ignore[attr-defined]


def test_a_broker_that_keeps_one_generation_through_a_rebalance_still_delivers() -> None:
    """Tansu answers generation 0 to every join: once its rebalance is over, acks of that
    generation count again (the revoke's mark holds only while the rebalance runs)."""
    app, consumer = consumer_with_acks()
    app.consumer_generation_id = 0
    guard_stale_acks(app)
    app.on_rebalance_start()
    assert consumer.ack(message(1, generation_id=0)) is False  # type: ignore[attr-defined]
    app.on_rebalance_end()
    assert consumer.ack(message(2, generation_id=0)) is True  # type: ignore[attr-defined]


def test_nothing_is_committed_while_a_rebalance_is_under_way() -> None:
    app, consumer = consumer_with_acks()
    guard_unacked_commits(app)
    tp = TP("records", 0)
    consumer.ack(message(0, generation_id=5))  # type: ignore[attr-defined]
    app.on_rebalance_start()
    assert consumer._new_offset(tp) is None  # type: ignore[attr-defined]
    app.on_rebalance_end()
    assert consumer._new_offset(tp) == 1  # type: ignore[attr-defined]


# guard_unacked_commits


def test_canary_faust_commits_past_the_one_message_still_in_flight() -> None:
    # faust-streaming #606. Offset 10 is committed (next to read), 10 is still being
    # processed, 11-12 are acknowledged: Faust commits 13.
    app, consumer = consumer_with_acks()
    tp = TP("records", 0)
    consumer._committed_offset[tp] = 10  # type: ignore[attr-defined]
    in_flight = message(10, generation_id=5)
    consumer.track_message(in_flight)  # type: ignore[attr-defined]
    for offset in (11, 12):
        consumer.ack(message(offset, generation_id=5))  # type: ignore[attr-defined]
    still_upstream(consumer._new_offset(tp) == 13, guard_unacked_commits)  # type: ignore[attr-defined]


def test_the_commit_stops_at_the_lowest_message_not_acknowledged() -> None:
    app, consumer = consumer_with_acks()
    guard_unacked_commits(app)
    tp = TP("records", 0)
    consumer._committed_offset[tp] = 10  # type: ignore[attr-defined]
    in_flight = message(10, generation_id=5)
    consumer.track_message(in_flight)  # type: ignore[attr-defined]
    for offset in (11, 12):
        consumer.ack(message(offset, generation_id=5))  # type: ignore[attr-defined]
    assert consumer._new_offset(tp) is None  # type: ignore[attr-defined]
    consumer.ack(in_flight)  # type: ignore[attr-defined]
    assert consumer._new_offset(tp) == 13  # type: ignore[attr-defined]


def test_a_message_from_before_the_rebalance_left_unacknowledged_does_not_hold_the_commit() -> None:
    """Offset 2 was fetched in generation 4 and never acknowledged (its event is garbage
    nobody collected yet); after the rebalance its copy came in generation 5 and was
    acknowledged with 3-4: the commit moves to 5."""
    app, consumer = consumer_with_acks()
    guard_unacked_commits(app)
    tp = TP("records", 0)
    consumer._committed_offset[tp] = 2  # type: ignore[attr-defined]
    left_over = message(2, generation_id=4)
    consumer.track_message(left_over)  # type: ignore[attr-defined]
    for offset in (2, 3, 4):
        consumer.ack(message(offset, generation_id=5))  # type: ignore[attr-defined]
    assert consumer._new_offset(tp) == 5  # type: ignore[attr-defined]
    assert left_over in consumer._unacked_messages  # type: ignore[attr-defined]


def test_with_nothing_committed_yet_the_commit_still_waits_for_the_first_message() -> None:
    app, consumer = consumer_with_acks()
    guard_unacked_commits(app)
    tp = TP("records", 0)
    first = message(0, generation_id=5)
    consumer.track_message(first)  # type: ignore[attr-defined]
    held = [message(n, generation_id=5) for n in (3, 4)]
    for m in held:
        consumer.track_message(m)  # type: ignore[attr-defined]
    for offset in (1, 2, 5, 6):
        consumer.ack(message(offset, generation_id=5))  # type: ignore[attr-defined]
    assert consumer._new_offset(tp) is None  # type: ignore[attr-defined]
    consumer.ack(first)  # type: ignore[attr-defined]
    assert consumer._new_offset(tp) == 3  # type: ignore[attr-defined]
    for m in held:
        consumer.ack(m)  # type: ignore[attr-defined]
    assert consumer._new_offset(tp) == 7  # type: ignore[attr-defined]


def test_a_stale_message_holds_the_commit_until_its_copy_is_acknowledged() -> None:
    app, consumer = consumer_with_acks()
    guard_stale_acks(app)
    guard_unacked_commits(app)
    tp = TP("records", 0)
    consumer._committed_offset[tp] = 10  # type: ignore[attr-defined]
    consumer.ack(message(10, generation_id=4))  # type: ignore[attr-defined]
    consumer.ack(message(11, generation_id=5))  # type: ignore[attr-defined]
    assert consumer._new_offset(tp) is None  # type: ignore[attr-defined]
    consumer.ack(message(10, generation_id=5))  # the redelivered copy  # type: ignore[attr-defined]
    assert consumer._new_offset(tp) == 12  # type: ignore[attr-defined]


def delivering_app(delivered: list[int], *, repaired: bool = True) -> tuple[faust.App, Any]:
    """An app whose conductor is replaced by one that records what it delivers; its
    `records` partition 0 has one subscribed stream queue (maxsize 1)."""
    app = faust.App(
        "delivery-test",
        broker="kafka://127.0.0.1:1",
        autodiscover=False,
        stream_buffer_maxsize=1,
    )
    channel = app.topic("records")
    app.topics._tp_index[TP("records", 0)].add(channel)  # type: ignore[attr-defined]
    app.flow_control.resume()  # what the started app does once it has its assignment
    consumer: Any = app.consumer

    async def deliver(message: ConsumerMessage) -> None:
        await channel.queue.put(message)  # waits while the stream's queue is full
        delivered.append(message.offset)

    consumer.callback = deliver
    if repaired:
        deliver_without_a_task_per_message(app)
    return app, consumer


# hold_commits_at_skipped_offsets


async def test_canary_faust_commits_past_offsets_its_fetch_loop_skipped() -> None:
    # Offsets 10-13 were fetched and discarded around a rebalance; the fetch loop next hands
    # out 14 (Consumer._add_gap), and the commit passes 10-13 as if they did not exist.
    app, consumer = consumer_with_acks()
    tp = TP("records", 0)
    consumer._committed_offset[tp] = 10  # type: ignore[attr-defined]
    await consumer._add_gap(tp, 10, 14)  # type: ignore[attr-defined]
    consumer.ack(message(14, generation_id=5))  # type: ignore[attr-defined]
    passed = consumer._new_offset(tp) == 15  # type: ignore[attr-defined]
    still_upstream(passed, hold_commits_at_skipped_offsets)


async def test_the_commit_waits_at_skipped_offsets_until_they_are_delivered_again() -> None:
    app, consumer = consumer_with_acks()
    guard_unacked_commits(app)
    hold_commits_at_skipped_offsets(app)
    tp = TP("records", 0)
    # Nothing committed yet (the case where Faust's own "gap at the head" check is off).
    for offset in range(0, 3):
        consumer.ack(message(offset, generation_id=5))  # type: ignore[attr-defined]
    await consumer._add_gap(tp, 3, 6)  # type: ignore[attr-defined]  # 3-5 skipped
    for offset in (6, 7):
        consumer.ack(message(offset, generation_id=5))  # type: ignore[attr-defined]
    assert consumer._new_offset(tp) == 3  # type: ignore[attr-defined]
    consumer._committed_offset[tp] = 3  # type: ignore[attr-defined]  # what the commit records
    assert consumer._new_offset(tp) is None  # type: ignore[attr-defined]
    # Read again (the redelivery watch seeks back): 3-5 come and are acknowledged.
    again = message(3, generation_id=5)
    consumer.track_message(again)  # type: ignore[attr-defined]
    assert consumer._new_offset(tp) is None  # type: ignore[attr-defined]
    for m in (again, message(4, generation_id=5), message(5, generation_id=5)):
        consumer.ack(m)  # type: ignore[attr-defined]
    assert consumer._new_offset(tp) == 8  # type: ignore[attr-defined]
    assert not consumer._insight_holes  # type: ignore[attr-defined]


# heal_lost_deliveries (stream_app.kafka.redelivery) and track_fetched_batches


async def test_canary_faust_drops_a_message_of_an_older_generation_without_a_trace() -> None:
    """A stream skips a message fetched before the rebalance: not handed to the agent, not
    held unacknowledged, so nothing holds the commit at it or reads it again while the
    worker keeps the partition (what the redelivery watch exists for)."""
    app, consumer = consumer_with_acks()
    app.flow_control.resume()
    stale = event(app, 1, generation_id=4)
    offsets = await stream_offsets(app, [stale, event(app, 2, 5), event(app, 3, 5)], count=2)
    held = stale.message in consumer._unacked_messages  # type: ignore[attr-defined]
    still_upstream(
        offsets == [2, 3] and not held,
        heal_lost_deliveries,
        "and track_fetched_batches, once Faust neither drops nor skips a record untracked",
    )


async def test_a_fetched_batch_counts_as_on_its_way_until_the_next_fetch() -> None:
    """The fetch loop's batch, as Faust's `_drain_messages` iterates `getmany`."""

    class FetchLoop:
        async def getmany(self, timeout: float) -> AsyncIterator[tuple[str, int]]:
            for offset in (1, 2):
                yield "p0", offset

    fetcher = FetchLoop()
    delivering = track_fetched_batches(fetcher)
    assert delivering() is False
    seen = []
    batch = fetcher.getmany(timeout=1.0)
    async for item in batch:
        seen.append((item, delivering()))
    # Handing out the batch: on its way; the batch done: not any more.
    assert seen == [(("p0", 1), True), (("p0", 2), True)]
    assert delivering() is False


# deliver_without_a_task_per_message


async def test_canary_faust_takes_an_event_loop_turn_to_deliver_each_message() -> None:
    delivered: list[int] = []
    app, consumer = delivering_app(delivered, repaired=False)
    with counting_turns() as turns:
        # What Faust's fetch loop does for every message (Consumer._drain_messages).
        await consumer.wait_first(consumer.callback(message(7, 5)), consumer.suspend_flow.wait())
    still_upstream(delivered == [7] and turns[0] >= 1, deliver_without_a_task_per_message)


async def test_a_message_that_cannot_wait_is_delivered_without_an_event_loop_turn() -> None:
    delivered: list[int] = []
    app, consumer = delivering_app(delivered)
    turned: list[bool] = []
    asyncio.get_running_loop().call_soon(turned.append, True)
    # What Faust's fetch loop does for every message (Consumer._drain_messages).
    await consumer.wait_first(consumer.callback(message(7, 5)), consumer.suspend_flow.wait())
    assert delivered == [7]
    assert turned == []  # Faust's own path needs at least one turn (tasks and asyncio.wait)


async def test_a_delivery_that_would_wait_stays_interruptible_by_a_rebalance() -> None:
    delivered: list[int] = []
    app, consumer = delivering_app(delivered)
    await consumer.wait_first(consumer.callback(message(7, 5)), consumer.suspend_flow.wait())
    # The stream's queue is full now: the next delivery waits, as in Faust...
    waiting = asyncio.ensure_future(
        consumer.wait_first(consumer.callback(message(8, 5)), consumer.suspend_flow.wait())
    )
    await asyncio.sleep(0.05)
    assert not waiting.done()
    # ...and a rebalance (suspend_flow) still ends the wait, without delivering it.
    consumer.suspend_flow.set()
    await asyncio.wait_for(waiting, 5.0)
    assert delivered == [7]


# ebb_when_the_producer_buffer_drains


async def test_canary_faust_holds_delivery_for_a_hundred_sends_once_the_buffer_is_full() -> None:
    """Faust holds delivery while more than 100 table writes are queued, and then until
    `max_messages` separate sends (each a wake-up) have happened, however few are left."""
    app = faust.App("ebb-canary", broker="kafka://127.0.0.1:1", autodiscover=False)
    buffer: Any = app.producer.buffer
    faust_limit = buffer.max_messages
    buffer.max_messages = 10
    buffer._started.set()  # running, as in a started worker
    for n in range(25):
        buffer.pending.put_nowait(n)
    waiting = asyncio.ensure_future(buffer.wait_until_ebb())
    await asyncio.sleep(0)
    # The producer's task sends 20 of them in one turn; 5 are left, under the limit.
    for _ in range(20):
        buffer.pending.get_nowait()
    buffer.message_sent.set()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    held = not waiting.done()  # waiting for 9 more wake-ups (or 0.1 s without one)
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    still_upstream(faust_limit == 100 and held, ebb_when_the_producer_buffer_drains)


async def test_delivery_waits_only_until_the_producer_buffer_is_back_under_its_limit() -> None:
    app = faust.App("ebb-test", broker="kafka://127.0.0.1:1", autodiscover=False)
    ebb_when_the_producer_buffer_drains(app, max_messages=10)
    buffer: Any = app.producer.buffer
    buffer._started.set()  # running, as in a started worker
    for n in range(25):  # table writes queued by a burst of outcomes
        buffer.pending.put_nowait(n)
    waiting = asyncio.ensure_future(buffer.wait_until_ebb())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    # The producer's task sends 20 of them in one turn; 5 are left, under the limit.
    for _ in range(20):
        buffer.pending.get_nowait()
    buffer.message_sent.set()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    # Faust's own wait goes on for 100 separate wake-ups while anything is queued.
    assert waiting.done() and waiting.exception() is None


# send_without_an_event_loop_turn


async def test_canary_faust_takes_an_event_loop_turn_before_each_send() -> None:
    app = faust.App("send-canary", broker="kafka://127.0.0.1:1", autodiscover=False)
    app.producer._started.set()  # type: ignore[attr-defined]  # what a started producer is
    with counting_turns() as turns:
        # What every Topic.publish_message awaits (mode's stampede starts with sleep(0)).
        producer = await app.maybe_start_producer()
    still_upstream(producer is app.producer and turns[0] >= 1, send_without_an_event_loop_turn)


async def test_a_send_through_a_started_producer_takes_no_event_loop_turn() -> None:
    app = faust.App("send-test", broker="kafka://127.0.0.1:1", autodiscover=False)
    send_without_an_event_loop_turn(app)
    app.producer._started.set()  # type: ignore[attr-defined]  # what a started producer is
    turned: list[bool] = []
    asyncio.get_running_loop().call_soon(turned.append, True)
    # What every Topic.publish_message awaits before it hands a message to the producer.
    assert await app.maybe_start_producer() is app.producer
    assert turned == []  # Faust's own path (mode's stampede) starts with asyncio.sleep(0)


# take_several_events_per_event_loop_turn


async def test_canary_faust_streams_take_an_event_loop_turn_per_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import faust._cython.streams as cython_streams

    # Faust's own sleep, even where another test of this process installed the repair.
    faust_sleep = getattr(cython_streams, "_insight_faust_sleep", cython_streams.sleep)
    monkeypatch.setattr(cython_streams, "sleep", faust_sleep)
    app, _ = consumer_with_acks()
    app.flow_control.resume()
    queued = [event(app, offset, generation_id=5) for offset in range(100)]
    with counting_turns() as turns:
        offsets = await stream_offsets(app, queued, count=100)
    still_upstream(
        offsets == list(range(100)) and turns[0] >= 100, take_several_events_per_event_loop_turn
    )


async def test_a_stream_gives_up_the_event_loop_only_once_its_budget_is_spent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Faust's Cython stream iterator awaits its module's `sleep(0)` before every event:
    with the fix that yields only once `budget_seconds` have passed since the last yield."""
    import faust._cython.streams as cython_streams

    original = cython_streams.sleep
    monkeypatch.setattr(cython_streams, "sleep", original)  # restored after the test
    assert take_several_events_per_event_loop_turn(budget_seconds=3600.0) is True
    loop = asyncio.get_running_loop()
    turns = [0]

    def tick() -> None:
        turns[0] += 1
        loop.call_soon(tick)

    loop.call_soon(tick)
    for _ in range(100):  # what 100 queued events cost the iterator
        await cython_streams.sleep(0)
    assert turns[0] == 0
    cython_streams.sleep = original
    take_several_events_per_event_loop_turn(budget_seconds=0.0)
    for _ in range(3):
        await cython_streams.sleep(0)
    assert turns[0] >= 3  # a spent budget yields every time, as Faust does
    assert await cython_streams.sleep(0.001, "x") == "x"  # real waits are untouched


# fetch_only_what_the_streams_can_take


async def test_canary_faust_fetches_for_a_stream_queue_without_room_for_a_fetch() -> None:
    """Faust asks for a partition whose stream queue has 3 places left (under its 80 % mark)
    while a fetch may hand over any number of records (max_poll_records unset)."""
    app = faust.App(
        "room-canary", broker="kafka://127.0.0.1:1", autodiscover=False, stream_buffer_maxsize=10
    )
    records, tp = app.topic("records"), TP("records", 0)
    app.topics._tp_index[tp].add(records)  # type: ignore[attr-defined]
    for n in range(7):
        records.queue.put_nowait(n)
    consumer: Any = app.consumer
    consumer._active_partitions = {tp}  # what the assignment gives it
    asked: list[set[TP]] = []

    async def fetch(active_partitions: set[TP], timeout: float) -> dict[TP, list[Any]]:
        asked.append(set(active_partitions))
        return {}

    consumer._getmany = fetch  # the consumer thread's fetch, which needs a broker
    await consumer._wait_next_records(timeout=0.1)  # one round of Faust's fetch loop
    still_upstream(
        app.conf.broker_max_poll_records is None and asked == [{tp}],
        fetch_only_what_the_streams_can_take,
    )


async def test_a_fetch_leaves_out_the_partitions_whose_stream_queue_has_no_room() -> None:
    """Four `batch.records` partitions feed one stream queue (as the process agent's), the
    results partition another. A fetch asks only for partitions whose queue can take a
    whole fetch; with no room anywhere it asks for nothing (an empty set would mean every
    partition to aiokafka)."""
    app = faust.App(
        "fetch-test", broker="kafka://127.0.0.1:1", autodiscover=False, stream_buffer_maxsize=10
    )
    records, results = app.topic("records"), app.topic("results")
    tps = [TP("records", p) for p in range(4)]
    for tp in tps:
        app.topics._tp_index[tp].add(records)  # type: ignore[attr-defined]
    app.topics._tp_index[TP("results", 0)].add(results)  # type: ignore[attr-defined]
    consumer: Any = app.consumer
    asked: list[set[TP] | None] = []

    async def fetch(active_partitions: set[TP] | None, timeout: float) -> dict[TP, list[Any]]:
        asked.append(None if active_partitions is None else set(active_partitions))
        return {}

    consumer._getmany = fetch  # the consumer thread's fetch, which needs a broker
    fetch_only_what_the_streams_can_take(app, max_records=4)
    everything = {*tps, TP("results", 0), TP("changelog", 0)}  # no stream: always asked

    await consumer._getmany(active_partitions=set(everything), timeout=1.0)
    for n in range(7):  # 3 places left: not enough for a fetch of 4
        records.queue.put_nowait(n)
    await consumer._getmany(active_partitions=set(everything), timeout=1.0)
    for n in range(7):
        results.queue.put_nowait(n)
    got = await consumer._getmany(active_partitions={*tps, TP("results", 0)}, timeout=0.5)
    records.queue.get_nowait()  # the stream took one: room for a whole fetch again
    await consumer._getmany(active_partitions=set(everything), timeout=1.0)
    assert asked == [
        everything,
        {TP("results", 0), TP("changelog", 0)},
        {*tps, TP("changelog", 0)},  # the results queue is still too full
    ]
    assert got == {}


# fetch_these_topics_first


async def test_canary_aiokafka_hands_out_its_buffer_partition_after_partition() -> None:
    """aiokafka's fetched_records takes max_records from its buffer partition after partition,
    in the order they were fetched: a result fetched after 600 records waits a round."""

    class Records:  # aiokafka's PartitionRecords, as far as FetchResult reads it
        def __init__(self, count: int) -> None:
            self._offsets = iter(range(count))
            self.next_fetch_offset = 0

        def __iter__(self) -> Records:
            return self

        def __next__(self) -> int:
            offset = next(self._offsets)
            self.next_fetch_offset = offset + 1
            return offset

    class Position:  # one partition's state in aiokafka's subscription
        paused = False
        position = 0

        def consumed_to(self, offset: int) -> None:
            self.position = offset

    records_tp, results_tp = TP("records", 0), TP("results", 0)
    positions = {records_tp: Position(), results_tp: Position()}
    assignment = SimpleNamespace(active=True, state_value=positions.__getitem__)
    buffered = {  # fetched in this order
        tp: FetchResult(tp, assignment=assignment, partition_records=Records(n), backoff=0)
        for tp, n in ((records_tp, 600), (results_tp, 1))
    }
    fetcher = SimpleNamespace(
        _records=buffered,
        _subscriptions=SimpleNamespace(reassignment_in_progress=False),
        _notify=lambda future: None,
        _wait_consume_future=None,
    )
    got = await Fetcher.fetched_records(
        fetcher,  # type: ignore[arg-type]
        {records_tp, results_tp},
        timeout=0,
        max_records=500,
    )
    still_upstream(
        {tp: len(handed) for tp, handed in got.items()} == {records_tp: 500},
        fetch_these_topics_first,
        "aiokafka no longer hands out its buffer partition after partition",
    )


async def test_a_fetch_round_hands_over_job_events_and_results_before_records() -> None:
    """aiokafka hands out its buffer partition after partition, up to max_poll_records a
    round: a job's first outcomes waited behind thousands of its buffered records. A round
    now takes what is buffered for the first topics, then the rest; with nothing buffered
    for them it is Faust's one call (which waits for whichever partition gets data)."""
    app = faust.App("first-test", broker="kafka://127.0.0.1:1", autodiscover=False)
    consumer: Any = app.consumer
    records = [TP("records", p) for p in range(4)]
    results, jobs = TP("results", 0), TP("jobs", 0)
    buffered: dict[TP, list[int]] = {tp: [1, 2] for tp in records}
    asked: list[tuple[set[TP], float]] = []

    async def fetch(active_partitions: set[TP], timeout: float) -> dict[TP, list[int]]:
        asked.append((set(active_partitions), timeout))
        return {tp: buffered.pop(tp) for tp in active_partitions if tp in buffered}

    consumer._getmany = fetch
    fetch_these_topics_first(app, ("jobs", "results"))
    everything = {*records, results, jobs}

    got = await consumer._getmany(active_partitions=set(everything), timeout=1.0)
    assert asked == [({results, jobs}, 0), (everything, 1.0)]  # nothing of theirs: Faust's
    assert set(got) == set(records)

    asked.clear()
    buffered.update({tp: [3] for tp in records} | {results: [9]})
    got = await consumer._getmany(active_partitions=set(everything), timeout=1.0)
    assert asked == [({results, jobs}, 0), (set(records), 0)]  # the rest without waiting
    assert list(got)[0] == results and set(got) == {results, *records}

    asked.clear()
    await consumer._getmany(active_partitions=set(records), timeout=1.0)
    assert asked == [(set(records), 1.0)]  # none of the first topics asked for: one call


# bound_the_fetch_wait


async def test_canary_faust_lets_the_broker_hold_a_fetch_for_1500_ms() -> None:
    app = faust.App("wait-canary", broker="kafka://127.0.0.1:1", autodiscover=False)
    thread: Any = app.consumer._thread  # type: ignore[attr-defined]
    consumer = thread._create_worker_consumer(app.transport)
    try:
        still_upstream(
            consumer._fetch_max_wait_ms == 1500,
            bound_the_fetch_wait,
            "Faust no longer hard-codes fetch_max_wait_ms=1500: set the wait through Faust",
        )
    finally:
        await consumer.stop()


async def test_the_worker_consumer_waits_at_most_the_bound_for_a_fetch() -> None:
    app = faust.App("wait-test", broker="kafka://127.0.0.1:1", autodiscover=False)
    thread: Any = app.consumer._thread  # type: ignore[attr-defined]
    bound_the_fetch_wait(app, 0.1, 16384)
    consumer = thread._create_worker_consumer(app.transport)
    assert consumer._fetch_max_wait_ms == 100
    assert consumer._fetch_min_bytes == 16384
    await consumer.stop()
