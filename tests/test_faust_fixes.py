"""The stale-ack guard on Faust's real consumer (no broker needed: nothing connects)."""

from __future__ import annotations

import faust
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from stream_app.faust_fixes import guard_stale_acks


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
