"""Cancellation logic without Kafka: the registry, the budget that refuses a cancelled
job's first call (waits included) on a fake clock, the last check at the transport, and
folding cancels and skipped outcomes into a job's status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx2
import pytest

from schemas import BatchRecord, JobCancelled, JobCreated, RecordEvent, ResultEvent, parse_job_event
from stream_app.jobs.aggregation import JobLedger, JobStatus, apply_cancelled
from stream_app.jobs.cancellation import (
    SKIPPED_ERROR,
    CancellableBudget,
    CancelledBeforeCall,
    CancelledJobs,
    RevokedBeforeCall,
    SkipCancelledTransport,
    can_cancel,
    is_finished,
    record_scope,
    skipped_outcome,
)
from stream_app.provider.pricing import Price
from tests.fake_clock import FakeClock


@pytest.fixture
async def clock() -> AsyncIterator[FakeClock]:
    fake = FakeClock()
    yield fake
    fake.close()


def budget(clock: FakeClock, cancelled: CancelledJobs, waits: list[float]) -> CancellableBudget:
    # 60 requests a minute: one slot about every second, all partitions owned.
    return CancellableBudget(
        60, cancelled=cancelled, on_wait=waits.append, clock=clock, sleep=clock.sleep
    )


def record(job_id: str = "j1", index: int = 0) -> RecordEvent:
    return RecordEvent(job_id=job_id, index=index, record=BatchRecord(text="t", id="r"))


async def test_registry_wakes_waiters_once_and_judges_only_after_catching_up() -> None:
    cancelled = CancelledJobs()
    waiter = asyncio.create_task(cancelled.wait("j1"))
    judged = asyncio.create_task(cancelled.should_skip("j1"))
    await asyncio.sleep(0)
    assert not waiter.done() and not judged.done()
    assert cancelled.add("j1", now=5.0) is True
    assert cancelled.add("j1", now=6.0) is False  # idempotent
    await waiter
    assert cancelled.cancelled_at("j1") == 5.0 and "j1" in cancelled and len(cancelled) == 1
    await asyncio.sleep(0)
    assert not judged.done()  # not before the reader caught up
    cancelled.caught_up.set()
    assert await judged is True
    assert await cancelled.should_skip("other") is False
    await cancelled.wait("j1")  # returns at once now


async def test_first_grant_refused_while_waiting_and_the_slot_stays_free(
    clock: FakeClock,
) -> None:
    cancelled = CancelledJobs()
    waits: list[float] = []
    rates = budget(clock, cancelled, waits)

    async def first_call(job_id: str) -> float:
        with record_scope(job_id):
            grant = await rates.acquire()
        return grant.at

    first = await first_call("other")  # takes the current slot
    waiting = asyncio.create_task(first_call("j1"))  # waits about a second for the next
    await asyncio.sleep(0)
    assert not waiting.done()
    cancelled.add("j1")
    with pytest.raises(CancelledBeforeCall):
        await waiting
    assert clock.now == pytest.approx(first)  # the wait ended at once, no time passed
    # The slot it waited for is still free: the next record gets it.
    following = await first_call("other")
    assert 0.9 < following - first < 1.1
    # Already cancelled: refused before waiting at all.
    with pytest.raises(CancelledBeforeCall):
        await first_call("j1")
    assert len(waits) == 2  # refused grants are not waits


async def test_retries_of_a_record_in_flight_are_not_refused(clock: FakeClock) -> None:
    cancelled = CancelledJobs()
    rates = budget(clock, cancelled, [])
    with record_scope("j1"):
        await rates.acquire()  # the record's first call went out
        cancelled.add("j1")
        await rates.acquire()  # its retry still gets a slot
    await rates.acquire()  # calls outside any record are not judged


async def test_transport_stops_a_first_call_granted_before_the_cancel() -> None:
    cancelled = CancelledJobs()
    sent: list[str] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        sent.append(request.url.path)
        return httpx2.Response(200, json={})

    transport = SkipCancelledTransport(httpx2.MockTransport(answer), cancelled)
    async with httpx2.AsyncClient(transport=transport, base_url="http://provider") as client:
        with record_scope("j1"):
            cancelled.add("j1")
            with pytest.raises(CancelledBeforeCall):
                await client.post("/v1/messages")
        with record_scope("j2"):
            await client.post("/v1/messages")  # first call: sent
            cancelled.add("j2")
            await client.post("/v1/messages")  # a retry of a call in flight: sent
        await client.post("/v1/messages/count_tokens")
    assert sent == ["/v1/messages", "/v1/messages", "/v1/messages/count_tokens"]


async def test_the_transport_sends_no_first_call_for_a_record_of_a_revoked_partition() -> None:
    sent: list[str] = []
    ours = [True]

    def answer(request: httpx2.Request) -> httpx2.Response:
        sent.append(request.url.path)
        return httpx2.Response(200, json={})

    transport = SkipCancelledTransport(httpx2.MockTransport(answer), CancelledJobs())
    async with httpx2.AsyncClient(transport=transport, base_url="http://provider") as client:
        with record_scope("j1", still_ours=lambda: ours[0]) as first:
            ours[0] = False  # a rebalance began while it waited for its slot
            with pytest.raises(RevokedBeforeCall):
                await client.post("/v1/messages")
        ours[0] = True
        with record_scope("j2", still_ours=lambda: ours[0]) as second:
            await client.post("/v1/messages")  # first call: sent
            ours[0] = False
            await client.post("/v1/messages")  # a retry of a call already made: sent
    assert sent == ["/v1/messages", "/v1/messages"]
    assert (first.calls, second.calls, second.sending) == (0, 2, 0)
    assert not issubclass(RevokedBeforeCall, Exception)


def test_cancelled_before_call_passes_an_exception_boundary() -> None:
    # The processor turns every Exception into a failed outcome; the skip must pass through.
    assert not issubclass(CancelledBeforeCall, Exception)


def test_skipped_outcome_bills_nothing() -> None:
    outcome = skipped_outcome(record("j1", 7), now=3.0)
    assert outcome.model_dump(exclude_none=True) == {
        "job_id": "j1",
        "index": 7,
        "success": False,
        "skipped": True,
        "skip_reason": "cancelled",
        "error": SKIPPED_ERROR,
        "record_id": "r",
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_creation_1h_input_tokens": 0,
        "attempts": 0,
        "finished_at": 3.0,
    }
    normal = ResultEvent(job_id="j1", index=1, success=True)
    assert "skipped" not in normal.model_dump(exclude_none=True)  # the contract stays plain


def test_parse_job_event() -> None:
    assert isinstance(parse_job_event(b'{"job_id": "j", "total_records": 2}'), JobCreated)
    event = parse_job_event(b'{"type": "cancelled", "job_id": "j", "cancelled_at": 1.5}')
    assert event == JobCancelled(job_id="j", cancelled_at=1.5)
    for bad in (b"{{", b'{"type": "paused", "job_id": "j"}', b'{"type": "cancelled"}'):
        with pytest.raises(ValueError):
            parse_job_event(bad)


PRICE = Price(Decimal("0.003"), Decimal("0.015"))


def ledger() -> tuple[JobLedger, dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    jobs: dict[str, dict[str, Any]] = {}
    results: dict[str, dict[str, Any]] = {}
    return JobLedger(jobs, results, PRICE), jobs, results


def test_cancel_folds_into_the_status_and_skips_count_apart() -> None:
    book, _, results = ledger()
    book.record_created(JobCreated(job_id="j", total_records=3), now=1.0)
    book.record_result(
        ResultEvent(job_id="j", index=0, success=True, input_tokens=10, output_tokens=5),
        now=2.0,
        offset=40,
    )
    job = book.record_cancelled(JobCancelled(job_id="j", cancelled_at=2.5), now=3.0)
    assert job.status == "cancelled" and job.cancelled_at == 2.5
    assert can_cancel(job) and not is_finished(job)
    book.record_result(skipped_outcome(record("j", 1)), now=4.0, offset=41)
    assert not is_finished(book.job("j") or job)
    _, job = book.record_result(
        ResultEvent(job_id="j", index=2, success=False, error="x", input_tokens=3), now=5.0
    )
    assert job is not None and job.status == "cancelled"
    assert (job.completed_count, job.failed_count, job.skipped_count) == (1, 1, 1)
    assert job.input_tokens == 13 and is_finished(job)
    assert results["j#0"]["offset"] == 40 and results["j#1"]["skipped"] is True
    assert "offset" not in results["j#2"]


def test_a_finished_job_is_not_cancelled_and_a_recount_keeps_a_cancel() -> None:
    done = JobStatus(job_id="j", status="completed", total_records=1, completed_count=1)
    assert apply_cancelled(done, JobCancelled(job_id="j"), now=1.0) == done
    assert not can_cancel(done) and is_finished(done)
    early = apply_cancelled(None, JobCancelled(job_id="k"), now=1.0)  # before `created`
    assert early.status == "cancelled" and early.cancelled_at == 1.0

    book, jobs, _ = ledger()
    book.record_created(JobCreated(job_id="j", total_records=2), now=1.0)
    book.record_cancelled(JobCancelled(job_id="j"), now=2.0)
    book.record_result(skipped_outcome(record("j", 0)), now=3.0)
    # A changelog replay set the counters back; a redelivered duplicate recounts them.
    jobs["j"]["skipped_count"] = 0
    book.record_result(skipped_outcome(record("j", 0)), now=4.0)
    job = book.job("j")
    assert job is not None and job.status == "cancelled" and job.skipped_count == 1
