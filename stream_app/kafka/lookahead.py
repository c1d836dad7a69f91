"""A worker's bounded look-ahead into its record topics, served to call slots by a scheduler.

Records come in *lanes*, one per record topic (`batch.records`, and `batch.records.bulk`
for big jobs: stream_app.kafka.record_topics). One reader per lane takes records off its Faust
stream in offset order and puts them in the look-ahead until that lane holds its share of
`max_records` records (or of `max_bytes` of record values); call slots
(BATCH_MAX_CONCURRENT_LLM_CALLS of them) take the record the scheduler picks, whichever
lane it came from. A lane that is full waits for one of its own records to leave: the
other lanes keep reading, so a small job's records are read at once however deep the big
jobs' backlog is in the other lane.

A record is acknowledged only once its outcome is sent, so records are acknowledged out of
order; Faust commits a partition only up to its lowest unacknowledged offset (with the
guard in `stream_app.kafka.faust_fixes`), so everything in the look-ahead is still
uncommitted in Kafka and a crash delivers it again. Kafka stays the source of truth; the
look-ahead is a window onto it, never the only copy of a record.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from stream_app.jobs.scheduler import Scheduler, Ticket

T = TypeVar("T")

# The lane of `put` and `serve` when the look-ahead has one lane only.
DEFAULT_LANE = ""


@dataclass
class _Lane:
    max_records: int
    max_bytes: int
    count: int = 0
    bytes: int = 0

    def full(self) -> bool:
        # One record always fits, however large: a record larger than max_bytes still runs.
        return self.count >= self.max_records or (self.count > 0 and self.bytes >= self.max_bytes)


class LookAhead(Generic[T]):
    """Records read ahead and waiting for a call slot; bounded in count and bytes.

    `lanes` names the lanes (the record topics); each holds at most an equal share of
    `max_records` and of `max_bytes` (at least one record each), so the whole look-ahead
    never holds more than `max_records` records (one more per lane when the bound is
    smaller than the number of lanes) and `max_bytes` plus one record per lane.
    Raises ValueError for a bound below one or no lane.
    """

    def __init__(
        self,
        scheduler: Scheduler[T],
        *,
        max_records: int,
        max_bytes: int,
        lanes: Sequence[str] = (DEFAULT_LANE,),
    ) -> None:
        if max_records < 1 or max_bytes < 1:
            raise ValueError("the look-ahead must hold at least one record")
        if not lanes:
            raise ValueError("the look-ahead needs at least one lane")
        self._scheduler = scheduler
        share = len(lanes)
        self._lanes = {
            name: _Lane(max(1, max_records // share), max(1, max_bytes // share)) for name in lanes
        }
        self._held: dict[int, tuple[_Lane, int]] = {}  # id(item) -> (its lane, bytes)
        self._busy = 0  # records taken by the slots and not handled yet
        self._changed = asyncio.Condition()

    def __len__(self) -> int:
        return len(self._scheduler)

    @property
    def bytes(self) -> int:
        """Bytes of record values held, all lanes together."""
        return sum(lane.bytes for lane in self._lanes.values())

    def held(self, lane: str) -> int:
        """Records of `lane` waiting for a slot. Raises KeyError for an unknown lane."""
        return self._lanes[lane].count

    async def put(self, item: T, ticket: Ticket, size: int, lane: str = DEFAULT_LANE) -> None:
        """Wait for room in `lane`, then hold `item` (`size` bytes) until a slot takes it.
        Raises KeyError for an unknown lane."""
        held = self._lanes[lane]
        async with self._changed:
            await self._changed.wait_for(lambda: not held.full())
            self._scheduler.put(item, ticket)
            self._held[id(item)] = (held, size)
            held.count += 1
            held.bytes += size
            self._changed.notify_all()

    async def take(self) -> T:
        """Wait for a record and return the one the scheduler picks."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self._scheduler) > 0)
            item = self._scheduler.pop()
            assert item is not None
            self._release(item)
            self._changed.notify_all()
            return item

    def _release(self, item: T) -> None:
        held = self._held.pop(id(item), None)
        if held is None:
            return
        lane, size = held
        lane.count -= 1
        lane.bytes -= size

    def drop(self, unwanted: Callable[[T], bool]) -> int:
        """Forget the waiting records for which `unwanted` is true; returns how many.
        They are unacknowledged, so Kafka delivers them again to the partition's owner."""
        removed = self._scheduler.remove(unwanted)
        for item in removed:
            self._release(item)
        if removed:
            asyncio.get_running_loop().create_task(self._notify())
        return len(removed)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def feed(
        self,
        source: AsyncIterator[T],
        classify: Callable[[T], tuple[Ticket, int]],
        lane: str = DEFAULT_LANE,
    ) -> None:
        """Read `source` into `lane` until it ends (or the task is cancelled).
        `classify` gives a record's ticket and size in bytes."""
        async for item in source:
            ticket, size = classify(item)
            await self.put(item, ticket, size, lane)

    async def run_slots(self, handle: Callable[[T], Awaitable[None]], slots: int) -> None:
        """Run `handle` on `slots` records at a time, in the scheduler's order, whatever
        their lane, until cancelled. `handle` must not raise."""

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
            for n in range(slots):
                group.create_task(slot(), name=f"call-slot-{n}")

    async def serve(
        self,
        source: AsyncIterator[T],
        classify: Callable[[T], tuple[Ticket, int]],
        handle: Callable[[T], Awaitable[None]],
        slots: int,
        lane: str = DEFAULT_LANE,
    ) -> None:
        """Read `source` into `lane` and run the call slots (`run_slots`) until cancelled;
        or, when `source` ends (tests), until everything held is handled. The other lanes
        are fed by `feed`, each from its own task."""
        async with asyncio.TaskGroup() as group:
            reader = group.create_task(self.feed(source, classify, lane), name="lookahead-reader")
            slots_task = group.create_task(self.run_slots(handle, slots), name="call-slots")
            await reader
            # The source ended (tests): let the slots empty the look-ahead, then stop them.
            async with self._changed:
                await self._changed.wait_for(lambda: not len(self._scheduler) and not self._busy)
            slots_task.cancel()
