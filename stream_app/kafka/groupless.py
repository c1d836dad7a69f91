"""Consumers outside the consumer group: the `batch.jobs` / `batch.results` reader, the
`batch.spend` reader and reading records back by offset all use one.

A consumer without a group (`group_id=None`) is assigned partitions by its owner, takes
part in no rebalance (it keeps reading while the group rebalances) and commits nothing.
The two readers read every partition of their topics from the beginning at start, and
start over after a broker error: what they build is a fold of the whole topic, so reading
it again is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_app.core.logs import get_logger
from stream_app.kafka.fetching import FETCH_MAX_WAIT_SECONDS, FETCH_MIN_BYTES

log = get_logger(__name__)

_RETRY_SECONDS = 1.0


@asynccontextmanager
async def groupless_consumer(
    bootstrap_servers: str, *, batched: bool = False
) -> AsyncIterator[AIOKafkaConsumer]:
    """A started consumer without a group (no commits, `earliest` where no offset is
    given), stopped on exit. `batched`: for a reader that follows its topics for good,
    each fetch is held for FETCH_MIN_BYTES or FETCH_MAX_WAIT_SECONDS (stream_app.kafka.fetching);
    otherwise a fetch is answered as soon as anything is there (reading a known range)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **(
            {
                "fetch_min_bytes": FETCH_MIN_BYTES,
                "fetch_max_wait_ms": int(FETCH_MAX_WAIT_SECONDS * 1000),
            }
            if batched
            else {}
        ),
    )
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


def every_partition(topics: Iterable[str], partitions: int) -> list[TopicPartition]:
    """Partitions 0 to `partitions` - 1 of each topic (the service declared them so)."""
    return [TopicPartition(topic, p) for topic in topics for p in range(partitions)]


async def assign_from_start(consumer: AIOKafkaConsumer, assigned: list[TopicPartition]) -> None:
    """Assign `assigned` to `consumer` and read each from its first offset."""
    consumer.assign(assigned)
    await consumer.seek_to_beginning(*assigned)


class FoldReader:
    """A task that runs `read` (which reads its topics from the beginning until it is
    cancelled) and runs it again `_RETRY_SECONDS` after any error, forever; `on_restart`
    forgets what the last read built first. `name` names it in the logs."""

    def __init__(
        self,
        name: str,
        read: Callable[[], Awaitable[None]],
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        self._name = name
        self._read = read
        self._on_restart = on_restart
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self._read()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker's errors: the reader starts over
                log.warning(f"{self._name} restarts", reason=f"{type(exc).__name__}: {exc}")
                if self._on_restart is not None:
                    self._on_restart()
                await asyncio.sleep(_RETRY_SECONDS)
