"""The write fence's ownership check against Faust's own assignment object (no Kafka)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from faust.assignor.client_assignment import ClientAssignment

from stream_app.kafka.fencing import WriteFence


def fence_with(actives: dict[str, list[int]] | None) -> WriteFence:
    assignor: Any = SimpleNamespace()
    if actives is not None:
        assignor._assignment = ClientAssignment(actives=actives, standbys={"c": [5]})
    return WriteFence(cast(Any, SimpleNamespace(assignor=assignor)))


def test_owns_exactly_the_active_partitions_of_the_changelog() -> None:
    fence = fence_with({"c": [0, 3], "records": [1]})
    assert fence.owns("c", 0) and fence.owns("c", 3)
    assert not fence.owns("c", 1)  # another topic's partition
    assert not fence.owns("c", 5)  # a standby replica is not owned
    assert not fence.owns("other", 0)


def test_owns_nothing_before_the_first_assignment() -> None:
    assert not fence_with({}).owns("c", 0)
    assert not fence_with(None).owns("c", 0)  # no assignment object at all
