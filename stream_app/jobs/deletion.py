"""Deleted jobs: which ones this worker knows of, and which jobs are old enough for the
retention rule to delete. Pure logic (no Kafka): `stream_app.kafka.jobs_reader` feeds
`DeletedJobs` from the `deleted` events of `batch.jobs` (read from the beginning at every
start, so a restarted worker knows every deletion before it judges a record, and the
`deleted` event wins over the job's older `created` one); the aggregate agent and the API
ask it so that nothing brings a deleted job back (a late outcome of a call that was in
flight, the SQLite mirror, an instance's read-your-writes memory).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from stream_app.jobs.aggregation import JobStatus
from stream_app.jobs.cancellation import is_finished

# Seconds in a day (BATCH_RETENTION_DAYS).
DAY_SECONDS = 86_400.0


class DeletedJobs:
    """The ids of the deleted jobs this worker has seen on `batch.jobs`, and what to do on
    each new one (`on_deleted` callbacks: purge the local stores it holds). Only ids are
    kept, never any of the job's data."""

    def __init__(self) -> None:
        self._deleted: dict[str, float] = {}
        self._listeners: list[Callable[[str], None]] = []

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._deleted

    def __len__(self) -> int:
        return len(self._deleted)

    def on_deleted(self, listener: Callable[[str], None]) -> None:
        """Call `listener(job_id)` for every job deleted from now on (once per job)."""
        self._listeners.append(listener)

    def add(self, job_id: str, now: float | None = None) -> bool:
        """Mark the job deleted; True the first time (the listeners then run). A listener
        that raises does not keep the others from running; the error propagates after."""
        if job_id in self._deleted:
            return False
        self._deleted[job_id] = time.time() if now is None else now
        errors: list[Exception] = []
        for listener in self._listeners:
            try:
                listener(job_id)
            except Exception as exc:  # each store purges on its own; reported below
                errors.append(exc)
        if errors:
            raise errors[0]
        return True


def retention_due(jobs: Iterable[JobStatus], now: float, retention_days: float | None) -> list[str]:
    """The ids of the finished jobs (stream_app.jobs.cancellation.is_finished) whose last
    change (`updated_at`, else `created_at`, Unix seconds) is at least `retention_days`
    days before `now`; none when `retention_days` is None (BATCH_RETENTION_DAYS unset:
    keep every job). Unfinished jobs are never due: delete those by hand."""
    if retention_days is None:
        return []
    cutoff = now - retention_days * DAY_SECONDS
    due = []
    for job in jobs:
        last = job.updated_at if job.updated_at is not None else job.created_at
        if last is not None and last <= cutoff and is_finished(job):
            due.append(job.job_id)
    return due
