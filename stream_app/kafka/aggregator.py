"""What the aggregate agent does with each event of `batch.jobs` and `batch.results` (one
stream: both topics are keyed by job_id and co-partitioned, so a job's events and outcomes
reach the same worker in order): fold it into the job-status and record-results tables
(stream_app.jobs.aggregation), tell live readers (job feed), mirror it to SQLite.

A `deleted` event removes the job from both tables (tombstones in their changelogs); an
outcome that arrives after it (a call that was in flight) is dropped, so nothing brings a
deleted job back. After a restart the agent resumes from its committed offset while the
worker's batch.jobs reader replays every deletion: an outcome of a job the tables do not
hold waits until that reader has caught up, then is judged."""

from __future__ import annotations

import time

from faust.types import EventT
from pydantic import ValidationError

from schemas import JobCancelled, JobCreated, JobDeleted, JobRetried, ResultEvent, parse_job_event
from stream_app.core.logs import get_logger
from stream_app.jobs.aggregation import Applied, JobLedger
from stream_app.jobs.cancellation import CancelledJobs
from stream_app.jobs.deletion import DeletedJobs
from stream_app.jobs.mirror import SqliteMirror
from stream_app.kafka.job_feed import JobFeed
from stream_app.kafka.messages import DeadLetters, payload, validation_summary

log = get_logger(__name__)


class Aggregator:
    """Applies job events and outcomes to the ledger; unreadable ones are dead-lettered."""

    def __init__(
        self,
        *,
        jobs_topic: str,
        ledger: JobLedger,
        feed: JobFeed,
        mirror: SqliteMirror | None,
        dead_letters: DeadLetters,
        deleted: DeletedJobs | None = None,
        cancelled: CancelledJobs | None = None,
    ) -> None:
        self._jobs_topic = jobs_topic
        self._ledger = ledger
        self._feed = feed
        self._mirror = mirror
        self._dead_letters = dead_letters
        self._deleted = deleted if deleted is not None else DeletedJobs()
        # Its `caught_up` says the worker's batch.jobs reader knows every earlier deletion.
        self._cancelled = cancelled

    async def apply(self, event: EventT) -> None:
        now = time.time()
        if event.message.topic == self._jobs_topic:
            await self._apply_job_event(event, now)
        else:
            await self._apply_result_event(event, now)

    async def _apply_job_event(self, event: EventT, now: float) -> None:
        try:
            job_event = parse_job_event(payload(event))
        except ValidationError as exc:
            await self._dead_letters.send(event, f"invalid job event: {validation_summary(exc)}")
            return
        if isinstance(job_event, JobDeleted):
            removed = self._ledger.record_deleted(job_event.job_id)
            try:
                self._deleted.add(job_event.job_id, now)
            except Exception:  # a local store's purge; the job's tables are clean already
                log.exception(
                    "could not remove a deleted job's local data", job_id=job_event.job_id
                )
            log.info(
                "job deleted",
                job_id=job_event.job_id,
                results_removed=removed,
                reason=job_event.reason,
                partition=event.message.partition,
            )
            return
        if job_event.job_id in self._deleted:
            return
        if isinstance(job_event, JobCancelled):
            job = self._ledger.record_cancelled(job_event, now)
            log.info("job status cancelled", job_id=job.job_id, partition=event.message.partition)
        elif isinstance(job_event, JobCreated):
            job = self._ledger.record_created(job_event, now)
        elif isinstance(job_event, JobRetried):
            retried = self._ledger.record_retried(job_event, now)
            if retried is None:
                return
            job = retried
        else:
            return
        self._feed.publish(job)
        if self._mirror is not None:
            self._mirror.save_job(job)

    async def _apply_result_event(self, event: EventT, now: float) -> None:
        try:
            result = ResultEvent.model_validate_json(payload(event))
        except ValidationError as exc:
            await self._dead_letters.send(event, f"invalid result event: {validation_summary(exc)}")
            return
        if await self._deleted_job(result.job_id):
            return
        applied, job = self._ledger.record_result(result, now, offset=event.message.offset)
        if applied is Applied.OUT_OF_RANGE:
            await self._dead_letters.send(
                event, f"index {result.index} is outside the job's records"
            )
            return
        if applied is Applied.DUPLICATE and job is not None:
            log.warning("recounted job after redelivery", job=job.job_id, outcomes=job.outcomes)
        if job is not None:
            counted = applied is Applied.COUNTED and self._feed.watching(job.job_id)
            self._feed.publish(
                job, self._ledger.result(job.job_id, result.index) if counted else None
            )
        if self._mirror is not None and job is not None:
            if applied is Applied.COUNTED:
                stored = self._ledger.result(result.job_id, result.index)
                self._mirror.save_result(
                    ResultEvent.model_validate(stored) if result.retry and stored else result
                )
            self._mirror.save_job(job)

    async def _deleted_job(self, job_id: str) -> bool:
        """True when the job was deleted (its outcome is dropped). A job the tables do not
        hold is judged only once the batch.jobs reader has read every earlier deletion."""
        if job_id in self._deleted:
            return True
        # Once the reader has caught up there is nothing to wait for: the job's status is
        # not read (a table read and its decoding per outcome).
        caught_up = self._cancelled.caught_up if self._cancelled is not None else None
        if caught_up is not None and not caught_up.is_set() and self._ledger.job(job_id) is None:
            await caught_up.wait()
        return job_id in self._deleted
