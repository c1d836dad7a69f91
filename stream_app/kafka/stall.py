"""A worker that holds records and does nothing with them gives up, so it is restarted.

Seen once in seven `kill -9` restarts on Apache Kafka: the restarted worker held its
partitions, `/ready` said ok, and 195 records sat unprocessed and uncommitted for minutes
(a restart finished the job exactly once). Whatever the cause inside the consumer, the
symptom is observable from outside the stream: records wait on this worker's partitions
(committed offset below the end offset), none is being worked on, and no outcome has been
sent for a long time, while nothing legitimate (closed intake, provider unavailable,
rebalance) explains the wait. Exiting is better than a silent hang (the standing rule); a
restarted worker resumes from the committed offsets and pays nothing twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient


class StallWatch:
    """Decides from periodic observations whether the worker is stalled (pure logic)."""

    def __init__(self, after_seconds: float) -> None:
        self.after_seconds = after_seconds
        self._since: float | None = None
        self._outcomes = -1

    def observe(
        self,
        now: float,
        *,
        backlog: int,
        in_flight: int,
        outcomes: int,
        excuse: str | None,
    ) -> str | None:
        """One observation; returns why the worker is stalled, or None.

        `now`: monotonic seconds. `backlog`: records on this worker's partitions not yet
        committed. `in_flight`: records between admission and outcome (waiting for the
        budget or with the provider). `outcomes`: outcomes sent so far, a counter.
        `excuse`: a legitimate reason to wait (intake closed, provider unavailable,
        rebalance), or None. Stalled means: backlog, nothing in flight, no new outcome
        and no excuse, for `after_seconds` in a row.
        """
        progressed = outcomes != self._outcomes
        self._outcomes = outcomes
        if backlog <= 0 or in_flight > 0 or excuse is not None or progressed:
            self._since = None
            return None
        if self._since is None:
            self._since = now
            return None
        idle = now - self._since
        if idle < self.after_seconds:
            return None
        return (
            f"{backlog} records wait on this worker's partitions and none got an outcome or "
            f"was started for {idle:.0f} s (BATCH_STALL_EXIT_SECONDS)"
        )


class Backlog:
    """Records of a consumer group not yet committed on given partitions, read from the
    broker (committed offsets of the group against the partitions' end offsets)."""

    def __init__(self, bootstrap_servers: str, admin: AIOKafkaAdminClient, group_id: str) -> None:
        self._bootstrap = bootstrap_servers
        self._admin = admin
        self._group = group_id
        self._consumer: AIOKafkaConsumer | None = None

    async def count(self, partitions: Iterable[TopicPartition]) -> int:
        """Sum over `partitions` of end offset minus committed offset (none committed: 0)."""
        tps = list(partitions)
        if not tps:
            return 0
        if self._consumer is None:
            consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, enable_auto_commit=False)
            await consumer.start()
            self._consumer = consumer
        ends: Mapping[TopicPartition, int] = await self._consumer.end_offsets(tps)
        committed = await self._admin.list_consumer_group_offsets(self._group, partitions=tps)
        total = 0
        for tp in tps:
            position = committed.get(tp)
            offset = position.offset if position is not None and position.offset >= 0 else 0
            total += max(0, ends.get(tp, 0) - offset)
        return total

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
