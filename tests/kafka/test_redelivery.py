"""The lost-delivery rule (stream_app.kafka.redelivery), without Kafka: when a partition is
sought back to its committed offset, and when it is left alone."""

from __future__ import annotations

import pytest
from faust.types import TP

from stream_app.kafka.redelivery import (
    IdlePartitionWatch,
    IdleView,
    LostOffsetWatch,
    PartitionView,
    _in_hand,
)
from tests.kafka.test_faust_fixes import consumer_with_acks, message


def test_a_committed_offset_passed_and_held_nowhere_is_sought_back_after_two_checks() -> None:
    watch: LostOffsetWatch[str] = LostOffsetWatch(checks=2)
    lost = PartitionView(committed=4, position=50, in_hand=False)
    assert watch.observe("p0", lost, 0.0) is None  # once could be a record between two hands
    assert watch.observe("p0", lost, 2.5) == 4
    # Sought back: not again within the cooldown (30 s), however often it looks lost.
    assert [watch.observe("p0", lost, t) for t in (5.0, 7.5, 30.0)] == [None] * 3
    assert watch.observe("p0", lost, 32.5) == 4


@pytest.mark.parametrize(
    "view",
    [
        PartitionView(committed=4, position=4, in_hand=False),  # not fetched yet
        PartitionView(committed=4, position=3, in_hand=False),  # sought back already
        PartitionView(committed=4, position=50, in_hand=True),  # queued, unacked or acked
    ],
)
def test_a_record_still_on_its_way_is_never_sought(view: PartitionView) -> None:
    watch: LostOffsetWatch[str] = LostOffsetWatch(checks=2)
    assert [watch.observe("p0", view, 0.0) for _ in range(5)] == [None] * 5


def test_progress_or_a_rebalance_between_checks_clears_the_suspicion() -> None:
    watch: LostOffsetWatch[str] = LostOffsetWatch(checks=2)
    assert watch.observe("p0", PartitionView(4, 50, False), 0.0) is None
    # The commit moved on: a new offset must be found lost twice of its own.
    assert watch.observe("p0", PartitionView(5, 50, False), 0.0) is None
    assert watch.observe("p0", PartitionView(5, 50, False), 0.0) == 5
    # The record came back into hand between two checks.
    assert watch.observe("p1", PartitionView(7, 9, False), 0.0) is None
    assert watch.observe("p1", PartitionView(7, 9, True), 0.0) is None
    assert watch.observe("p1", PartitionView(7, 9, False), 0.0) is None
    # A rebalance (or the partition leaving this worker) forgets what was seen.
    watch.forget(keep=["p2"])
    assert watch.observe("p1", PartitionView(7, 9, False), 0.0) is None
    assert watch.observe("p1", PartitionView(7, 9, False), 0.0) == 7


def test_partitions_are_watched_apart_and_checks_must_be_positive() -> None:
    watch: LostOffsetWatch[str] = LostOffsetWatch(checks=2)
    assert watch.observe("p0", PartitionView(1, 2, False), 0.0) is None
    assert watch.observe("p1", PartitionView(1, 2, False), 0.0) is None
    assert watch.observe("p0", PartitionView(1, 2, False), 0.0) == 1
    assert watch.observe("p1", PartitionView(1, 2, False), 0.0) == 1
    with pytest.raises(ValueError):
        LostOffsetWatch(checks=0)


def test_a_record_is_in_hand_while_faust_holds_it_unacknowledged_or_acknowledged() -> None:
    """`_in_hand` reads Faust's own consumer state (no broker: nothing connects)."""
    app, consumer = consumer_with_acks()
    tp = TP("records", 0)
    assert _in_hand(app, consumer, tp, 7) is False
    held = message(7, generation_id=5)
    consumer._unacked_messages.add(held)  # type: ignore[attr-defined]
    assert _in_hand(app, consumer, tp, 7) is True
    assert _in_hand(app, consumer, tp, 8) is False
    consumer._unacked_messages.discard(held)  # type: ignore[attr-defined]
    consumer._acked[tp].append(8)  # type: ignore[attr-defined]
    assert _in_hand(app, consumer, tp, 8) is True
    assert _in_hand(app, consumer, TP("records", 1), 8) is False


# The idle rule: a partition with records waiting that nothing reads.


def test_a_partition_quiet_and_unmoved_for_four_checks_is_a_suspect_once_per_cooldown() -> None:
    idle: IdlePartitionWatch[str] = IdlePartitionWatch(checks=4, cooldown_seconds=30.0)
    stuck = IdleView(committed=12, position=12, quiet=True)
    assert [idle.observe("p0", stuck, t) for t in (0.0, 2.5, 5.0)] == [False] * 3
    assert idle.observe("p0", stuck, 7.5) is True
    # Its end offset is asked, and it is read again (or found caught up): counted anew,
    # and not read again within the cooldown however long it stays quiet.
    idle.read_again("p0", 7.5)
    assert [idle.observe("p0", stuck, 7.5 + 2.5 * n) for n in range(1, 12)] == [False] * 11
    assert idle.observe("p0", stuck, 40.0) is True


@pytest.mark.parametrize(
    "views",
    [
        # Something of the partition is on its way (queued, unacknowledged, acknowledged).
        [IdleView(12, 12, quiet=n != 2) for n in range(6)],
        # The commit moves.
        [IdleView(12 + n, 30, quiet=True) for n in range(6)],
        # The position moves (records are being fetched).
        [IdleView(12, 12 + n, quiet=True) for n in range(6)],
    ],
)
def test_a_partition_that_moves_or_holds_records_is_never_a_suspect(
    views: list[IdleView],
) -> None:
    idle: IdlePartitionWatch[str] = IdlePartitionWatch(checks=4)
    assert [idle.observe("p0", view, 2.5 * n) for n, view in enumerate(views)] == [False] * 6


def test_a_rebalance_forgets_the_quiet_partitions() -> None:
    idle: IdlePartitionWatch[str] = IdlePartitionWatch(checks=2)
    stuck = IdleView(committed=3, position=3, quiet=True)
    assert idle.observe("p0", stuck, 0.0) is False
    idle.forget()
    assert idle.observe("p0", stuck, 2.5) is False
    assert idle.observe("p0", stuck, 5.0) is True
    with pytest.raises(ValueError):
        IdlePartitionWatch(checks=0)
