"""RateBudget on a fake clock: the pacing rules hold exactly, with no real sleeping."""

from __future__ import annotations

import asyncio
import bisect
import math

import pytest

from stream_app.ratelimit import RateBudget


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def max_in_window(times: list[float], window: float) -> int:
    """Most grants in any closed window of `window` seconds."""
    return max(bisect.bisect_right(times, t + window) - i for i, t in enumerate(times))


async def grant_times(rpm: int, count: int, clock: FakeClock) -> list[float]:
    budget = RateBudget(rpm, clock=clock, sleep=clock.sleep)
    times = []
    for _ in range(count):
        await budget.acquire()
        times.append(clock.now)
    return times


@pytest.mark.parametrize("rpm", [1, 7, 50, 120, 600, 1000])
async def test_windows_never_exceed_limits(rpm: int) -> None:
    clock = FakeClock()
    times = await grant_times(rpm, rpm * 3 + 5, clock)
    assert max_in_window(times, 60.0) <= rpm
    assert max_in_window(times, 5.0) <= math.ceil(rpm * 5 / 60) + 1


@pytest.mark.parametrize("rpm", [50, 600])
async def test_binding_budget_is_used_almost_fully(rpm: int) -> None:
    clock = FakeClock()
    times = await grant_times(rpm, rpm * 5, clock)
    span_minutes = (times[-1] - times[0]) / 60
    rate = (len(times) - 1) / span_minutes
    assert rate >= 0.99 * rpm


async def test_first_grant_is_immediate_and_pace_is_even() -> None:
    clock = FakeClock()
    times = await grant_times(60, 10, clock)
    assert times[0] == 1000.0
    gaps = {round(b - a, 6) for a, b in zip(times, times[1:], strict=False)}
    assert gaps == {1.0}


async def test_concurrent_callers_share_one_budget() -> None:
    clock = FakeClock()
    budget = RateBudget(120, clock=clock, sleep=clock.sleep)
    times: list[float] = []

    async def caller() -> None:
        for _ in range(10):
            await budget.acquire()
            times.append(clock.now)

    await asyncio.gather(*(caller() for _ in range(5)))
    times.sort()
    assert len(times) == 50
    assert max_in_window(times, 5.0) <= 10 + 1
    assert max_in_window(times, 60.0) <= 120


async def test_throttle_pauses_everyone_then_recovers() -> None:
    clock = FakeClock()
    budget = RateBudget(60, clock=clock, sleep=clock.sleep)
    await budget.acquire()
    budget.throttled(retry_after=7.0)
    await budget.acquire()
    assert clock.now == pytest.approx(1007.0)
    assert budget.throttled_count == 1
    # Slowed: the next gap is twice the configured 1 s, then the pace recovers fully.
    assert budget.pace_factor() == pytest.approx(0.5)
    before = clock.now
    await budget.acquire()
    assert clock.now - before == pytest.approx(2.0, rel=0.05)
    clock.now += 60
    assert budget.pace_factor() == 1.0


def test_rejects_nonsense_limits() -> None:
    with pytest.raises(ValueError):
        RateBudget(0)
