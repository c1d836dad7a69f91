"""Spending caps: how much a capped job has cost, as this worker knows it, and whether one
more call fits. Pure logic (no Kafka); `stream_app.jobs.job_rules` feeds it.

A worker learns a capped job's spend from two sources, both keyed by record index so a
record is counted once whichever arrives first: the outcomes it produces itself, and every
outcome of the job on `batch.results`, which each worker reads with its own group-less
consumer (`stream_app.kafka.jobs_reader`). Before a record's first call the worker reserves
that call's expected cost; the call goes when spend + reservations + its own estimate stay
within the cap, waits while it fits only without the reservations of calls in flight (they
may cost less than reserved), and is refused once the spend alone leaves no room for it.
Once a record of a job is refused, every later record of that job on this worker is
refused too (the job has stopped; records are not cherry-picked to fill the cap).

The overshoot bound: the cap can be passed only by calls that started before the spend
that reached it was visible here. On one worker that is the error of the estimates of the
calls in flight (and their retries); with W workers, add the calls the other W-1 workers
had in flight (at most BATCH_MAX_CONCURRENT_LLM_CALLS each) and the milliseconds an
outcome takes to reach the other workers through `batch.results`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum


class Verdict(Enum):
    ADMIT = "admit"  # reserved: the call may go
    WAIT = "wait"  # fits only once calls in flight have settled (they may cost less)
    REFUSE = "refuse"  # the spend alone leaves no room: the job has reached its cap


@dataclass
class _Capped:
    cap: Decimal
    billed: dict[int, Decimal] = field(default_factory=dict)
    reserved: dict[int, Decimal] = field(default_factory=dict)
    exhausted: bool = False

    @property
    def spent(self) -> Decimal:
        return sum(self.billed.values(), Decimal(0))


class SpendCap:
    """Per capped job: its cap (USD), what each record billed, and reservations in flight."""

    def __init__(self) -> None:
        self._jobs: dict[str, _Capped] = {}

    def watch(self, job_id: str, cap: Decimal) -> None:
        """The job has a cap (from its `created` event); a repeat changes nothing."""
        self._jobs.setdefault(job_id, _Capped(cap))

    def is_capped(self, job_id: str) -> bool:
        return job_id in self._jobs

    def cap(self, job_id: str) -> Decimal | None:
        job = self._jobs.get(job_id)
        return job.cap if job is not None else None

    def spent(self, job_id: str) -> Decimal:
        job = self._jobs.get(job_id)
        return job.spent if job is not None else Decimal(0)

    def reserve(self, job_id: str, index: int, estimate: Decimal) -> Verdict:
        """May record `index` make its first call, expected to cost `estimate` USD? ADMIT
        reserves it (until `settle`); WAIT: not before a call in flight settles; REFUSE:
        the job has reached its cap here (for good)."""
        job = self._jobs.get(job_id)
        if job is None or index in job.billed:
            return Verdict.ADMIT  # no cap; or its outcome is known: it will not call again
        if job.exhausted:
            return Verdict.REFUSE
        if job.spent + estimate > job.cap:
            job.exhausted = True
            return Verdict.REFUSE
        committed = job.spent + sum(job.reserved.values(), Decimal(0))
        if committed + estimate > job.cap:
            return Verdict.WAIT
        job.reserved[index] = estimate
        return Verdict.ADMIT

    def settle(self, job_id: str, index: int, cost: Decimal) -> None:
        """Record `index` of the job billed `cost` USD in all (its outcome); idempotent."""
        job = self._jobs.get(job_id)
        if job is None:
            return
        job.reserved.pop(index, None)
        job.billed.setdefault(index, cost)

    def release(self, job_id: str, index: int) -> None:
        """The record will not call after all (skipped): drop its reservation."""
        job = self._jobs.get(job_id)
        if job is not None:
            job.reserved.pop(index, None)
