"""The breaker's canary on a fake clock: when a probe's failure is followed by a canary,
what an answered canary and a refused one change (stream_app/provider/breaker.py)."""

from __future__ import annotations

import asyncio

import pytest

from stream_app.provider.breaker import ProviderBreaker
from tests.fake_clock import FakeClock
from tests.provider.test_breaker import breaker, clock, fail, open_it  # noqa: F401

ERROR = "HTTP 500 api_error: Internal server error"


async def probe_of(b: ProviderBreaker, key: str):  # type: ignore[no-untyped-def]
    admission = await b.admit(key)
    assert admission.probe
    return admission


async def test_a_canary_is_wanted_only_for_a_probe_that_failed_more_than_its_retries(
    clock: FakeClock,  # noqa: F811
) -> None:
    b = breaker(clock)
    closed = await b.admit("a")
    assert not b.canary_wanted(closed, failed_probes=5, retries=1)  # not a probe
    b.answered(closed)
    await open_it(b)
    probe = await probe_of(b, "a")
    assert not b.canary_wanted(probe, failed_probes=1, retries=1)
    assert b.canary_wanted(probe, failed_probes=2, retries=1)
    assert b.canary_wanted(probe, failed_probes=1, retries=0)
    b.provider_failed(probe, ERROR)
    assert not b.canary_wanted(probe, failed_probes=9, retries=1)  # already answered


async def test_no_canary_while_the_configuration_is_refused(clock: FakeClock) -> None:  # noqa: F811
    b = breaker(clock)
    b.configuration_fault(await b.admit("a"), "HTTP 401 authentication_error: x", False)
    probe = await probe_of(b, "a")
    assert not b.canary_wanted(probe, failed_probes=9, retries=1)
    b.answered(probe)


async def test_an_answered_canary_closes_the_breaker_and_counts_the_probe(
    clock: FakeClock,  # noqa: F811
) -> None:
    b = breaker(clock)
    await open_it(b)
    probe = await probe_of(b, "a")
    b.canary_answered(probe)
    assert not b.is_open
    assert b.report() == {"state": "available", "refused_calls_total": 4}
    assert (b.canaries_sent, b.canaries_answered) == (1, 1)
    # Everyone goes on at once; the record's next call is an ordinary one.
    assert not (await b.admit("b")).probe


async def test_a_refused_canary_is_an_outage_both_calls_count_and_the_next_probe_waits(
    clock: FakeClock,  # noqa: F811
) -> None:
    b = breaker(clock)
    await open_it(b)
    start = clock.now
    probe = await probe_of(b, "a")
    assert clock.now - start == 1.0
    b.canary_failed(probe, ERROR)
    assert b.is_open
    report = b.report()
    assert (report["refused_calls"], report["failed_probes"]) == (3 + 2, 2)
    assert report["refused_calls_total"] == 5
    assert (b.canaries_sent, b.canaries_answered, b.canaries_refused) == (1, 0, 1)
    # Backoff after two failed probes: min(8, 1 * 2**2) s; one probe at a time.
    again = await probe_of(b, "b")
    assert clock.now - start == 1.0 + 4.0
    b.answered(again)
    assert not b.is_open


async def test_a_records_own_failure_neither_opens_nor_feeds_the_breaker(
    clock: FakeClock,  # noqa: F811
) -> None:
    b = breaker(clock)
    assert await fail(b, "a") is True
    for _ in range(5):
        b.own_failure(await b.admit("b"))
    assert not b.is_open and b.is_isolated("a")
    assert await fail(b, "a") is True  # still a's trouble alone
    assert b.report() == {"state": "available", "refused_calls_total": 7}


async def test_in_an_outage_a_record_not_yet_refused_probes_first_and_at_once(
    clock: FakeClock,  # noqa: F811
) -> None:
    b = breaker(clock)
    await open_it(b)
    start = clock.now
    probe = await probe_of(b, "a")  # the stop's own records wait for the backoff
    assert clock.now - start == 1.0
    b.provider_failed(probe, ERROR)
    waiting_a = asyncio.ensure_future(b.admit("a"))
    await asyncio.sleep(0)
    fresh = await probe_of(b, "d")  # ahead of "a" and without waiting
    assert clock.now - start == 1.0 and not waiting_a.done()
    b.provider_failed(fresh, ERROR)  # refused too: "d" now waits like the others
    again = asyncio.ensure_future(b.admit("d"))
    assert (await waiting_a).probe and clock.now - start == 1.0 + 4.0
    b.answered(waiting_a.result())
    assert not (await again).probe


async def test_when_the_last_waiting_call_gives_up_the_next_one_probes_at_once(
    clock: FakeClock,  # noqa: F811
) -> None:
    b = breaker(clock)
    b.configuration_fault(await b.admit("a"), "HTTP 401 authentication_error: x", False)
    start = clock.now
    waiting = asyncio.ensure_future(b.admit("a"))
    await asyncio.sleep(0)
    waiting.cancel()  # its job was cancelled
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert (await probe_of(b, "b")) and clock.now == start
