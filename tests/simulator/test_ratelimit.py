"""The simulator's rate limiter on explicit times: the minute, and its share over 5 s."""

from __future__ import annotations

from simulator.config import SimulatorConfig
from simulator.ratelimit import RateLimiter


def send(limiter: RateLimiter, config: SimulatorConfig, at: float) -> int | None:
    """The retry-after of a refused request, or None (then it is admitted)."""
    wait = limiter.retry_after(at, 10, config)
    if wait is None:
        limiter.admit(at, 10)
    return wait


def test_the_short_window_holds_its_share_of_the_minute() -> None:
    config = SimulatorConfig(requests_per_minute=3000, requests_short_window_seconds=5)
    limiter = RateLimiter()
    # 250 (= 3000 * 5 / 60) requests in the first second: all admitted.
    assert [send(limiter, config, 1000.0 + i / 250) for i in range(250)] == [None] * 250
    assert send(limiter, config, 1001.0) == 4  # the 251st inside 5 s: refused till 1005
    assert send(limiter, config, 1004.999) == 1
    # (1000, 1005] holds the other 249 only: one more fits.
    assert send(limiter, config, 1005.0) is None
    assert limiter.headers(1005.0, config)["anthropic-ratelimit-requests-limit"] == "3000"


def test_without_a_short_window_only_the_minute_counts() -> None:
    config = SimulatorConfig(requests_per_minute=3000)
    limiter = RateLimiter()
    assert all(send(limiter, config, 1000.0 + i / 1000) is None for i in range(3000))
    assert send(limiter, config, 1003.0) is not None


def test_a_fractional_share_rounds_up() -> None:
    """50 requests a minute over 5 s: 4.17, so 5 fit."""
    config = SimulatorConfig(requests_per_minute=50, requests_short_window_seconds=5)
    limiter = RateLimiter()
    assert [send(limiter, config, 1000.0 + i / 2) for i in range(6)] == [None] * 5 + [3]
