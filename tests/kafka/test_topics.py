"""The topics the service creates: the tables' changelogs are compacted (kept for as long as
the tables live), the data topics follow the broker's retention."""

from __future__ import annotations

import logging

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from stream_app.kafka.pipeline import JOB_TABLE, PROCESSED_TABLE, RESULT_TABLE
from stream_app.kafka.topics import CHANGELOG_CONFIG, ensure_topics, topic_configs
from tests.conftest import StartService
from tests.support import Namespace


async def test_changelogs_are_compacted_and_data_topics_are_not(
    start: StartService, broker: str, namespace: Namespace
) -> None:
    start()  # waits until ready: every topic exists
    changelogs = [
        f"{namespace.app_id}-{table}-changelog"
        for table in (JOB_TABLE, RESULT_TABLE, PROCESSED_TABLE)
    ]
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    try:
        found = await topic_configs(admin, [*changelogs, *namespace.topics.values()])
    finally:
        await admin.close()
    for changelog in changelogs:
        # Without compaction a table rebuilt from its changelog (a new worker, an empty
        # data volume) would miss every job older than the broker's retention.
        assert found[changelog]["cleanup.policy"] == "compact", changelog
    for topic in namespace.topics.values():
        assert found[topic]["cleanup.policy"] == "delete", topic


async def test_an_existing_changelog_without_compaction_is_reported_not_altered(
    broker: str, namespace: Namespace, caplog: pytest.LogCaptureFixture
) -> None:
    # As an earlier version left it: created with the broker's default policy.
    changelog = f"{namespace.app_id}-{JOB_TABLE}-changelog"
    await ensure_topics(broker, {changelog: 2})
    with caplog.at_level(logging.WARNING, logger="stream_app.kafka.topics"):
        await ensure_topics(broker, {changelog: 2}, configs={changelog: CHANGELOG_CONFIG})
    (warning,) = [r for r in caplog.records if "wrong cleanup.policy" in r.getMessage()]
    assert f"--entity-name {changelog} --add-config cleanup.policy=compact" in warning.getMessage()
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    try:
        found = await topic_configs(admin, [changelog])
    finally:
        await admin.close()
    assert found[changelog]["cleanup.policy"] == "delete"  # the operator's to change
