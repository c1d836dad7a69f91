"""Assign again when the group's assignment left topics out because the broker's metadata did
not list them yet.

Right after an Apache Kafka broker restarts, its metadata can answer without the topics it
is still loading. A group leader that assigns partitions then (every worker rejoins after
the restart) gets no partition for those topics (Faust's assignor logs `Ignoring missing
topic` and leaves them out), and nothing assigns them later: aiokafka rebalances when the
leader's metadata changes, but it refreshes metadata only every
`consumer_metadata_max_age_ms` (5 minutes) when nothing fails, and a worker without
partitions fetches nothing that could fail. Seen in the chaos soak (bench/soak.py): both
workers held 0 of 8 partitions after a broker restart, every job stopped, and /ready
answered 503 on both.

With this fix the leader asks for fresh metadata every REFRESH_SECONDS after such an
assignment until the broker lists every topic (at most REFRESH_ATTEMPTS times); the
changed metadata makes aiokafka's coordinator rebalance (`_handle_metadata_update`), and
the new assignment covers every partition.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust

from stream_app.core.logs import get_logger

log = get_logger(__name__)

REFRESH_SECONDS = 1.0
REFRESH_ATTEMPTS = 120


def reassign_when_topics_were_missing(app: faust.App) -> None:
    """Wrap the app's partition assignor (before the app starts)."""
    assignor: Any = app.assignor
    assign = assignor.assign
    refreshing: list[asyncio.Task[None]] = []

    def checked(cluster: Any, member_metadata: Any) -> Any:
        assignment = assign(cluster, member_metadata)
        wanted: set[str] = set()
        for metadata in member_metadata.values():
            wanted.update(metadata.subscription)
        missing = sorted(t for t in wanted if not cluster.partitions_for_topic(t))
        if missing and not any(not task.done() for task in refreshing):
            log.warning(
                "the group's assignment left out topics the broker did not list yet; "
                "refreshing metadata to assign them",
                topics=",".join(missing),
            )
            # The assignor runs in the consumer's own thread and event loop.
            task = asyncio.get_running_loop().create_task(_refresh_until_listed(app, missing))
            refreshing[:] = [task]
        return assignment

    assignor.assign = checked


async def _refresh_until_listed(app: faust.App, topics: list[str]) -> None:
    client: Any = app.consumer._thread._consumer._client  # type: ignore[attr-defined]
    for _ in range(REFRESH_ATTEMPTS):
        await asyncio.sleep(REFRESH_SECONDS)
        try:
            await client.force_metadata_update()
        except Exception as exc:  # the broker is still away: try again
            log.debug("metadata refresh failed", error=type(exc).__name__)
            continue
        if all(client.cluster.partitions_for_topic(t) for t in topics):
            log.info("the broker lists every topic again: the group assigns them")
            return
