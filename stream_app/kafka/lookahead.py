"""A worker's bounded look-ahead into `batch.records`, served to call slots by a scheduler.

One reader takes records off the Faust stream in offset order and puts them in the
look-ahead until it holds `max_records` records (or `max_bytes` of record values); call
slots (BATCH_MAX_CONCURRENT_LLM_CALLS of them) take the record the scheduler picks. A
record is acknowledged only once its outcome is sent, so records are acknowledged out of
order; Faust commits a partition only up to its lowest unacknowledged offset (with the
guard in `stream_app.kafka.faust_fixes`), so everything in the look-ahead is still uncommitted
in Kafka and a crash delivers it again. Kafka stays the source of truth; the look-ahead is
a window onto it, never the only copy of a record.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

from stream_app.jobs.scheduler import Scheduler, Ticket

T = TypeVar("T")


class LookAhead(Generic[T]):
    """Records read ahead and waiting for a call slot; bounded in count and bytes."""

    def __init__(self, scheduler: Scheduler[T], *, max_records: int, max_bytes: int) -> None:
        if max_records < 1 or max_bytes < 1:
            raise ValueError("the look-ahead must hold at least one record")
        self._scheduler = scheduler
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._sizes: dict[int, int] = {}  # id(item) -> bytes
        self._bytes = 0
        self._busy = 0  # records taken by `serve`'s slots and not handled yet
        self._changed = asyncio.Condition()

    def __len__(self) -> int:
        return len(self._scheduler)

    @property
    def bytes(self) -> int:
        return self._bytes

    def _full(self) -> bool:
        count = len(self._scheduler)
        # One record always fits, however large: a record larger than max_bytes still runs.
        return count >= self._max_records or (count > 0 and self._bytes >= self._max_bytes)

    async def put(self, item: T, ticket: Ticket, size: int) -> None:
        """Wait for room, then hold `item` (`size` bytes) until a slot takes it."""
        async with self._changed:
            await self._changed.wait_for(lambda: not self._full())
            self._scheduler.put(item, ticket)
            self._sizes[id(item)] = size
            self._bytes += size
            self._changed.notify_all()

    async def take(self) -> T:
        """Wait for a record and return the one the scheduler picks."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self._scheduler) > 0)
            item = self._scheduler.pop()
            assert item is not None
            self._bytes -= self._sizes.pop(id(item), 0)
            self._changed.notify_all()
            return item

    def drop(self, unwanted: Callable[[T], bool]) -> int:
        """Forget the waiting records for which `unwanted` is true; returns how many.
        They are unacknowledged, so Kafka delivers them again to the partition's owner."""
        removed = self._scheduler.remove(unwanted)
        for item in removed:
            self._bytes -= self._sizes.pop(id(item), 0)
        if removed:
            asyncio.get_running_loop().create_task(self._notify())
        return len(removed)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def serve(
        self,
        source: AsyncIterator[T],
        classify: Callable[[T], tuple[Ticket, int]],
        handle: Callable[[T], Awaitable[None]],
        slots: int,
    ) -> None:
        """Read `source` into the look-ahead and run `handle` on `slots` records at a time,
        in the scheduler's order, until cancelled (or `source` ends and all is handled).
        `classify` gives a record's ticket and size; `handle` must not raise."""

        async def read() -> None:
            async for item in source:
                ticket, size = classify(item)
                await self.put(item, ticket, size)

        async def slot() -> None:
            while True:
                item = await self.take()
                self._busy += 1
                try:
                    await handle(item)
                finally:
                    self._busy -= 1
                    await self._notify()

        async with asyncio.TaskGroup() as group:
            reader = group.create_task(read(), name="lookahead-reader")
            workers = [group.create_task(slot(), name=f"call-slot-{n}") for n in range(slots)]
            await reader
            # The source ended (tests): let the slots empty the look-ahead, then stop them.
            async with self._changed:
                await self._changed.wait_for(lambda: not len(self._scheduler) and not self._busy)
            for worker in workers:
                worker.cancel()
