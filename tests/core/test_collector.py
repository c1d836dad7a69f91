"""The worker's garbage-collector tuning (stream_app.core.collector)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from stream_app.core.collector import THRESHOLDS, freeze_startup_objects, tune_garbage_collector


@pytest.fixture
def restored_collector() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_the_thresholds_make_young_collections_rarer_than_the_default(
    restored_collector: None,
) -> None:
    tune_garbage_collector()
    assert gc.get_threshold() == THRESHOLDS
    assert THRESHOLDS[0] > 700  # CPython's default young threshold


def test_objects_alive_at_start_up_are_frozen_and_cycles_made_later_still_collected(
    restored_collector: None,
) -> None:
    tune_garbage_collector()
    frozen = freeze_startup_objects()
    assert frozen == gc.get_freeze_count() > 0

    class Node:
        def __init__(self) -> None:
            self.other: Node | None = None

    first, second = Node(), Node()
    first.other, second.other = second, first
    alive = len([o for o in gc.get_objects() if isinstance(o, Node)])
    del first, second
    assert alive == 2
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, Node)]
