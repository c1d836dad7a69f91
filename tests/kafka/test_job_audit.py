"""The audit of quiet jobs, without Kafka: counts corrupted on purpose, outcomes that the
results table lost, and jobs that are fine or still working."""

from __future__ import annotations

import asyncio
from typing import Any

from schemas import JobCreated, ResultEvent
from stream_app.jobs.aggregation import JobLedger, JobStatus
from stream_app.kafka.job_audit import JobAudit, is_quiet, repair_plan
from stream_app.provider.pricing import price_for

PRICE = price_for("claude-sonnet-4-6")
TOTAL = 6


def outcome(index: int) -> ResultEvent:
    return ResultEvent(
        job_id="j", index=index, success=True, input_tokens=100 + index, output_tokens=20
    )


def raw(index: int) -> bytes:
    return outcome(index).model_dump_json(exclude_none=True).encode()


class World:
    """A ledger over dicts, the outcomes 'on Kafka', and an audit wired to both."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.results: dict[str, dict[str, Any]] = {}
        self.ledger = JobLedger(self.jobs, self.results, PRICE)
        self.ledger.record_created(JobCreated(job_id="j", total_records=TOTAL), now=0.0)
        self.on_kafka = {i: raw(i) for i in range(TOTAL)}
        self.resent: list[bytes] = []

        async def stored(job_id: str, total: int) -> set[int]:
            return self.ledger.stored_indexes(job_id, total)

        async def read(job: JobStatus, have: set[int]) -> dict[int, bytes]:
            return dict(self.on_kafka)

        async def resend(job_id: str, values: list[bytes]) -> None:
            # What the aggregate agent does with them when they come back from batch.results.
            self.resent += values
            for value in values:
                self.ledger.record_result(ResultEvent.model_validate_json(value), now=100.0)

        self.audit = JobAudit(
            jobs=self.ledger.jobs,
            stored=stored,
            read=read,
            resend=resend,
            recount=self.ledger.recount_on_next_duplicate,
            quiet_seconds=20.0,
        )

    def count(self, indexes: range | list[int], now: float = 1.0) -> None:
        for index in indexes:
            self.ledger.record_result(outcome(index), now=now)

    def job(self) -> JobStatus:
        job = self.ledger.job("j")
        assert job is not None
        return job


def exact(job: JobStatus) -> bool:
    tokens = sum(100 + i + 20 for i in range(TOTAL))
    return (job.status, job.completed_count, job.total_tokens_used) == ("completed", TOTAL, tokens)


def test_a_job_whose_count_was_corrupted_is_recounted_from_its_results() -> None:
    world = World()
    world.count(range(TOTAL - 1))
    # Corrupted on purpose: the stored counters say 2 outcomes, the results hold 5, and
    # a recount since the last rebalance already happened (a duplicate alone would not
    # recount again).
    world.jobs["j"] = {**world.jobs["j"], "completed_count": 2, "status": "running"}
    world.ledger._recounted.add("j")
    world.on_kafka.pop(TOTAL - 1)  # the last record is still with Claude

    assert asyncio.run(world.audit.check(now=100.0)) == 1
    job = world.job()
    assert (job.status, job.completed_count) == ("running", TOTAL - 1)
    world.count([TOTAL - 1], now=101.0)
    assert exact(world.job())


def test_outcomes_on_kafka_that_the_results_table_lost_are_sent_again_and_counted_once() -> None:
    world = World()
    world.count(range(4))
    # The results of 4 and 5 reached batch.results but never the table; the counters say
    # 5 (one of them was counted before its result was lost).
    world.jobs["j"] = {**world.jobs["j"], "completed_count": 5, "status": "running"}

    assert asyncio.run(world.audit.check(now=100.0)) == 1
    assert world.resent == [raw(4), raw(5), raw(0)]  # the missing, then one to recount on
    assert exact(world.job())
    assert sorted(world.ledger.stored_indexes("j", TOTAL)) == list(range(TOTAL))


def test_a_job_in_step_with_kafka_or_not_quiet_is_left_alone() -> None:
    world = World()
    world.count(range(3), now=95.0)
    world.on_kafka = {i: raw(i) for i in range(3)}  # the rest still wait for their call
    assert asyncio.run(world.audit.check(now=100.0)) == 0  # outcomes 5 s ago: not quiet
    assert asyncio.run(world.audit.check(now=200.0)) == 0  # quiet, but nothing is off
    assert world.resent == []
    assert world.job().completed_count == 3


def test_the_plan_and_the_quiet_rule() -> None:
    job = JobStatus(job_id="j", status="running", total_records=3, completed_count=1)
    job.updated_at = 10.0
    assert not is_quiet(job, 20.0, 20.0) and is_quiet(job, 30.0, 20.0)
    assert not is_quiet(job.model_copy(update={"status": "completed"}), 99.0, 20.0)
    assert repair_plan(job, {0}, {0: b"a"}) == []  # in step
    assert repair_plan(job, {0}, {0: b"a", 2: b"c"}) == [b"c", b"a"]
    # Nothing stored: the first missing outcome is sent twice (counted, then recounted on).
    assert repair_plan(job, set(), {1: b"b"}) == [b"b", b"b"]
    assert repair_plan(job.model_copy(update={"completed_count": 0}), set(), {}) == []
