"""Live changes of the jobs this worker owns, for readers in the same process (the event
streams of the API). The aggregate agent publishes each change after it is stored."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from stream_app.jobs.aggregation import JobStatus


@dataclass(frozen=True)
class JobChange:
    """A job's status after a change, and the stored result that changed it, if any."""

    job: JobStatus
    result: dict[str, Any] | None = None


@dataclass(eq=False)
class Subscription:
    """Changes of one job, in the order they were applied. A reader that falls more than
    `limit` changes behind is dropped (`overflowed`): it should read the tables again."""

    limit: int
    _queue: asyncio.Queue[JobChange] = field(default_factory=asyncio.Queue)
    overflowed: bool = False

    def put(self, change: JobChange) -> None:
        if self.overflowed:
            return
        if self._queue.qsize() >= self.limit:
            self.overflowed = True
            return
        self._queue.put_nowait(change)

    async def changes(self, timeout: float) -> list[JobChange]:
        """Every change queued; waits up to `timeout` seconds for the first (else [])."""
        if self._queue.empty():
            try:
                first = await asyncio.wait_for(self._queue.get(), timeout)
            except TimeoutError:
                return []
            drained = [first]
        else:
            drained = []
        while not self._queue.empty():
            drained.append(self._queue.get_nowait())
        return drained


class JobFeed:
    def __init__(self, limit: int = 10_000) -> None:
        self._limit = limit
        self._subscribers: dict[str, list[Subscription]] = {}

    @contextmanager
    def subscribe(self, job_id: str) -> Iterator[Subscription]:
        subscription = Subscription(self._limit)
        self._subscribers.setdefault(job_id, []).append(subscription)
        try:
            yield subscription
        finally:
            subscribers = self._subscribers.get(job_id, [])
            if subscription in subscribers:
                subscribers.remove(subscription)
            if not subscribers:
                self._subscribers.pop(job_id, None)

    def watching(self, job_id: str) -> bool:
        """Whether anyone reads this job's changes now."""
        return job_id in self._subscribers

    def publish(self, job: JobStatus, result: dict[str, Any] | None = None) -> None:
        for subscription in self._subscribers.get(job.job_id, ()):
            subscription.put(JobChange(job, result))
