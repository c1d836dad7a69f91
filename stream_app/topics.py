"""The service's topics on the broker: declared before any agent starts, and usable.

Tansu auto-creates unknown topics with its own partition count, and a table's changelog
must match its source topic, so everything is declared up front with explicit counts. A
topic just created has no partition leader for a moment, and a fresh cluster has no group
coordinator until its `__consumer_offsets` topic exists: waiting for both here keeps the
first start from filling the log with aiokafka's NotLeaderForPartition and
GroupCoordinatorNotAvailable errors (it retries them anyway).
"""

from __future__ import annotations

import asyncio
import time

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from stream_app.logs import get_logger

log = get_logger(__name__)


def leader_topic(app_id: str) -> str:
    """The one-partition topic Faust's leader assignor uses (faust/assignor/leader_assignor.py)."""
    return f"{app_id}-__assignor-__leader"


async def ensure_topics(
    bootstrap_servers: str,
    wanted: dict[str, int],
    *,
    group_id: str | None = None,
    settle_seconds: float = 30.0,
) -> set[str]:
    """Create the missing topics of `wanted` (name -> partitions); returns those created.

    Raises RuntimeError when an existing topic has another partition count. Then waits,
    up to `settle_seconds`, until every partition of the topics created has a leader and
    `group_id`'s coordinator is known; past that it goes on (clients retry by themselves).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(n, p, 1) for n, p in wanted.items() if n not in existing]
        if missing:
            await admin.create_topics(missing)
            log.info("created topics", topics=",".join(t.name for t in missing))
        present = [name for name in wanted if name in existing]
        if present:
            described = await admin.describe_topics(present)
            for topic in described:
                count = len(topic.get("partitions", []))
                if count and count != wanted[topic["topic"]]:
                    raise RuntimeError(
                        f"topic {topic['topic']!r} has {count} partitions, the service is "
                        f"configured for {wanted[topic['topic']]} (KAFKA_PARTITIONS)"
                    )
        deadline = time.monotonic() + settle_seconds
        await _until_led(admin, {t.name: t.num_partitions for t in missing}, deadline)
        if group_id is not None:
            await _until_coordinator(admin, group_id, deadline)
    finally:
        await admin.close()
    return {topic.name for topic in missing}


async def _until_led(admin: AIOKafkaAdminClient, topics: dict[str, int], deadline: float) -> None:
    waiting = dict(topics)
    while waiting and time.monotonic() < deadline:
        for topic in await admin.describe_topics(list(waiting)):
            partitions = topic.get("partitions", [])
            led = [p for p in partitions if p.get("leader", -1) >= 0]
            if topic.get("error_code", 0) == 0 and len(led) == waiting.get(topic["topic"]):
                waiting.pop(topic["topic"], None)
        if waiting:
            await asyncio.sleep(0.1)
    if waiting:
        log.warning("topics still without partition leaders", topics=",".join(waiting))


async def _until_coordinator(admin: AIOKafkaAdminClient, group_id: str, deadline: float) -> None:
    while True:
        try:
            await admin.find_coordinator(group_id)
            return
        except KafkaError:
            if time.monotonic() >= deadline:
                log.warning("no group coordinator yet", group=group_id)
                return
            await asyncio.sleep(0.1)
