"""Sliding 60-second windows for requests, input tokens and output tokens per minute, and
optionally the requests' share of the minute over a shorter window.

Times are passed in explicitly (unix seconds) so the logic is pure and easy to test.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

from simulator.config import SimulatorConfig

WINDOW_SECONDS = 60.0


@dataclass
class Window:
    """Amounts accepted in the trailing `seconds` (a minute unless told), oldest first."""

    events: deque[tuple[float, int]] = field(default_factory=deque)
    seconds: float = WINDOW_SECONDS

    def used(self, now: float) -> int:
        while self.events and self.events[0][0] <= now - self.seconds:
            self.events.popleft()
        return sum(amount for _, amount in self.events)

    def add(self, now: float, amount: int) -> None:
        self.events.append((now, amount))

    def seconds_until_fits(self, now: float, amount: int, limit: int) -> float:
        """How long until ``amount`` more fits under ``limit``: 0 if it fits now."""
        excess = self.used(now) + amount - limit
        if excess <= 0:
            return 0.0
        for at, freed in self.events:
            excess -= freed
            if excess <= 0:
                return at + self.seconds - now
        return math.inf  # larger than the whole budget: it never fits

    def replenished_at(self, now: float) -> float:
        """When everything now in the window has expired (the API's "reset" meaning)."""
        self.used(now)
        return self.events[-1][0] + self.seconds if self.events else now


@dataclass(frozen=True)
class Limit:
    """One configured limit and its window, e.g. ("requests", 50, <window>)."""

    name: str
    limit: int
    window: Window


class RateLimiter:
    def __init__(self) -> None:
        self._requests = Window()
        self._short: Window | None = None
        self._input = Window()
        self._output = Window()

    def _limits(self, config: SimulatorConfig) -> list[Limit]:
        configured = (
            ("requests", config.requests_per_minute, self._requests),
            ("input-tokens", config.input_tokens_per_minute, self._input),
            ("output-tokens", config.output_tokens_per_minute, self._output),
        )
        return [
            Limit(name, limit, window) for name, limit, window in configured if limit is not None
        ]

    def retry_after(self, now: float, input_tokens: int, config: SimulatorConfig) -> int | None:
        """Whole seconds to wait if the request must be rejected now, else None.

        Output tokens are unknown before generation, so like the real API the request is
        only refused once the output budget is already spent; the overrun is charged later.
        """
        needs = {"requests": 1, "input-tokens": input_tokens, "output-tokens": 1}
        waits = [
            limit.window.seconds_until_fits(now, needs[limit.name], limit.limit)
            for limit in self._limits(config)
        ]
        short = self._short_window(config)
        if short is not None and config.requests_per_minute is not None:
            share = math.ceil(config.requests_per_minute * short.seconds / WINDOW_SECONDS)
            waits.append(short.seconds_until_fits(now, 1, share))
        worst = max((w for w in waits if w > 0), default=None)
        if worst is None:
            return None
        # A request larger than the whole per-minute budget never fits; say "a full
        # window" rather than infinity so clients still get a usable integer.
        return max(1, math.ceil(min(worst, WINDOW_SECONDS)))

    def _short_window(self, config: SimulatorConfig) -> Window | None:
        seconds = config.requests_short_window_seconds
        if seconds is None:
            self._short = None
        elif self._short is None or self._short.seconds != seconds:
            self._short = Window(seconds=seconds)
        return self._short

    def admit(self, now: float, input_tokens: int) -> None:
        self._requests.add(now, 1)
        if self._short is not None:
            self._short.add(now, 1)
        self._input.add(now, input_tokens)

    def charge_output(self, now: float, output_tokens: int) -> None:
        self._output.add(now, output_tokens)

    def headers(self, now: float, config: SimulatorConfig) -> dict[str, str]:
        """anthropic-ratelimit-* headers for every configured limit, plus the combined tokens-*."""
        headers: dict[str, str] = {}
        token_limits: list[tuple[int, Limit]] = []
        for limit in self._limits(config):
            remaining = max(0, limit.limit - limit.window.used(now))
            headers.update(_limit_headers(limit.name, limit, remaining, now))
            if limit.name != "requests":
                token_limits.append((remaining, limit))
        if token_limits:
            # The real API reports the most restrictive token limit under "tokens".
            remaining, tightest = min(token_limits, key=lambda pair: pair[0])
            headers.update(_limit_headers("tokens", tightest, remaining, now))
        return headers


def _limit_headers(name: str, limit: Limit, remaining: int, now: float) -> dict[str, str]:
    # Rounded up: the header has whole seconds and must never promise capacity too early.
    reset = datetime.fromtimestamp(math.ceil(limit.window.replenished_at(now)), UTC)
    return {
        f"anthropic-ratelimit-{name}-limit": str(limit.limit),
        f"anthropic-ratelimit-{name}-remaining": str(remaining),
        f"anthropic-ratelimit-{name}-reset": reset.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
