"""What the aggregate agent does with each event of `batch.jobs` and `batch.results` (one
stream: both topics are keyed by job_id and co-partitioned, so a job's events and outcomes
reach the same worker in order): fold it into the job-status and record-results tables
(stream_app.jobs.aggregation), tell live readers (job feed), mirror it to SQLite."""

from __future__ import annotations

import time

from faust.types import EventT
from pydantic import ValidationError

from schemas import JobCancelled, ResultEvent, parse_job_event
from stream_app.core.logs import get_logger
from stream_app.jobs.aggregation import Applied, JobLedger
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
    ) -> None:
        self._jobs_topic = jobs_topic
        self._ledger = ledger
        self._feed = feed
        self._mirror = mirror
        self._dead_letters = dead_letters

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
        if isinstance(job_event, JobCancelled):
            job = self._ledger.record_cancelled(job_event, now)
            log.info("job status cancelled", job_id=job.job_id, partition=event.message.partition)
        else:
            job = self._ledger.record_created(job_event, now)
        self._feed.publish(job)
        if self._mirror is not None:
            self._mirror.save_job(job)

    async def _apply_result_event(self, event: EventT, now: float) -> None:
        try:
            result = ResultEvent.model_validate_json(payload(event))
        except ValidationError as exc:
            await self._dead_letters.send(event, f"invalid result event: {validation_summary(exc)}")
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
                self._mirror.save_result(result)
            self._mirror.save_job(job)
