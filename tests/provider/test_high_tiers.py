"""The budget and the call slots together at high tiers, on virtual time: calls take 1-3 s,
each request reaches the provider 0-30 ms after its grant, and the provider (the
simulator's own rate limiter) enforces its limit per 60 s and its share over any 5 s."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from simulator.config import SimulatorConfig
from simulator.ratelimit import RateLimiter
from stream_app.provider.budget import RateBudget
from stream_app.provider.call_slots import CallSlots
from tests.fake_clock import FakeClock

PARTITIONS = 8
MEASURED = 40.0  # seconds after the warm-up


@pytest.fixture
async def clock() -> AsyncIterator[FakeClock]:
    fake = FakeClock()
    yield fake
    fake.close()


@dataclass
class Provider:
    """The simulator's limiter on virtual time, plus an occasional stray 429."""

    clock: FakeClock
    config: SimulatorConfig
    rng: random.Random
    stray_429s: float = 0.0
    limiter: RateLimiter = field(default_factory=RateLimiter)
    served: list[float] = field(default_factory=list)
    refused: int = 0

    def arrive(self) -> int | None:
        """None when served, else the retry-after of the 429."""
        now = self.clock.now
        wait = self.limiter.retry_after(now, 100, self.config)
        if wait is None and self.rng.random() < self.stray_429s:
            wait = 1
        if wait is not None:
            self.refused += 1
            return wait
        self.limiter.admit(now, 100)
        self.served.append(now)
        return None


# Seconds from a grant (at `now`) to the request's arrival as the provider stamps it.
Delay = Callable[[float, random.Random], float]


def send_jitter(now: float, rng: random.Random) -> float:
    """The send itself: 0-30 ms."""
    return rng.uniform(0.0, 0.03)


def provider_stalls(seconds: float, every: float) -> Delay:
    """Send jitter, and a provider (or the path to it) that stalls for `seconds` every
    `every` seconds: what arrives meanwhile is stamped when the stall ends, a burst of late
    arrivals (what a simulator on a loaded machine does)."""

    def delay(now: float, rng: random.Random) -> float:
        sent = send_jitter(now, rng)
        into = (now + sent) % every
        return sent + (seconds - into if into < seconds else 0.0)

    return delay


async def worker(
    clock: FakeClock,
    provider: Provider,
    budget: RateBudget,
    ceiling: int,
    rng: random.Random,
    delay: Delay = send_jitter,
) -> CallSlots:
    slots = CallSlots(ceiling, rate=lambda: budget.requests_per_minute * budget.share / 60)
    limit = str(provider.config.requests_per_minute)

    async def slot() -> None:
        while True:
            async with slots.hold():
                await budget.acquire()
                await clock.sleep(delay(clock.now, rng))  # the send, to its arrival
                refused = provider.arrive()
                if refused is not None:
                    budget.throttled(float(refused), int(limit))
                    continue
                latency = rng.uniform(1.0, 3.0)
                await clock.sleep(latency)
                slots.observe(latency)

    # The worker's call-slot tasks: as many as the ceiling (the look-ahead's slots).
    tasks = [asyncio.create_task(slot()) for _ in range(ceiling)]
    try:
        await clock.sleep(10.0 + MEASURED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return slots


async def run_tier(
    clock: FakeClock, rpm: int, workers: int, stray_429s: float = 0.0, delay: Delay = send_jitter
) -> tuple[float, Provider, list[CallSlots]]:
    rng = random.Random(rpm + workers)
    config = SimulatorConfig(requests_per_minute=rpm, requests_short_window_seconds=5)
    provider = Provider(clock, config, rng, stray_429s)
    budgets = []
    for n in range(workers):
        budget = RateBudget(rpm, partitions=PARTITIONS, clock=clock, sleep=clock.sleep)
        budget.assign(p for p in range(PARTITIONS) if p % workers == n)
        budgets.append(budget)
    start = clock.now
    slots = await asyncio.gather(*(worker(clock, provider, b, 256, rng, delay) for b in budgets))
    measured = [t for t in provider.served if start + 10.0 <= t < start + 10.0 + MEASURED]
    return len(measured) / (rpm * MEASURED / 60), provider, list(slots)


@pytest.mark.parametrize("rpm,workers", [(3000, 1), (6000, 2)])
async def test_the_whole_budget_is_used_with_real_latency(
    clock: FakeClock, rpm: int, workers: int
) -> None:
    utilization, provider, slots = await run_tier(clock, rpm, workers)
    assert provider.refused == 0
    assert utilization >= 0.95
    # Calls in flight sized by themselves: r x p90 x 1.2 + 2 per worker, under the ceiling.
    for worker_slots in slots:
        assert worker_slots.latency_p90 == pytest.approx(2.8, abs=0.1)
        assert 150 <= worker_slots.limit <= 180


async def test_a_stray_429_now_and_then_costs_little(clock: FakeClock) -> None:
    utilization, provider, _ = await run_tier(clock, 3000, 1, stray_429s=0.002)
    assert provider.refused >= 3  # it did throttle
    assert utilization >= 0.9


async def test_bursts_of_late_arrivals_within_the_spread_meet_no_429(clock: FakeClock) -> None:
    """What a busy machine does: the provider's side stalls for 100 ms now and then, so the
    requests sent meanwhile arrive together, and the requests 5 s after them are on time.
    The pacing leaves room for delays that differ by up to 150 ms: no 429."""
    utilization, provider, _ = await run_tier(clock, 3000, 1, delay=provider_stalls(0.1, 7.3))
    assert provider.refused == 0
    assert utilization >= 0.95


async def test_bursts_of_late_arrivals_meet_early_429s_that_cost_little(clock: FakeClock) -> None:
    """Stalls longer than the pacing's room (300 ms): a few 429s at the 5 s window's edge,
    which the worker cannot see coming. A 429 whose limit header equals the limit in force
    costs a short pause (a third within 100 slots slows the pace for a while), so most of
    the budget is still used."""
    utilization, provider, _ = await run_tier(clock, 3000, 1, delay=provider_stalls(0.3, 7.3))
    assert provider.refused > 0  # the bursts do meet the provider's 5 s share
    assert utilization >= 0.9
