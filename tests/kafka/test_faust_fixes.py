"""The stale-ack and commit guards on Faust's real consumer (no broker needed: nothing connects)."""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest
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
)


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


def test_without_the_guard_faust_commits_the_stale_message() -> None:
    # The defect the guard exists for: remove the guard once this fails upstream.
    app, consumer = consumer_with_acks()
    assert consumer.ack(message(7, generation_id=4)) is True  # type: ignore[attr-defined]
    assert dict(consumer._acked) == {TP("records", 0): [7]}  # type: ignore[attr-defined]


def test_faust_alone_commits_past_the_one_message_still_in_flight() -> None:
    # faust-streaming #606: the defect guard_unacked_commits exists for. Offset 10 is
    # committed (next to read), 10 is still being processed, 11-12 are acknowledged.
    app, consumer = consumer_with_acks()
    tp = TP("records", 0)
    consumer._committed_offset[tp] = 10  # type: ignore[attr-defined]
    in_flight = message(10, generation_id=5)
    consumer.track_message(in_flight)  # type: ignore[attr-defined]
    for offset in (11, 12):
        consumer.ack(message(offset, generation_id=5))  # type: ignore[attr-defined]
    assert consumer._new_offset(tp) == 13  # type: ignore[attr-defined]


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


def delivering_app(delivered: list[int]) -> tuple[faust.App, Any]:
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
    deliver_without_a_task_per_message(app)
    return app, consumer


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


async def test_a_send_through_a_started_producer_takes_no_event_loop_turn() -> None:
    app = faust.App("send-test", broker="kafka://127.0.0.1:1", autodiscover=False)
    send_without_an_event_loop_turn(app)
    app.producer._started.set()  # type: ignore[attr-defined]  # what a started producer is
    turned: list[bool] = []
    asyncio.get_running_loop().call_soon(turned.append, True)
    # What every Topic.publish_message awaits before it hands a message to the producer.
    assert await app.maybe_start_producer() is app.producer
    assert turned == []  # Faust's own path (mode's stampede) starts with asyncio.sleep(0)


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


async def test_faust_alone_commits_past_offsets_its_fetch_loop_skipped() -> None:
    # The defect hold_commits_at_skipped_offsets exists for: offsets 10-13 were fetched and
    # discarded around a rebalance; the fetch loop next hands out 14 (Consumer._add_gap),
    # and the commit passes 10-13 as if they did not exist.
    app, consumer = consumer_with_acks()
    tp = TP("records", 0)
    consumer._committed_offset[tp] = 10  # type: ignore[attr-defined]
    await consumer._add_gap(tp, 10, 14)  # type: ignore[attr-defined]
    consumer.ack(message(14, generation_id=5))  # type: ignore[attr-defined]
    assert consumer._new_offset(tp) == 15  # type: ignore[attr-defined]


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


async def test_the_worker_consumer_waits_at_most_the_bound_for_a_fetch() -> None:
    app = faust.App("wait-test", broker="kafka://127.0.0.1:1", autodiscover=False)
    thread: Any = app.consumer._thread  # type: ignore[attr-defined]
    assert thread._create_worker_consumer(app.transport)._fetch_max_wait_ms == 1500  # Faust's
    bound_the_fetch_wait(app, 0.1)
    consumer = thread._create_worker_consumer(app.transport)
    assert consumer._fetch_max_wait_ms == 100
    await consumer.stop()
