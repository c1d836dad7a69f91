"""Records that always get an HTTP 500, with no other record to show the provider works:
the canary tells their own fault from an outage (the processor and breaker, the real SDK
and the simulator; no Kafka)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from schemas import BatchRecord, RecordEvent, ResultEvent
from simulator.testing import SimulatorHandle
from stream_app.jobs.cancellation import CancelledBeforeCall, CancelledJobs
from stream_app.jobs.processing import STOPPED_ERROR, RecordProcessor, RetryPolicy
from stream_app.provider.breaker import ProviderBreaker
from stream_app.provider.budget import RateBudget
from stream_app.provider.client import CANARY_TEXT, InsightClient, build_anthropic_client
from stream_app.running.testing import wait_until

ALWAYS_500 = "[[sim:fail-500-always]]"
TEXT = "The export button crashes the app every time. Customers are angry and want refunds."
# A record's calls: its retries + 1 failures, probes it failed (a canary follows once they
# pass its retries), the call after the canary, and failures that other records' failures
# in between kept from counting (how many depends on the interleaving).
MAX_CALLS = "bounded by its retries"

Make = Callable[..., RecordProcessor]


@pytest.fixture
async def make_processor(simulator: SimulatorHandle) -> AsyncIterator[Make]:
    clients = []

    def make(retries: int = 1, probe_base: float = 0.05, **kwargs: Any) -> RecordProcessor:
        client = build_anthropic_client(api_key="sk-x", base_url=simulator.base_url, timeout=10)
        clients.append(client)
        return RecordProcessor(
            client=InsightClient(client, model="claude-sonnet-4-6", max_tokens=512),
            budget=RateBudget(6000),
            policy=RetryPolicy(retries=retries, backoff_seconds=0.01),
            breaker=ProviderBreaker(
                threshold=2, probe_base_seconds=probe_base, probe_max_seconds=probe_base * 4
            ),
            **kwargs,
        )

    yield make
    for client in clients:
        await client.close()


def event(text: str, index: int, job_id: str = "job-1") -> RecordEvent:
    return RecordEvent(job_id=job_id, index=index, record=BatchRecord(text=f"R{index} {text}"))


def canaries(simulator: SimulatorHandle) -> list[dict[str, Any]]:
    return [r for r in simulator.stats()["requests"] if r["text"] == CANARY_TEXT]


@pytest.mark.parametrize("retries", [0, 1, 2])
async def test_records_failing_alone_fail_with_their_error_after_a_canary(
    make_processor: Make, simulator: SimulatorHandle, retries: int
) -> None:
    processor = make_processor(retries=retries)
    results = await asyncio.wait_for(
        asyncio.gather(*(processor.process(event(f"{TEXT} {ALWAYS_500}", i)) for i in range(3))),
        timeout=30,
    )
    assert [r.success for r in results] == [False] * 3
    for result in results:
        assert result.error is not None and result.error.startswith("HTTP 500 api_error")
        assert 1 <= result.attempts <= 3 * (retries + 2), MAX_CALLS
        assert result.tokens_used == 0
    assert not processor.breaker.is_open
    # The canaries were answered (billed, a few tokens each) and are no record's.
    sent = canaries(simulator)
    assert sent and all(r["status"] == 200 for r in sent)
    assert len(sent) == processor.breaker.canaries_answered == processor.breaker.canaries_sent
    assert all(r["max_tokens"] == 1 for r in sent)
    record_calls = [r for r in simulator.stats()["requests"] if r["text"] != CANARY_TEXT]
    assert {r["status"] for r in record_calls} == {500}
    assert len(record_calls) == sum(r.attempts for r in results)


async def test_a_healthy_record_meanwhile_is_answered(make_processor, simulator) -> None:
    processor = make_processor(retries=1)
    bad = [processor.process(event(f"{TEXT} {ALWAYS_500}", i)) for i in range(2)]
    good = processor.process(event(TEXT, 2))
    results = await asyncio.wait_for(asyncio.gather(*bad, good), timeout=30)
    assert [r.success for r in results] == [False, False, True]


async def test_in_an_outage_no_record_fails_and_the_canaries_are_refused_too(
    make_processor: Make, simulator: SimulatorHandle
) -> None:
    processor = make_processor(retries=1)
    simulator.configure(force_status=500)
    running = [asyncio.ensure_future(processor.process(event(TEXT, i))) for i in range(2)]
    try:
        await asyncio.to_thread(
            wait_until,
            lambda: processor.breaker.canaries_sent >= 3,
            timeout=30,
            what="three canaries refused",
        )
        assert not any(task.done() for task in running)  # no record failed for the outage
        assert processor.breaker.is_open and processor.breaker.canaries_answered == 0
    finally:
        simulator.configure(force_status=None)
    results = await asyncio.wait_for(asyncio.gather(*running), timeout=30)
    assert all(r.success for r in results), [r.error for r in results]
    refused = [r for r in canaries(simulator) if r["status"] == 500]
    assert len(refused) >= 3
    # Every canary went out alone: probe and canary one after the other, never together.
    calls = sorted(simulator.stats()["requests"], key=lambda r: r["t"])
    probing = [r for r in calls if r["t"] > calls[1]["t_done"] and r["status"] == 500]
    for earlier, later in zip(probing, probing[1:], strict=False):
        assert later["t"] >= earlier["t_done"]


async def test_a_cancelled_jobs_records_make_no_more_calls_at_once(
    make_processor: Make, simulator: SimulatorHandle
) -> None:
    cancelled = CancelledJobs()
    cancelled.caught_up.set()
    # Probes far apart: the records wait at the breaker (or in their backoff) when cancelled.
    processor = make_processor(retries=5, probe_base=60.0, cancelled=cancelled)
    simulator.configure(force_status=529)
    started = [asyncio.ensure_future(processor.process(event(TEXT, i))) for i in range(3)]
    await asyncio.to_thread(
        wait_until,
        lambda: processor.breaker.is_open and simulator.stats()["in_flight"] == 0,
        timeout=20,
        what="breaker open, no call out",
    )
    calls = len(simulator.stats()["requests"])
    began = time.monotonic()
    cancelled.add("job-1")
    results: list[ResultEvent] = await asyncio.wait_for(asyncio.gather(*started), timeout=5)
    assert time.monotonic() - began < 1.0
    for result in results:
        assert (result.skipped, result.skip_reason) == (True, "cancelled")
        assert result.error == STOPPED_ERROR and result.attempts >= 1
    assert len(simulator.stats()["requests"]) == calls
    # The line is still stopped, but the next record to come probes at once.
    simulator.configure(force_status=None)
    result = await asyncio.wait_for(processor.process(event(TEXT, 0, job_id="job-2")), 5)
    assert result.success and not processor.breaker.is_open


async def test_a_record_that_never_called_is_skipped_when_cancelled_at_the_breaker(
    make_processor: Make, simulator: SimulatorHandle
) -> None:
    cancelled = CancelledJobs()
    cancelled.caught_up.set()
    processor = make_processor(retries=5, probe_base=60.0, cancelled=cancelled)
    simulator.configure(force_status=403)  # a configuration fault: everyone waits its turn
    first = asyncio.ensure_future(processor.process(event(TEXT, 0)))
    await asyncio.to_thread(
        wait_until, lambda: processor.breaker.is_open, timeout=20, what="the line stopped"
    )
    waiting = asyncio.ensure_future(processor.process(event(TEXT, 1, job_id="job-2")))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    cancelled.add("job-2")
    with pytest.raises(CancelledBeforeCall):
        await asyncio.wait_for(waiting, timeout=5)
    assert len(simulator.stats()["requests"]) == 1  # only the first record's
    cancelled.add("job-1")
    stopped = await asyncio.wait_for(first, timeout=5)
    assert stopped.skipped and stopped.attempts == 1
