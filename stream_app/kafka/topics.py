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
from collections.abc import Mapping

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from stream_app.core.logs import get_logger

log = get_logger(__name__)


# A table's changelog keeps the latest value of every key for as long as the table lives:
# compacted, as Faust declares it (faust/tables/base.py). Faust skips topics that exist, and
# ensure_topics creates them first, so the policy must be set here; with the broker's default
# (`delete` after `log.retention.hours`, 7 days) a worker that rebuilds its tables from the
# changelogs would lose every job older than that.
CHANGELOG_CONFIG: Mapping[str, str] = {"cleanup.policy": "compact"}


def leader_topic(app_id: str) -> str:
    """The one-partition topic Faust's leader assignor uses (faust/assignor/leader_assignor.py)."""
    return f"{app_id}-__assignor-__leader"


async def ensure_topics(
    bootstrap_servers: str,
    wanted: dict[str, int],
    *,
    configs: Mapping[str, Mapping[str, str]] | None = None,
    group_id: str | None = None,
    settle_seconds: float = 30.0,
) -> set[str]:
    """Create the missing topics of `wanted` (name -> partitions); returns those created.

    `configs` (name -> topic configs, e.g. CHANGELOG_CONFIG) are set on the topics created;
    an existing topic whose `cleanup.policy` differs from the one asked is logged (with the
    command that fixes it), not altered: its other settings are the operator's.
    Raises RuntimeError when an existing topic has another partition count. Then waits,
    up to `settle_seconds`, until every partition of the topics created has a leader and
    `group_id`'s coordinator is known; past that it goes on (clients retry by themselves).
    """
    configs = configs or {}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(n, p, 1, topic_configs=dict(configs.get(n, {})))
            for n, p in wanted.items()
            if n not in existing
        ]
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
            await _check_cleanup_policy(admin, {n: configs[n] for n in present if n in configs})
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


async def topic_configs(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    """name -> {config name: value} of each topic, as the broker reports them."""
    if not names:
        return {}
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
    found: dict[str, dict[str, str]] = {}
    for response in await admin.describe_configs(resources):
        # (error_code, error_message, resource_type, resource_name, config_entries), each
        # entry starting with (name, value) in every version of the response.
        for resource in response.resources:
            found[resource[3]] = {entry[0]: entry[1] for entry in resource[4]}
    return found


async def _check_cleanup_policy(
    admin: AIOKafkaAdminClient, wanted: Mapping[str, Mapping[str, str]]
) -> None:
    asked = {name: c["cleanup.policy"] for name, c in wanted.items() if "cleanup.policy" in c}
    try:
        found = await topic_configs(admin, list(asked))
    except KafkaError as exc:  # only a warning is at stake; the start goes on
        log.warning("could not read topic configs", error=type(exc).__name__)
        return
    for name, policy in asked.items():
        actual = found.get(name, {}).get("cleanup.policy")
        if actual is not None and policy not in actual.split(","):
            log.warning(
                "topic has the wrong cleanup.policy: entries older than its retention will be "
                "lost; fix it with kafka-configs.sh --alter --entity-type topics "
                f"--entity-name {name} --add-config cleanup.policy={policy}",
                topic=name,
                cleanup_policy=actual,
            )
