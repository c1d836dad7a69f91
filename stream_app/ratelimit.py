"""The provider request budget: every attempt to call Claude takes a slot here first."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# Grants are logged over slightly longer windows than the provider's, so that network
# jitter between our grant and the provider's arrival time cannot tip a window over.
_WINDOW_MARGIN = 0.25
# After a 429 the pace drops and climbs back to the configured rate over this long.
_RECOVERY_SECONDS = 30.0
_MIN_PACE_FACTOR = 0.25


class RateBudget:
    """Smooth pacing under a requests-per-minute limit.

    Two rules hold for the grants of one budget:
    - never more than `requests_per_minute` in any 60 s window;
    - consecutive grants are at least 60 / rpm seconds apart, so traffic is even. Any 5 s
      window then holds at most floor(rpm / 12) + 1 <= ceil(rpm * 5 / 60) + 1 grants, the
      bound for providers that enforce a per-minute limit over shorter intervals.
    A 429 pauses every caller until its `retry-after` has passed and slows the pace,
    which then recovers linearly toward the configured rate.
    """

    def __init__(
        self,
        requests_per_minute: int,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if requests_per_minute < 1:
            raise ValueError("requests_per_minute must be >= 1")
        self._rpm = requests_per_minute
        self._clock = clock
        self._sleep = sleep
        self._grants: deque[float] = deque()
        self._lock = asyncio.Lock()
        self._paused_until = 0.0
        self._last_throttle: float | None = None
        self._throttle_factor = 1.0
        self.throttled_count = 0

    @property
    def requests_per_minute(self) -> int:
        return self._rpm

    def pace_factor(self, now: float | None = None) -> float:
        """1.0 at full speed; lower for a while after the provider throttled us."""
        if self._last_throttle is None:
            return 1.0
        now = self._clock() if now is None else now
        recovered = max(0.0, now - self._last_throttle) / _RECOVERY_SECONDS
        return min(1.0, self._throttle_factor + (1.0 - self._throttle_factor) * recovered)

    def _next_slot(self, now: float) -> float:
        """The earliest time at which a grant keeps every rule."""
        minute = 60.0 + _WINDOW_MARGIN
        while self._grants and self._grants[0] <= now - minute:
            self._grants.popleft()
        earliest = max(now, self._paused_until)
        if self._grants:
            interval = 60.0 / self._rpm / self.pace_factor(now)
            earliest = max(earliest, self._grants[-1] + interval)
        if len(self._grants) >= self._rpm:
            earliest = max(earliest, self._grants[-self._rpm] + minute)
        return earliest

    async def acquire(self) -> None:
        """Wait for a slot. Callers are served first come, first served."""
        async with self._lock:
            while True:
                now = self._clock()
                slot = self._next_slot(now)
                if slot <= now:
                    self._grants.append(now)
                    return
                await self._sleep(slot - now)

    def throttled(self, retry_after: float | None) -> None:
        """The provider answered 429: hold everyone back and slow the pace."""
        now = self._clock()
        self.throttled_count += 1
        wait = retry_after if retry_after is not None and retry_after > 0 else 60.0 / self._rpm
        self._paused_until = max(self._paused_until, now + wait)
        self._throttle_factor = max(_MIN_PACE_FACTOR, self.pace_factor(now) / 2)
        # Recovery starts when the pause lifts.
        self._last_throttle = self._paused_until
