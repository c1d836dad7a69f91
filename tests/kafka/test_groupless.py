"""stream_app.kafka.groupless: the read-again loop of the group-less readers (without a
broker: the loop itself; the readers on Apache Kafka are in tests/test_broker_failures.py)."""

from __future__ import annotations

import asyncio

import pytest

from stream_app.kafka import groupless
from stream_app.kafka.groupless import FoldReader, every_partition


async def test_a_read_that_fails_is_forgotten_and_run_again_until_stopped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(groupless, "_RETRY_SECONDS", 0.0)
    runs: list[str] = []
    forgotten: list[int] = []
    reading = asyncio.Event()

    async def read() -> None:
        runs.append("read")
        if len(runs) < 3:
            raise ConnectionError("the broker went away")
        reading.set()
        await asyncio.Event().wait()  # reads until cancelled

    reader = FoldReader("test reader", read, lambda: forgotten.append(len(runs)))
    reader.start()
    await asyncio.wait_for(reading.wait(), 5)
    await reader.stop()
    # Two failed reads, each forgotten before the next; the third ran until the stop.
    assert runs == ["read", "read", "read"] and forgotten == [1, 2]


def test_every_partition_of_each_topic() -> None:
    assert [(tp.topic, tp.partition) for tp in every_partition(["a", "b"], 2)] == [
        ("a", 0),
        ("a", 1),
        ("b", 0),
        ("b", 1),
    ]
