"""How many calls one worker keeps going at once: enough for its share of the budget at the
latency it measures, never more than `BATCH_MAX_CONCURRENT_LLM_CALLS`.

To send its share of the budget, r requests/second, a worker needs about r x latency calls
in flight (Little's law). The latency is the provider's: it is measured here, as the 90th
percentile of the last `_SAMPLES` calls, so slow calls do not starve the pace. The limit is

    min(ceiling, ceil(r x p90 x `_HEADROOM`) + `_SPARE`)

with r = the limit in force x this worker's share of the partitions / 60. Until enough calls
were measured the ceiling holds. A slot covers the wait for a budget grant and the call:
records beyond the limit wait here, in arrival order, not in the provider's queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

# Calls measured for the percentile, and how many before it is trusted.
_SAMPLES = 200
_MIN_SAMPLES = 10
# The percentile is recomputed every this many calls (sorting costs CPU per record).
_RECOMPUTE_EVERY = 10
# Slots beyond r x p90: calls a little slower than p90, and records waiting for their grant.
_HEADROOM = 1.2
_SPARE = 2


class CallSlots:
    """A first-come, first-served limit on calls in flight that follows the budget and the
    measured latency. `rate`: requests/second this worker may send (read at every decision,
    so a new limit or partition share applies at once); `ceiling`: the most slots ever."""

    def __init__(self, ceiling: int, rate: Callable[[], float]) -> None:
        if ceiling < 1:
            raise ValueError("ceiling must be >= 1")
        self._ceiling = ceiling
        self._rate = rate
        self._latencies: deque[float] = deque(maxlen=_SAMPLES)
        self._since_recompute = 0
        self._p90: float | None = None
        self._in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def in_use(self) -> int:
        """Slots held now (calls in flight and records waiting for their grant)."""
        return self._in_use

    @property
    def latency_p90(self) -> float | None:
        """Seconds; None until `_MIN_SAMPLES` calls were measured."""
        return self._p90

    @property
    def limit(self) -> int:
        """Slots allowed now."""
        if self._p90 is None:
            return self._ceiling
        needed = math.ceil(self._rate() * self._p90 * _HEADROOM) + _SPARE
        return max(1, min(self._ceiling, needed))

    def observe(self, seconds: float) -> None:
        """One call took this long (send to answer, whatever the answer)."""
        self._latencies.append(seconds)
        self._since_recompute += 1
        if len(self._latencies) < _MIN_SAMPLES:
            return
        if self._p90 is None or self._since_recompute >= _RECOMPUTE_EVERY:
            ordered = sorted(self._latencies)
            self._p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
            self._since_recompute = 0
            self._wake()

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Wait for a slot (first come, first served) and hold it for the block."""
        await self._acquire()
        try:
            yield
        finally:
            self._in_use -= 1
            self._wake()

    async def _acquire(self) -> None:
        if not self._waiters and self._in_use < self.limit:
            self._in_use += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # Granted just as it was cancelled: give the slot on.
                self._in_use -= 1
                self._wake()
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def _wake(self) -> None:
        limit = self.limit
        while self._waiters and self._in_use < limit:
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            self._in_use += 1
            waiter.set_result(None)
