"""Cancelled jobs: which ones this worker knows of, and keeping their records off the
provider. Pure logic (no Kafka): `stream_app.kafka.jobs_reader` feeds `CancelledJobs` from
`batch.jobs`, and the process agent asks it before and while a record waits for a call.

A record of a cancelled job is skipped when it has not started a call yet: before it is
admitted, while it waits for a slot of the rate budget (the wait is interrupted, the slot
is not taken), and at the last moment before its first request leaves the process (the
provider client's transport checks). A record whose first call has started is in flight:
it runs to its outcome, retries included, so what the provider billed for it stays in one
outcome.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import httpx2

from schemas import RecordEvent, ResultEvent
from stream_app.jobs.aggregation import JobStatus
from stream_app.provider.budget import Grant, RateBudget

SKIPPED_ERROR = "skipped: the job was cancelled before this record started"
# States after which nothing changes any more (a cancelled job is over once every record
# has its outcome: calls in flight at the cancel finish, the rest are skipped).
# A job whose spending cap was reached is like a cancelled one: over once every record has
# its outcome.
FINAL_STATES = frozenset({"completed", "failed"})


class CancelledBeforeCall(BaseException):
    """The record's job was cancelled before its first call started.

    A BaseException, like asyncio.CancelledError: it must pass through the processor's
    record boundary (which turns every Exception into a failed outcome) up to the agent,
    which records the skip.
    """

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


class RevokedBeforeCall(BaseException):
    """The record's partition was revoked from this worker (a rebalance began) before its
    first call started: no call, no outcome, no acknowledgement. Kafka delivers the record
    again to the partition's owner after the rebalance. A BaseException for the same reason
    as CancelledBeforeCall."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


def is_finished(job: JobStatus) -> bool:
    """True when the job's status and counts will not change any more."""
    if job.status in FINAL_STATES:
        return True
    if job.status in ("cancelled", "budget_exhausted"):
        return job.total_records is not None and job.outcomes >= job.total_records
    return False


def can_cancel(job: JobStatus) -> bool:
    """Pending and running jobs can be cancelled (a cancelled one again, to no effect)."""
    return job.status in ("pending", "running", "cancelled")


def skipped_outcome(event: RecordEvent, now: float | None = None) -> ResultEvent:
    """The outcome of a record that was never sent to the provider: nothing billed."""
    return ResultEvent(
        job_id=event.job_id,
        index=event.index,
        success=False,
        skipped=True,
        skip_reason="cancelled",
        error=SKIPPED_ERROR,
        record_id=event.record.id,
        input_metadata=event.record.metadata or None,
        attempts=0,
        finished_at=time.time() if now is None else now,
    )


class CancelledJobs:
    """The ids of the cancelled jobs this worker has seen on `batch.jobs`.

    `caught_up` is set once the reader has read the topic up to where it ended when the
    worker started: until then no record can be judged, so none starts.
    """

    def __init__(self) -> None:
        self._cancelled: dict[str, float] = {}
        self._waiters: dict[str, asyncio.Event] = {}
        self._waiting: dict[str, int] = {}
        self.caught_up = asyncio.Event()

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._cancelled

    def __len__(self) -> int:
        return len(self._cancelled)

    def cancelled_at(self, job_id: str) -> float | None:
        """When this worker learned of the cancel (Unix seconds), None if it has not."""
        return self._cancelled.get(job_id)

    def add(self, job_id: str, now: float | None = None) -> bool:
        """Mark the job cancelled; True the first time. Wakes every record waiting on it."""
        if job_id in self._cancelled:
            return False
        self._cancelled[job_id] = time.time() if now is None else now
        event = self._waiters.pop(job_id, None)
        if event is not None:
            event.set()
        return True

    async def wait(self, job_id: str) -> None:
        """Return once the job is cancelled (at once if it already is)."""
        if job_id in self._cancelled:
            return
        event = self._waiters.setdefault(job_id, asyncio.Event())
        self._waiting[job_id] = self._waiting.get(job_id, 0) + 1
        try:
            await event.wait()
        finally:
            left = self._waiting.pop(job_id) - 1
            if left:
                self._waiting[job_id] = left
            elif self._waiters.get(job_id) is event:
                del self._waiters[job_id]

    async def should_skip(self, job_id: str) -> bool:
        """Whether a record of this job must be skipped; waits until the reader caught up."""
        await self.caught_up.wait()
        return job_id in self._cancelled


@dataclass(eq=False)
class RecordScope:
    """One record on its way to the provider: its job, the grants it took, the calls that
    left the process and those waiting for their answer now (`sending`); `still_ours`
    (None: always) says whether the worker still owns the record's partition."""

    job_id: str
    still_ours: Callable[[], bool] | None = None
    grants: int = 0
    calls: int = 0
    sending: int = 0


_current_record: ContextVar[RecordScope | None] = ContextVar("current_record", default=None)


@contextmanager
def record_scope(
    job_id: str, still_ours: Callable[[], bool] | None = None
) -> Iterator[RecordScope]:
    """Rate-budget grants taken inside belong to a record of `job_id` (see CancellableBudget);
    its first call does not leave the process once `still_ours()` is false
    (SkipCancelledTransport raises RevokedBeforeCall). Yields the record's scope."""
    scope = RecordScope(job_id, still_ours)
    token = _current_record.set(scope)
    try:
        yield scope
    finally:
        _current_record.reset(token)


class CancellableBudget(RateBudget):
    """The rate budget, for records of jobs that can be cancelled.

    A record's first grant is refused (CancelledBeforeCall) when its job is cancelled
    before or while it waits: the wait ends at once and no slot is used. Later grants of
    the same record (retries of a call already made) are not refused. `on_wait` gets the
    seconds every grant waited, for the metrics.
    """

    def __init__(
        self,
        *args: Any,
        cancelled: CancelledJobs,
        on_wait: Callable[[float], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._cancelled = cancelled
        self._on_wait = on_wait

    async def acquire(self, input_tokens: int = 0, output_tokens: int = 0) -> Grant:
        started = time.monotonic()
        scope = _current_record.get()
        if scope is None or scope.grants > 0:
            grant = await super().acquire(input_tokens, output_tokens)
        else:
            grant = await self._first_grant(scope.job_id, input_tokens, output_tokens)
            scope.grants += 1
        if self._on_wait is not None:
            self._on_wait(time.monotonic() - started)
        return grant

    async def _first_grant(self, job_id: str, input_tokens: int, output_tokens: int) -> Grant:
        if job_id in self._cancelled:
            raise CancelledBeforeCall(job_id)
        # A slot free at once needs no race with the cancel (two tasks and a wait per record
        # when the budget does not pace, e.g. at a high tier with calls in flight to spare).
        grant = self.grant_at_once(input_tokens, output_tokens)
        if grant is not None:
            return grant
        granting = asyncio.ensure_future(super().acquire(input_tokens, output_tokens))
        cancelling = asyncio.ensure_future(self._cancelled.wait(job_id))
        try:
            await asyncio.wait({granting, cancelling}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (granting, cancelling):
                if not task.done():
                    task.cancel()
            # Let the cancelled acquire leave the budget's lock before anyone else asks.
            for task in (granting, cancelling):
                with suppress(asyncio.CancelledError):
                    await task
        if job_id in self._cancelled:
            # Cancelled while waiting (a slot that came in the same instant goes unused).
            raise CancelledBeforeCall(job_id)
        return granting.result()


class SkipCancelledTransport(httpx2.AsyncBaseTransport):
    """The provider client's transport: a record's first call does not leave the process
    when its job was cancelled since it got its slot (CancelledBeforeCall instead), or when
    its partition was revoked from this worker meanwhile (RevokedBeforeCall)."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, cancelled: CancelledJobs) -> None:
        self._inner = inner
        self._cancelled = cancelled

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        scope = _current_record.get()
        if scope is not None and request.url.path.endswith("/v1/messages"):
            if scope.calls == 0 and scope.job_id in self._cancelled:
                raise CancelledBeforeCall(scope.job_id)
            if scope.calls == 0 and scope.still_ours is not None and not scope.still_ours():
                raise RevokedBeforeCall(scope.job_id)
            scope.calls += 1
            scope.sending += 1
            try:
                return await self._inner.handle_async_request(request)
            finally:
                scope.sending -= 1
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()
