"""The provider circuit breaker on a fake clock: who waits, who probes, when it closes."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from stream_app.provider.breaker import ProviderBreaker, StopKind
from tests.provider.test_budget import FakeClock


class NoJitter(random.Random):
    """Backoff at its upper bound, so probe times are exact."""

    def random(self) -> float:
        return 1.0


@pytest.fixture
async def clock() -> AsyncIterator[FakeClock]:
    fake = FakeClock()
    yield fake
    fake.close()


def breaker(clock: FakeClock, **kwargs: object) -> ProviderBreaker:
    options: dict[str, object] = {
        "threshold": 3,
        "probe_base_seconds": 1.0,
        "probe_max_seconds": 8.0,
        "rng": NoJitter(),
        **kwargs,
    }
    return ProviderBreaker(clock=clock, sleep=clock.sleep, **options)  # type: ignore[arg-type]


async def fail(b: ProviderBreaker, key: str, retry_after: float | None = None) -> bool:
    admission = await b.admit(key)
    return b.provider_failed(admission, "HTTP 529 overloaded_error: Overloaded", retry_after)


async def open_it(b: ProviderBreaker) -> None:
    for key in ("a", "b", "c"):
        await fail(b, key)
    assert b.is_open


async def test_one_records_failures_use_its_retries_and_never_open_it(clock: FakeClock) -> None:
    b = breaker(clock)
    assert [await fail(b, "a") for _ in range(5)] == [True] * 5
    assert not b.is_open and b.is_isolated("a") and not b.is_isolated("b")
    b.answered(await b.admit("b"))
    assert b.is_isolated("a") and b.report() == {"state": "available", "refused_calls_total": 5}


async def test_failures_of_several_records_open_it_and_use_no_retries(clock: FakeClock) -> None:
    b = breaker(clock)
    assert await fail(b, "a") is True  # alone so far: maybe its own
    assert await fail(b, "b") is False  # two records: the provider's
    assert not b.is_open
    assert await fail(b, "a") is False
    assert b.is_open and not b.is_isolated("a")
    report = b.report()
    assert report["state"] == "unavailable"
    assert report["message"] == "HTTP 529 overloaded_error: Overloaded"
    assert report["refused_calls"] == 3 == report["refused_calls_total"]
    assert report["failed_probes"] == 0
    assert report["since"].startswith("1970-01-12T13:46:40")  # the fake clock's "now"


async def test_an_answer_in_between_resets_the_count(clock: FakeClock) -> None:
    b = breaker(clock)
    await fail(b, "a")
    await fail(b, "b")
    b.answered(await b.admit("c"))
    await fail(b, "d")
    await fail(b, "e")
    assert not b.is_open


async def test_while_open_calls_wait_and_single_probes_go_out_with_backoff(
    clock: FakeClock,
) -> None:
    b = breaker(clock)
    await open_it(b)
    opened = clock.now
    admitted: list[tuple[str, float, bool]] = []

    async def caller(key: str) -> None:
        while True:
            admission = await b.admit(key)
            admitted.append((key, clock.now - opened, admission.probe))
            if clock.now - opened < 20:
                b.provider_failed(admission, "HTTP 529 overloaded_error: Overloaded")
            else:
                b.answered(admission)
                return

    await asyncio.gather(*(caller(key) for key in ("a", "b", "c")))
    # Probes 1, 2, 4, 8, 8 s apart (capped at 8), each a different record in turn; the
    # first success releases everyone at once.
    assert admitted[:5] == [
        ("a", 1.0, True),
        ("b", 3.0, True),
        ("c", 7.0, True),
        ("a", 15.0, True),
        ("b", 23.0, True),
    ]
    assert sorted(admitted[5:]) == [("a", 23.0, False), ("c", 23.0, False)]
    assert not b.is_open and b.report() == {"state": "available", "refused_calls_total": 7}


async def test_a_probe_honours_the_providers_retry_after(clock: FakeClock) -> None:
    b = breaker(clock)
    await open_it(b)
    start = clock.now
    probe = await b.admit("a")
    assert probe.probe and clock.now - start == 1.0
    b.provider_failed(probe, "HTTP 529 overloaded_error: Overloaded", retry_after=30.0)
    again = await b.admit("a")
    assert again.probe and clock.now - start == 31.0
    b.answered(again)


async def test_a_429_to_a_probe_waits_for_the_next_one(clock: FakeClock) -> None:
    b = breaker(clock)
    await open_it(b)
    start = clock.now
    probe = await b.admit("a")
    b.rate_limited(probe, retry_after=5.0)
    assert b.is_open
    assert (await b.admit("a")).probe and clock.now - start == 1.0 + 5.0


async def test_jitter_keeps_probes_between_half_and_full_backoff(clock: FakeClock) -> None:
    b = breaker(clock, rng=random.Random(7), probe_max_seconds=100.0)
    await open_it(b)
    last = clock.now
    for n in range(6):
        probe = await b.admit("a")
        gap = clock.now - last
        assert 0.5 * 2**n <= gap <= 2**n
        last = clock.now
        b.provider_failed(probe, "HTTP 503 api_error: down")


async def test_a_configuration_fault_stops_the_line_at_once_until_a_probe_succeeds(
    clock: FakeClock,
) -> None:
    b = breaker(clock)
    message = "HTTP 401 authentication_error: invalid x-api-key"
    first = await b.admit("a")
    in_flight = await b.admit("b")
    assert b.configuration_fault(first, message, could_be_the_records=False) is False
    assert b.is_open and b.stop is not None and b.stop.kind is StopKind.CONFIGURATION
    # A call that was already out when the line stopped gets the same answer.
    assert b.configuration_fault(in_flight, message, could_be_the_records=False) is False
    report = b.report()
    assert report["state"] == "configuration_error" and report["message"] == message
    assert report["refused_calls"] == 2
    probe = await b.admit("a")
    assert probe.probe
    waiting = asyncio.create_task(b.admit("c"))
    await asyncio.sleep(0)
    assert not waiting.done()  # one probe at a time
    assert b.configuration_fault(probe, message, could_be_the_records=False) is False
    assert b.report()["failed_probes"] == 1 and b.is_open
    probe = await waiting  # the next probe is the next record in line
    assert probe.probe
    b.answered(probe)  # the key was rotated meanwhile
    assert not b.is_open
    assert not (await b.admit("a")).probe


async def test_a_400_taken_for_configuration_is_the_records_own_once_others_succeed(
    clock: FakeClock,
) -> None:
    b = breaker(clock)
    message = "HTTP 400 invalid_request_error: output_config.format.schema: bad"
    other = await b.admit("b")
    assert b.configuration_fault(await b.admit("a"), message, could_be_the_records=True) is False
    b.answered(other)  # another record was served meanwhile: the 400 was about "a"
    assert not b.is_open
    assert b.configuration_fault(await b.admit("a"), message, could_be_the_records=True) is True
    assert not b.is_open
    # A 401 is never one record's fault.
    other = await b.admit("b")
    assert b.configuration_fault(await b.admit("x"), "HTTP 401 ...", False) is False
    b.answered(other)
    assert b.configuration_fault(await b.admit("x"), "HTTP 401 ...", False) is False
    assert b.is_open


async def test_a_provider_failure_during_a_configuration_stop_keeps_the_message(
    clock: FakeClock,
) -> None:
    b = breaker(clock)
    await open_it(b)
    probe = await b.admit("a")
    b.configuration_fault(probe, "HTTP 403 permission_error: no", could_be_the_records=False)
    assert b.report()["state"] == "configuration_error"
    assert b.report()["message"] == "HTTP 403 permission_error: no"


async def test_a_probe_ending_without_an_answer_lets_the_next_one_go(clock: FakeClock) -> None:
    b = breaker(clock)
    await open_it(b)
    start = clock.now
    probe = await b.admit("a")
    b.release(probe)
    b.release(probe)  # idempotent
    assert b.report()["failed_probes"] == 0
    again = await b.admit("b")
    assert again.probe and clock.now - start == 2.0
    b.answered(again)
    b.answered(again)  # a second word about the same call changes nothing
    assert not b.is_open


async def test_next_answer_wakes_on_any_answer(clock: FakeClock) -> None:
    b = breaker(clock)
    out = await b.admit("b")
    assert b.others_in_flight("a") == 1 and b.others_in_flight("b") == 0
    waiter = asyncio.create_task(b.next_answer(timeout=60))
    await asyncio.sleep(0)
    start = clock.now
    b.answered(out)
    await waiter
    assert clock.now == start
    await b.next_answer(timeout=5)  # nobody answers: gives up after the timeout
    assert clock.now == start + 5


def test_threshold_needs_two_records() -> None:
    with pytest.raises(ValueError):
        ProviderBreaker(threshold=1)


async def test_a_call_admitted_before_it_opened_does_not_go_out_after(clock: FakeClock) -> None:
    b = breaker(clock)
    late = await b.admit("z")  # admitted, still waiting for its budget slot...
    await open_it(b)  # ...when the breaker opens
    assert not b.still_admits(late)
    b.release(late)
    probe = await b.admit("z")
    assert probe.probe and b.still_admits(probe)
