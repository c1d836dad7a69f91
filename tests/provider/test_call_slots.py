"""CallSlots: calls in flight follow the budget and the measured latency, in arrival order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from stream_app.provider.call_slots import CallSlots
from tests.fake_clock import FakeClock


@pytest.fixture
async def clock() -> AsyncIterator[FakeClock]:
    fake = FakeClock()
    yield fake
    fake.close()


def test_the_ceiling_holds_until_latency_is_measured() -> None:
    slots = CallSlots(150, rate=lambda: 50.0)
    for _ in range(9):
        slots.observe(2.0)
    assert (slots.latency_p90, slots.limit) == (None, 150)
    slots.observe(2.0)
    # 50/s x 2 s x 1.2 + 2
    assert (slots.latency_p90, slots.limit) == (2.0, 122)


def test_the_limit_follows_the_p90_latency_and_the_rate() -> None:
    rate = [50.0]
    slots = CallSlots(256, rate=lambda: rate[0])
    for n in range(100):
        slots.observe(1.0 + 2.0 * n / 99)  # 1-3 s, evenly
    assert slots.latency_p90 == pytest.approx(2.8, abs=0.03)
    assert slots.limit == 170  # ceil(50 x 2.8 x 1.2) + 2
    rate[0] = 25.0  # a second worker took half the partitions
    assert slots.limit == 86
    rate[0] = 50 / 60  # the default tier: 50 requests a minute
    assert slots.limit == 5
    rate[0] = 100.0
    assert slots.limit == 256  # the ceiling


def test_rejects_a_ceiling_below_one() -> None:
    with pytest.raises(ValueError):
        CallSlots(0, rate=lambda: 1.0)


async def test_holders_never_exceed_the_limit_and_are_served_in_order(clock: FakeClock) -> None:
    slots = CallSlots(3, rate=lambda: 1.0)
    order: list[int] = []
    peak = [0]

    async def call(n: int) -> None:
        async with slots.hold():
            order.append(n)
            peak[0] = max(peak[0], slots.in_use)
            await clock.sleep(1.0 + (n % 3) / 10)

    await asyncio.gather(*(call(n) for n in range(12)))
    assert order == list(range(12))
    assert peak[0] == 3
    assert slots.in_use == 0


async def test_a_lower_limit_lets_fewer_in_and_a_higher_one_wakes_waiters(
    clock: FakeClock,
) -> None:
    rate = [1.0]
    slots = CallSlots(10, rate=lambda: rate[0])
    for _ in range(10):
        slots.observe(1.0)
    assert slots.limit == 4  # ceil(1 x 1 x 1.2) + 2
    held = asyncio.Event()
    entered: list[int] = []

    async def call(n: int) -> None:
        async with slots.hold():
            entered.append(n)
            await held.wait()

    tasks = [asyncio.create_task(call(n)) for n in range(8)]
    await clock.sleep(1.0)
    assert entered == [0, 1, 2, 3]
    rate[0] = 3.0  # ceil(3 x 1 x 1.2) + 2 = 6: the next measured call lets two more in
    slots.observe(1.0)
    for _ in range(9):
        slots.observe(1.0)
    await clock.sleep(1.0)
    assert entered == [0, 1, 2, 3, 4, 5]
    held.set()
    await asyncio.gather(*tasks)
    assert slots.in_use == 0


async def test_a_cancelled_waiter_gives_up_nothing(clock: FakeClock) -> None:
    slots = CallSlots(1, rate=lambda: 1.0)
    release = asyncio.Event()

    async def holder() -> None:
        async with slots.hold():
            await release.wait()

    first = asyncio.create_task(holder())
    await clock.sleep(0.1)
    waiting = asyncio.create_task(holder())
    await clock.sleep(0.1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
    await first
    assert slots.in_use == 0
    async with slots.hold():  # the slot is free again, no stale waiter in front
        assert slots.in_use == 1
