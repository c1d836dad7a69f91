"""The stale-ack and commit guards on Faust's real consumer (no broker needed: nothing connects)."""

from __future__ import annotations

import faust
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from stream_app.faust_fixes import guard_stale_acks, guard_unacked_commits


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
