"""Virtual time for unit tests of timing logic: nothing really waits."""

from __future__ import annotations

import asyncio
import heapq
import itertools


class FakeClock:
    """Virtual time: once every task is blocked the clock jumps to the next wake-up."""

    def __init__(self) -> None:
        self.now = 1_000_000.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._driver = asyncio.create_task(self._drive())

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), next(self._seq), future))
        await future

    def close(self) -> None:
        self._driver.cancel()

    async def _drive(self) -> None:
        while True:
            for _ in range(50):
                await asyncio.sleep(0)
            if self._sleepers:
                wake, _, future = heapq.heappop(self._sleepers)
                if not future.done():  # a cancelled sleeper just leaves
                    self.now = max(self.now, wake)
                    future.set_result(None)
