"""A retried record's new outcome replaces its old one in the ledger, without Kafka."""

from __future__ import annotations

from typing import Any

from schemas import JobCreated, JobRetried, ResultEvent
from stream_app.jobs.aggregation import Applied, JobLedger
from stream_app.provider.pricing import price_for
from stream_app.provider.usage import Usage

PRICE = price_for("claude-sonnet-4-6")


def outcome(index: int, success: bool, tokens: int, retry: int | None = None) -> ResultEvent:
    return ResultEvent(
        job_id="j",
        index=index,
        success=success,
        error=None if success else "bad output",
        input_tokens=tokens,
        output_tokens=tokens // 10,
        attempts=1,
        retry=retry,
    )


def test_a_retried_outcome_replaces_the_old_one_and_both_rounds_are_billed() -> None:
    results: dict[str, dict[str, Any]] = {}
    ledger = JobLedger({}, results, PRICE)
    ledger.record_created(JobCreated(job_id="j", total_records=3), now=1.0)
    ledger.record_result(outcome(0, True, 100), now=2.0)
    ledger.record_result(outcome(1, False, 50), now=2.0)
    _, job = ledger.record_result(outcome(2, False, 70), now=2.0)
    assert job is not None and job.status == "completed" and job.failed_count == 2
    cost_before = job.estimated_cost

    job = ledger.record_retried(JobRetried(job_id="j", retry=1, indexes=[1, 2]), now=3.0)
    assert job is not None and job.status == "running" and job.retrying == 2
    # A redelivered retry event changes nothing.
    assert ledger.record_retried(JobRetried(job_id="j", retry=1, indexes=[1, 2]), 3.5) == job

    applied, job = ledger.record_result(outcome(1, True, 60, retry=1), now=4.0)
    assert applied is Applied.COUNTED and job is not None and job.status == "running"
    # The same outcome redelivered is a duplicate, and so is the first round's again.
    assert ledger.record_result(outcome(1, True, 60, retry=1), now=4.5)[0] is Applied.DUPLICATE
    assert ledger.record_result(outcome(1, False, 50), now=4.5)[0] is Applied.DUPLICATE
    applied, job = ledger.record_result(outcome(2, False, 80, retry=1), now=5.0)
    assert job is not None and job.status == "completed"
    assert (job.completed_count, job.failed_count, job.retrying) == (2, 1, 0)
    assert job.input_tokens == 100 + 50 + 60 + 70 + 80
    stored = ledger.result("j", 1)
    assert stored is not None and stored["input_tokens"] == 110 and stored["attempts"] == 2
    added = PRICE.cost_of(Usage(input_tokens=140, output_tokens=6 + 8))
    assert job.estimated_cost == cost_before + added
