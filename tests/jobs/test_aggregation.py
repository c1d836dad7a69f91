"""The fold of job events and results into a job's status, without Kafka."""

from decimal import Decimal

import pytest

from schemas import JobCreated, ResultEvent
from stream_app.jobs.aggregation import (
    Applied,
    JobLedger,
    JobStatus,
    apply_created,
    apply_result,
    result_out_of_range,
)
from stream_app.provider.pricing import price_for

PRICE = price_for("claude-sonnet-4-6")


def result(index: int, success: bool = True, tin: int = 100, tout: int = 20) -> ResultEvent:
    return ResultEvent(
        job_id="j",
        index=index,
        success=success,
        input_tokens=tin,
        output_tokens=tout,
        error=None if success else "boom",
    )


def test_job_runs_then_completes_with_exact_totals() -> None:
    job = apply_created(None, JobCreated(job_id="j", total_records=3, created_at=5.0), now=6.0)
    assert job.status == "pending" and job.total_records == 3 and job.created_at == 5.0
    job = apply_result(job, result(0), PRICE, now=7.0)
    assert job.status == "running"
    job = apply_result(job, result(1, success=False, tin=10, tout=0), PRICE, now=8.0)
    job = apply_result(job, result(2, tin=7, tout=3), PRICE, now=9.0)
    assert job.status == "completed"
    assert (job.completed_count, job.failed_count) == (2, 1)
    assert job.input_tokens == 117 and job.output_tokens == 23 and job.total_tokens_used == 140
    assert job.estimated_cost == PRICE.cost(117, 23)
    assert job.estimated_cost == Decimal("0.000351") + Decimal("0.000345")
    assert job.updated_at == 9.0


def test_results_may_overtake_the_created_event() -> None:
    job = apply_result(None, result(4), PRICE, now=1.0)
    job = apply_result(job, result(0), PRICE, now=2.0)
    assert job.total_records is None and job.status == "running" and job.highest_index == 4
    job = apply_created(job, JobCreated(job_id="j", total_records=2, created_at=0.5), now=3.0)
    assert job.status == "completed" and job.created_at == 0.5


def test_repeated_created_event_changes_nothing() -> None:
    job = apply_created(None, JobCreated(job_id="j", total_records=2), now=1.0)
    again = apply_created(job, JobCreated(job_id="j", total_records=99), now=2.0)
    assert again == job


def test_fold_does_not_mutate_its_input() -> None:
    job = apply_created(None, JobCreated(job_id="j", total_records=2), now=1.0)
    apply_result(job, result(0), PRICE, now=2.0)
    assert job.completed_count == 0


def test_out_of_range_index_is_detected_once_total_is_known() -> None:
    job = apply_created(None, JobCreated(job_id="j", total_records=2), now=1.0)
    assert result_out_of_range(job, result(2))
    assert not result_out_of_range(job, result(1))
    assert not result_out_of_range(None, result(50))


def ledger() -> JobLedger:
    return JobLedger({}, {}, PRICE)


def test_ledger_counts_each_index_once_through_duplicates_and_reordering() -> None:
    book = ledger()
    events = [result(2), result(0), result(2), result(1, success=False), result(0), result(1)]
    outcomes = [book.record_result(e, now=float(i))[0] for i, e in enumerate(events)]
    assert outcomes == [
        Applied.COUNTED,
        Applied.COUNTED,
        Applied.DUPLICATE,
        Applied.COUNTED,
        Applied.DUPLICATE,
        Applied.DUPLICATE,
    ]
    book.record_created(JobCreated(job_id="j", total_records=3), now=9.0)
    book.record_created(JobCreated(job_id="j", total_records=3), now=10.0)
    job = book.job("j")
    assert job is not None and job.status == "completed"
    assert (job.completed_count, job.failed_count) == (2, 1)
    assert job.input_tokens == 300 and job.output_tokens == 60
    # The first outcome of an index wins; a later, different one is a duplicate too.
    assert book.result("j", 1)["success"] is False


def test_ledger_refuses_indices_beyond_the_job() -> None:
    book = ledger()
    book.record_created(JobCreated(job_id="j", total_records=1), now=1.0)
    applied, job = book.record_result(result(1), now=2.0)
    assert applied is Applied.OUT_OF_RANGE
    assert job is not None and job.outcomes == 0 and book.result("j", 1) is None


def test_ledger_recounts_a_job_whose_counters_were_replayed_back() -> None:
    """After a crash, recovery can restore an older value of a job's counters while the
    results written after it stay; the redelivered duplicate repairs the counters."""
    jobs: dict[str, dict] = {}
    book = JobLedger(jobs, {}, PRICE)
    book.record_created(JobCreated(job_id="j", total_records=4), now=0.0)
    book.record_result(result(0), now=1.0)
    older = dict(jobs["j"])
    for index in (1, 2, 3):
        book.record_result(result(index, tin=10 * index), now=2.0)
    jobs["j"] = older  # the replayed changelog entry
    assert book.job("j").outcomes == 1
    applied, repaired = book.record_result(result(3, tin=10 * 3), now=3.0)
    assert applied is Applied.DUPLICATE
    assert repaired is not None and repaired.status == "completed"
    job = book.job("j")
    assert (job.completed_count, job.input_tokens) == (4, 100 + 10 + 20 + 30)
    assert job.estimated_cost == PRICE.cost(160, 80)
    # Later duplicates of the same job do not rescan it.
    assert book.record_result(result(2), now=4.0) == (Applied.DUPLICATE, None)


def test_cache_tokens_are_counted_and_priced_per_job() -> None:
    cached = ResultEvent(
        job_id="j",
        index=0,
        success=True,
        input_tokens=100,
        output_tokens=20,
        cache_creation_input_tokens=1300,
        cache_read_input_tokens=2000,
        cache_creation_1h_input_tokens=300,
    )
    job = apply_created(None, JobCreated(job_id="j", total_records=2), now=1.0)
    job = apply_result(job, cached, PRICE, now=2.0)
    job = apply_result(job, result(1, tin=10, tout=5), PRICE, now=3.0)
    assert (job.input_tokens, job.output_tokens) == (110, 25)
    assert (job.cache_creation_input_tokens, job.cache_read_input_tokens) == (1300, 2000)
    assert job.cache_creation_1h_input_tokens == 300
    assert job.total_tokens_used == 110 + 25 + 1300 + 2000 == cached.tokens_used + 15
    assert job.estimated_cost == PRICE.cost(110, 25, 1300, 2000, 300)
    # The recount after redelivery rebuilds the cache counts too.
    jobs: dict[str, dict] = {}
    book = JobLedger(jobs, {}, PRICE)
    book.record_created(JobCreated(job_id="j", total_records=2), now=1.0)
    older = dict(jobs["j"])
    book.record_result(cached, now=2.0)
    jobs["j"] = older  # the replayed changelog entry
    book.record_result(cached, now=3.0)
    assert book.job("j").cache_read_input_tokens == 2000
    assert book.job("j").completed_count == 1


def test_a_job_without_progress_is_stalled() -> None:
    job = apply_created(None, JobCreated(job_id="j", total_records=2, created_at=0.0), now=100.0)
    assert not job.stalled(now=399.0, after_seconds=300)
    assert job.stalled(now=400.0, after_seconds=300)  # pending, nothing since it was announced
    job = apply_result(job, result(0), PRICE, now=500.0)
    assert not job.stalled(now=700.0, after_seconds=300)
    assert job.stalled(now=800.0, after_seconds=300)  # running, the last outcome is old
    job = apply_result(job, result(1), PRICE, now=900.0)
    assert job.status == "completed" and not job.stalled(now=10_000.0, after_seconds=300)


def test_ledger_does_not_validate_again_what_it_just_wrote(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per outcome the ledger reads its job back: the value it wrote itself is taken as
    it was; any other value in the table (a replayed changelog entry) is read from it."""
    jobs: dict[str, dict] = {}
    book = JobLedger(jobs, {}, PRICE)
    book.record_created(JobCreated(job_id="j", total_records=3), now=0.0)
    older = dict(jobs["j"])
    book.record_result(result(0), now=1.0)
    validated: list[dict] = []
    real = JobStatus.model_validate

    def counting(raw: dict) -> JobStatus:
        validated.append(raw)
        return real(raw)

    monkeypatch.setattr(JobStatus, "model_validate", counting)
    book.record_result(result(1), now=2.0)
    assert book.job("j").completed_count == 2 and validated == []
    jobs["j"] = older  # the table changed behind the ledger
    assert book.job("j").completed_count == 0 and validated == [older]


class _CountingReads(dict[str, dict]):
    """A results table that counts its reads."""

    reads = 0

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.reads += 1
        return super().get(key, default)


def test_the_result_just_counted_is_read_back_without_the_table() -> None:
    """The aggregate agent hands each counted result to the job's live readers: the value
    just written is returned as written, any other is read from the table."""
    results = _CountingReads()
    book = JobLedger({}, results, PRICE)
    book.record_created(JobCreated(job_id="j", total_records=3), now=0.0)
    book.record_result(result(0), now=1.0)
    applied, _ = book.record_result(result(1, tout=7), now=2.0)
    assert applied is Applied.COUNTED
    just = book.result("j", 1)
    assert just == results["j#1"] and just is not None and just["output_tokens"] == 7
    assert results.reads == 0
    assert book.result("j", 0) == results["j#0"] and results.reads == 1
    assert book.result("j", 2) is None and results.reads == 2


def test_batch_lane_results_cost_half_and_the_saving_is_shown() -> None:
    usage = {"input_tokens": 1000, "output_tokens": 300, "cache_read_input_tokens": 2000}
    live = ResultEvent(job_id="j", index=0, success=True, **usage)
    batch = ResultEvent(job_id="j", index=1, success=True, lane="batch", **usage)
    job = apply_created(None, JobCreated(job_id="j", total_records=2), now=1.0)
    job = apply_result(job, live, PRICE, now=2.0)
    live_cost = job.estimated_cost
    assert job.saving_usd == 0
    job = apply_result(job, batch, PRICE, now=3.0)
    assert job.estimated_cost - live_cost == live_cost / 2
    assert job.saving_usd == live_cost / 2
    book = ledger()
    assert book.cost_of(batch) == book.cost_of(live) / 2
    book.record_result(batch, now=1.0)
    book.record_result(batch, now=2.0)  # a duplicate recounts: the saving is not doubled
    stored = book.job("j")
    assert stored is not None and stored.saving_usd == live_cost / 2
