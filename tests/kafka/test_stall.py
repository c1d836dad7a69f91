"""A worker that holds records and does nothing with them gives up (stream_app/kafka/stall.py)."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import GroupCoordinatorNotAvailableError
from aiokafka.structs import OffsetAndMetadata

from stream_app.kafka.stall import Backlog, StallWatch


async def _until_coordinator(admin: AIOKafkaAdminClient, group: str) -> None:
    for _ in range(100):
        try:
            await admin.find_coordinator(group)
            return
        except GroupCoordinatorNotAvailableError:
            await asyncio.sleep(0.2)
    raise TimeoutError("no group coordinator after 20 s")


def _idle(watch: StallWatch, now: float, **overrides: object) -> str | None:
    seen: dict[str, object] = {"backlog": 5, "in_flight": 0, "outcomes": 7, "excuse": None}
    seen.update(overrides)
    return watch.observe(now, **seen)  # type: ignore[arg-type]


def test_backlog_with_nothing_happening_for_the_whole_period_is_a_stall() -> None:
    watch = StallWatch(after_seconds=10)
    assert _idle(watch, 0.0) is None  # first sight of the counter: progress
    assert _idle(watch, 1.0) is None  # idle from here
    assert _idle(watch, 10.9) is None
    reason = _idle(watch, 11.0)
    assert reason is not None and "5 records" in reason and "BATCH_STALL_EXIT_SECONDS" in reason


def test_any_sign_of_life_or_a_legitimate_wait_restarts_the_period() -> None:
    for interruption in (
        {"outcomes": 8},  # an outcome was sent
        {"in_flight": 1},  # a record waits for the budget or the provider
        {"backlog": 0},  # nothing to do is not a stall
        {"excuse": "provider unavailable"},
        {"excuse": "stopping"},
    ):
        after = {**interruption} if "outcomes" in interruption else {}
        watch = StallWatch(after_seconds=10)
        _idle(watch, 0.0)
        _idle(watch, 1.0)
        assert _idle(watch, 6.0, **interruption) is None, interruption
        assert _idle(watch, 7.0, **after) is None, interruption  # idle again from here
        assert _idle(watch, 16.9, **after) is None, interruption
        assert _idle(watch, 17.0, **after) is not None, interruption


async def test_backlog_counts_records_the_group_has_not_committed(broker: str) -> None:
    topic, group = f"stall-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    producer = AIOKafkaProducer(bootstrap_servers=broker)
    await producer.start()
    backlog = Backlog(broker, admin, group)
    try:
        await admin.create_topics([NewTopic(topic, 2, 1)])
        # The group's coordinator exists once the offsets topic does (a fresh broker
        # creates it on the first FindCoordinator request).
        await _until_coordinator(admin, group)
        for i in range(7):
            await producer.send_and_wait(topic, f"r{i}".encode(), partition=i % 2)
        tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]  # 4 and 3 records
        assert await backlog.count(tps) == 7  # nothing committed yet
        assert await backlog.count(tps[1:]) == 3

        consumer = AIOKafkaConsumer(bootstrap_servers=broker, group_id=group)
        await consumer.start()
        consumer.assign(tps)
        try:
            await consumer.commit(
                {tps[0]: OffsetAndMetadata(3, ""), tps[1]: OffsetAndMetadata(1, "")}
            )
        finally:
            await consumer.stop()
        assert await backlog.count(tps) == (4 - 3) + (3 - 1)
        assert await backlog.count([]) == 0
    finally:
        await backlog.close()
        await producer.stop()
        await admin.close()
