"""Spending caps: how much a capped job has cost, as this worker knows it, and whether one
more call fits. Pure logic (no Kafka); `stream_app.job_rules` feeds it.

A worker learns a capped job's spend from two sources, both keyed by record index so a
record is counted once whichever arrives first: the outcomes it produces itself, and every
outcome of the job on `batch.results`, which each worker reads with its own group-less
consumer (`stream_app.cancel_listener`). Before a record's first call the worker reserves
that call's expected cost; the call goes only when spend + reservations + its own
estimate stay within the cap. Once a record of a job is refused, every later record of
that job on this worker is refused too (the job has stopped; records are not cherry-picked
to fill the cap).

The overshoot bound: the cap can be passed only by calls that started before the spend
that reached it was visible here. On one worker that is the error of the estimates of the
calls in flight (and their retries); with W workers, add the calls the other W-1 workers
had in flight (at most BATCH_MAX_CONCURRENT_LLM_CALLS each) and the milliseconds an
outcome takes to reach the other workers through `batch.results`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal


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

    def reserve(self, job_id: str, index: int, estimate: Decimal) -> bool:
        """May record `index` make its first call, expected to cost `estimate` USD? True
        reserves it (until `settle`); False means the job has reached its cap here."""
        job = self._jobs.get(job_id)
        if job is None:
            return True
        if index in job.billed:
            return True  # its outcome is known: it will not call again
        if job.exhausted:
            return False
        committed = job.spent + sum(job.reserved.values(), Decimal(0))
        if committed + estimate > job.cap:
            job.exhausted = True
            return False
        job.reserved[index] = estimate
        return True

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
