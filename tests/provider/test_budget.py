"""RateBudget on a fake clock: the cluster-wide rules hold exactly, with no real sleeping."""

from __future__ import annotations

import asyncio
import bisect
import math
import random
from collections.abc import AsyncIterator

import pytest

from stream_app.provider.budget import RateBudget
from tests.fake_clock import FakeClock


@pytest.fixture
async def clock() -> AsyncIterator[FakeClock]:
    fake = FakeClock()
    yield fake
    fake.close()


def max_in_window(times: list[float], window: float) -> int:
    """Most grants in any closed window of `window` seconds."""
    times = sorted(times)
    return max(bisect.bisect_right(times, t + window) - i for i, t in enumerate(times))


def budget(clock: FakeClock, rpm: int, **kwargs: object) -> RateBudget:
    return RateBudget(rpm, clock=clock, sleep=clock.sleep, **kwargs)  # type: ignore[arg-type]


async def take(b: RateBudget, clock: FakeClock, count: int, out: list[float]) -> None:
    for _ in range(count):
        await b.acquire()
        out.append(clock.now)


def assert_within_rules(times: list[float], rpm: int) -> None:
    assert max_in_window(times, 60.0) <= rpm
    assert max_in_window(times, 5.0) <= math.ceil(rpm * 5 / 60) + 1


@pytest.mark.parametrize("rpm", [1, 7, 50, 120, 600, 1000])
async def test_one_worker_never_exceeds_the_windows(clock: FakeClock, rpm: int) -> None:
    times: list[float] = []
    await take(budget(clock, rpm), clock, rpm * 3 + 5, times)
    assert_within_rules(times, rpm)


@pytest.mark.parametrize("rpm", [50, 600])
async def test_binding_budget_is_used_almost_fully(clock: FakeClock, rpm: int) -> None:
    times: list[float] = []
    await take(budget(clock, rpm), clock, rpm * 5, times)
    rate = (len(times) - 1) / ((times[-1] - times[0]) / 60)
    # Slots are 3 % wider than 60 / rpm (room for arrivals whose delays differ by 150 ms).
    assert rate >= 0.97 * rpm


async def test_pace_is_even(clock: FakeClock) -> None:
    b = budget(clock, 60)
    times: list[float] = []
    await take(b, clock, 11, times)
    # The first grant may take a slot that began up to _SLOT_TOLERANCE ago: gaps from it on.
    gaps = {round(y - x, 9) for x, y in zip(times[1:], times[2:], strict=False)}
    assert gaps == {round(b.slot_seconds, 9)}


@pytest.mark.parametrize("partitions,split", [(8, 4), (8, 3), (6, 1), (12, 5)])
async def test_two_workers_share_one_budget(clock: FakeClock, partitions: int, split: int) -> None:
    """Disjoint partition sets: together they stay inside the limit and use all of it."""
    rpm = 120
    a = budget(clock, rpm, partitions=partitions)
    b = budget(clock, rpm, partitions=partitions)
    a.assign(range(split))
    b.assign(range(split, partitions))
    times_a: list[float] = []
    times_b: list[float] = []
    per_worker = rpm * 3
    await asyncio.gather(
        take(a, clock, per_worker * split // partitions, times_a),
        take(b, clock, per_worker * (partitions - split) // partitions, times_b),
    )
    merged = sorted(times_a + times_b)
    assert_within_rules(merged, rpm)
    assert len(set(merged)) == len(merged)  # no two workers ever share a slot
    rate = (len(merged) - 1) / ((merged[-1] - merged[0]) / 60)
    assert rate >= 0.97 * rpm


async def test_rebalance_moves_the_share_without_breaking_the_windows(clock: FakeClock) -> None:
    rpm = 60
    a = budget(clock, rpm, partitions=4)
    b = budget(clock, rpm, partitions=4)
    b.assign(())
    times: list[float] = []

    async def worker_b() -> None:
        await take(b, clock, 40, times)

    task = asyncio.create_task(worker_b())
    await take(a, clock, 50, times)  # B owns nothing yet: it waits
    assert len(times) == 50
    a.assign([0, 1])  # a second worker joined: the partitions split
    b.assign([2, 3])
    await take(a, clock, 40, times)
    await task
    assert len(times) == 130
    assert_within_rules(times, rpm)


async def test_concurrent_callers_of_one_worker_are_served_in_turn(clock: FakeClock) -> None:
    b = budget(clock, 120)
    times: list[float] = []
    await asyncio.gather(*(take(b, clock, 10, times) for _ in range(5)))
    assert len(times) == 50
    assert_within_rules(times, 120)


async def test_throttle_pauses_everyone_then_recovers(clock: FakeClock) -> None:
    b = budget(clock, 60)
    await b.acquire()
    start = clock.now
    b.throttled(retry_after=7.0)
    await b.acquire()
    assert 7.0 <= clock.now - start <= 7.0 + b.slot_seconds
    assert b.throttled_count == 1
    # Slowed: half the pace right after the pause, then fully recovered.
    assert b.pace_factor() == pytest.approx(0.5, abs=0.01)
    before = clock.now
    await b.acquire()
    assert clock.now - before == pytest.approx(2 * b.slot_seconds, rel=0.01)
    clock.now += 60
    assert b.pace_factor() == 1.0


async def test_the_providers_lower_limit_wins(clock: FakeClock) -> None:
    b = budget(clock, 600)
    b.observe_headers({"anthropic-ratelimit-requests-limit": "120"})
    assert b.requests_per_minute == 120
    b.observe_headers({"anthropic-ratelimit-requests-limit": "6000"})
    assert b.requests_per_minute == 600
    b.observe_headers({"anthropic-ratelimit-requests-limit": "120"})
    times: list[float] = []
    await take(b, clock, 300, times)
    assert_within_rules(times, 120)


async def test_no_partitions_means_no_grants_until_assigned(clock: FakeClock) -> None:
    b = budget(clock, 60, partitions=2)
    b.assign(())
    waiter = asyncio.create_task(b.acquire())
    # Let virtual time run over many slots of both partitions: still no grant.
    await clock.sleep(20 * b.slot_seconds)
    assert not waiter.done()
    b.assign([1])
    grant = await asyncio.wait_for(waiter, 1)
    slot = round(grant.at / b.slot_seconds)
    assert slot % 2 == 1


async def test_input_tokens_per_minute_is_enforced_by_share(clock: FakeClock) -> None:
    b = budget(clock, 6000, partitions=2, input_tokens_per_minute=1000)
    b.assign([0, 1])
    b.assign([0])  # half the partitions: 500 tokens a minute (the share shrinks at once)
    times: list[float] = []
    for _ in range(6):
        grant = await b.acquire(input_tokens=200)
        b.settle(grant, chars=800, input_tokens=200, output_tokens=10)
        times.append(clock.now)
    # 200 + 200 fit in 500; the third waits until the first leaves the 60 s window.
    assert times[1] - times[0] < 1
    assert times[2] - times[0] >= 60
    spent = [(t, 200) for t in times]
    for t, _ in spent:
        assert sum(n for u, n in spent if t <= u <= t + 60) <= 500


async def test_settle_corrects_estimates_with_billed_usage(clock: FakeClock) -> None:
    b = budget(clock, 6000, output_tokens_per_minute=100)
    grant = await b.acquire(output_tokens=90)
    b.settle(grant, chars=100, input_tokens=30, output_tokens=10)  # far less than feared
    start = clock.now
    await b.acquire(output_tokens=80)
    assert clock.now - start < 1  # 10 + 80 fits: the estimate was replaced
    assert b.estimate_output_tokens(max_tokens=1024) < 1024 // 4
    assert b.estimate_input_tokens(400) == math.ceil(400 * (0.8 * 0.25 + 0.2 * 0.3))


def test_rejects_nonsense_limits() -> None:
    with pytest.raises(ValueError):
        RateBudget(0)
    with pytest.raises(ValueError):
        RateBudget(10, partitions=0)


async def test_a_new_limit_from_the_provider_takes_effect_at_once(clock: FakeClock) -> None:
    b = budget(clock, 600)
    times: list[float] = []
    await take(b, clock, 20, times)
    b.observe_headers({"anthropic-ratelimit-requests-limit": "60"})
    before = clock.now
    await take(b, clock, 10, times)
    # Ten grants at one a second, not a stall from slot numbers of the old size.
    assert 9 <= clock.now - before <= 11


async def test_a_429_naming_a_token_limit_holds_tokens_until_its_reset(clock: FakeClock) -> None:
    b = budget(clock, 6000)
    await b.acquire(input_tokens=10)
    start = clock.now
    b.throttled(retry_after=1.0)  # the request pause is short...
    b.hold_tokens(start + 9.0)  # ...but the input-token limit resets in 9 s
    await b.acquire(input_tokens=10)
    assert clock.now - start == pytest.approx(9.0, abs=0.01)
    b.hold_tokens(start)  # an earlier reset never shortens a hold
    before = clock.now
    await b.acquire(input_tokens=10)
    assert clock.now - before < 1


async def test_a_429_from_an_early_arrival_costs_a_moment_not_the_pace(clock: FakeClock) -> None:
    """The provider's limit header equals ours: a request only reached a window's edge early."""
    b = budget(clock, 3000)
    await b.acquire()
    start = clock.now
    assert b.throttled(retry_after=1.0, requests_limit=3000) is True
    await b.acquire()
    assert 0.2 <= clock.now - start <= 0.25 + b.slot_seconds  # not the full second
    assert b.pace_factor() == 1.0
    assert (b.throttled_count, b.early_count, b.requests_per_minute) == (1, 1, 3000)
    times: list[float] = []
    await take(b, clock, 100, times)
    gaps = {round(y - x, 9) for x, y in zip(times, times[1:], strict=False)}
    assert gaps == {round(b.slot_seconds, 9)}  # the full pace right away


async def test_a_429_naming_a_lower_limit_brings_the_pace_down(clock: FakeClock) -> None:
    b = budget(clock, 3000)
    await b.acquire()
    start = clock.now
    assert b.throttled(retry_after=2.0, requests_limit=1000) is False
    assert b.requests_per_minute == 1000
    await b.acquire()
    assert clock.now - start >= 2.0
    assert b.pace_factor() == pytest.approx(0.5, abs=0.01)


async def test_a_429_without_a_limit_header_halves_the_pace(clock: FakeClock) -> None:
    b = budget(clock, 3000)
    await b.acquire()
    assert b.throttled(retry_after=1.0) is False
    await b.acquire()
    assert b.pace_factor() == pytest.approx(0.5, abs=0.01)


async def test_repeated_early_429s_are_a_real_limit(clock: FakeClock) -> None:
    """Limit headers equal to ours, but 429 after 429: someone else spends the budget too."""
    b = budget(clock, 3000)
    verdicts = []
    for _ in range(3):
        await b.acquire()
        verdicts.append(b.throttled(retry_after=1.0, requests_limit=3000))
    assert verdicts == [True, True, False]
    await b.acquire()
    assert b.pace_factor() == pytest.approx(0.5, abs=0.01)
    # Long apart, early 429s stay early.
    clock.now += 120
    await b.acquire()
    assert b.throttled(retry_after=1.0, requests_limit=3000) is True


@pytest.mark.parametrize("rpm", [50, 1000, 3000, 6000])
async def test_arrivals_late_by_up_to_the_spread_stay_inside_the_provider_windows(
    clock: FakeClock, rpm: int
) -> None:
    """Each grant reaches the provider 0-50 ms later (at random): still no more than rpm in
    any 60 s and rpm / 12 in any 5 s of arrivals (half-open windows, as a provider counts)."""
    rng = random.Random(7)
    b = budget(clock, rpm)
    grants: list[float] = []
    await take(b, clock, rpm * 2, grants)
    arrivals = sorted(t + rng.uniform(0.0, 0.05) for t in grants)
    assert max_in_half_open_window(arrivals, 60.0) <= rpm
    assert max_in_half_open_window(arrivals, 5.0) <= math.ceil(rpm * 5 / 60)


def max_in_half_open_window(times: list[float], window: float) -> int:
    """Most arrivals in any window (t - window, t]."""
    return max(i + 1 - bisect.bisect_right(times, t - window) for i, t in enumerate(times))


async def test_a_grant_at_once_is_the_one_acquire_gives_and_never_jumps_a_wait(
    clock: FakeClock,
) -> None:
    # Two budgets, one asked with grant_at_once first (acquire when it says no), the other
    # with acquire alone: the same grants at the same times, and a refusal takes nothing.
    fast, plain = budget(clock, 600), budget(clock, 600)
    fast_times: list[float] = []
    plain_times: list[float] = []
    refused = 0
    for _ in range(30):
        grant = fast.grant_at_once()
        if grant is None:
            refused += 1
            grant = await fast.acquire()
        fast_times.append(grant.at)
        plain_times.append((await plain.acquire()).at)
    assert fast_times == plain_times
    assert refused > 0  # 600 rpm paces: most asks must wait for their slot
    # A pause after a 429 is a wait too; and a caller waiting holds everyone after it.
    fast.throttled(1.0)
    assert fast.grant_at_once() is None
    waiting = asyncio.ensure_future(fast.acquire())
    await asyncio.sleep(0)
    assert fast.grant_at_once() is None
    await waiting
