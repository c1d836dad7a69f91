"""Deleting a job's state, and which jobs retention deletes, without Kafka."""

from __future__ import annotations

from typing import Any

import pytest

from schemas import JobCreated, JobDeleted, ResultEvent, parse_job_event
from stream_app.jobs.aggregation import JobLedger, JobStatus
from stream_app.jobs.deletion import DAY_SECONDS, DeletedJobs, retention_due
from stream_app.provider.pricing import price_for

PRICE = price_for("claude-sonnet-4-6")


def test_the_ledger_forgets_every_result_and_the_status_of_a_deleted_job() -> None:
    jobs: dict[str, dict[str, Any]] = {}
    results: dict[str, dict[str, Any]] = {}
    ledger = JobLedger(jobs, results, PRICE)
    for job_id in ("gone", "gone2"):  # "gone2" starts like "gone": it must stay
        ledger.record_created(JobCreated(job_id=job_id, total_records=3), now=1.0)
        for index in range(3):
            ledger.record_result(ResultEvent(job_id=job_id, index=index, success=True), now=2.0)
    assert ledger.record_deleted("gone") == 3
    assert ledger.job("gone") is None and ledger.result("gone", 2) is None
    assert set(jobs) == {"gone2"} and len(results) == 3
    assert ledger.record_deleted("gone") == 0  # a repeated deletion changes nothing


def test_deleted_jobs_tell_each_listener_once_even_when_one_fails() -> None:
    deleted = DeletedJobs()
    seen: list[str] = []

    def broken(job_id: str) -> None:
        raise OSError("disk full")

    deleted.on_deleted(broken)
    deleted.on_deleted(seen.append)
    with pytest.raises(OSError):
        deleted.add("j")
    assert seen == ["j"] and "j" in deleted
    assert deleted.add("j") is False and seen == ["j"]


def test_the_deleted_event_is_read_from_batch_jobs() -> None:
    event = parse_job_event(b'{"type": "deleted", "job_id": "j", "reason": "retention"}')
    assert isinstance(event, JobDeleted) and event.reason == "retention"
    assert isinstance(parse_job_event(b'{"job_id": "j", "total_records": 1}'), JobCreated)


def job(job_id: str, status: str, updated_at: float, total: int = 1) -> JobStatus:
    done = 1 if status == "completed" else 0
    return JobStatus(
        job_id=job_id,
        status=status,  # type: ignore[arg-type]
        total_records=total,
        completed_count=done,
        created_at=updated_at - 10,
        updated_at=updated_at,
    )


def test_retention_deletes_only_finished_jobs_older_than_the_period() -> None:
    now = 100 * DAY_SECONDS
    jobs = [
        job("old-done", "completed", now - 8 * DAY_SECONDS),
        job("new-done", "completed", now - 6 * DAY_SECONDS),
        job("old-running", "running", now - 30 * DAY_SECONDS, total=5),
        job("old-cancelled-settled", "cancelled", now - 9 * DAY_SECONDS, total=0),
    ]
    assert retention_due(jobs, now, 7) == ["old-done", "old-cancelled-settled"]
    assert retention_due(jobs, now, None) == []
