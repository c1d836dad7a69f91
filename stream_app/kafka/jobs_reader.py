"""Every worker reads all of `batch.jobs` for cancellations and each job's terms (task,
spending cap), and all of `batch.results` for the spend of capped jobs, with a consumer of
its own.

Why its own consumer, outside the consumer group: the group gives each `batch.jobs`
partition to one worker, but every worker may hold queued records of any job (records of
one job spread over all `batch.records` partitions), so every worker must see every
cancel. A consumer without a group is assigned every partition, takes part in no
rebalance (it keeps reading while the group rebalances) and commits nothing; at start it
reads the topic from the beginning, and records wait until it has caught up, so a worker
that starts (or restarts, or takes over partitions) knows every earlier cancel before it
judges a record. A fetch returns as soon as a cancel is written, so workers learn of it
within milliseconds. The same reader feeds the worker's one directory of jobs
(`stream_app.jobs.job_rules.JobRules`): each job's owner and priority (for the scheduler,
when a record does not carry them), task and spending cap.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from schemas import JobCancelled, JobCreated, parse_job_event
from stream_app.core.logs import get_logger
from stream_app.jobs.cancellation import CancelledJobs
from stream_app.jobs.job_rules import JobRules

log = get_logger(__name__)

_RETRY_SECONDS = 1.0


class JobsReader:
    """Feeds `CancelledJobs` and `JobRules` from `batch.jobs` (and `JobRules` from
    `batch.results`, for the spend of capped jobs) until stopped."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        partitions: int,
        cancelled: CancelledJobs,
        rules: JobRules,
        *,
        results_topic: str | None = None,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._topic = topic
        self._rules = rules
        self._results_topic = results_topic
        # The service declared the topic with this many partitions before starting.
        self._partitions = partitions
        self._cancelled = cancelled
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="jobs-reader")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        # A broker that goes away and comes back: start over (reading again is idempotent).
        while True:
            try:
                await self._read()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker's errors; the reader starts over
                log.warning("batch.jobs reader restarts", reason=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(_RETRY_SECONDS)

    async def _read(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            assigned = [TopicPartition(self._topic, p) for p in range(self._partitions)]
            if self._results_topic is not None:
                assigned += [
                    TopicPartition(self._results_topic, p) for p in range(self._partitions)
                ]
            consumer.assign(assigned)
            await consumer.seek_to_beginning(*assigned)
            ends = await consumer.end_offsets(assigned)
            # Job events and results are caught up apart: only records of capped jobs
            # wait for the results (a long history of results delays nothing else).
            pending = {tp for tp, end in ends.items() if end > 0}
            while True:
                batches = await consumer.getmany(timeout_ms=500)
                for tp, messages in batches.items():
                    for message in messages:
                        if tp.topic == self._topic:
                            self._apply(message.value)
                        elif message.key:
                            self._rules.observe_result(
                                message.key.decode(errors="replace"), message.value
                            )
                if pending:
                    pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
                if not any(tp.topic == self._topic for tp in pending):
                    if not self._cancelled.caught_up.is_set():
                        self._cancelled.caught_up.set()
                        log.info(
                            "cancellations read", topic=self._topic, cancelled=len(self._cancelled)
                        )
                if not pending:
                    self._rules.results_caught_up.set()
        finally:
            await consumer.stop()

    def _apply(self, value: bytes | None) -> None:
        if not value:
            return
        try:
            event = parse_job_event(value)
        except ValidationError as exc:
            # The aggregate agent dead-letters it; records of a refused job must not run
            # with terms it never asked for.
            self._refused(value, exc)
            return
        if isinstance(event, JobCreated):
            self._rules.learn(event)
            return
        if isinstance(event, JobCancelled) and self._cancelled.add(event.job_id):
            log.info(
                "job cancelled: its records that have not started are skipped", job_id=event.job_id
            )

    def _refused(self, value: bytes, exc: ValidationError) -> None:
        try:
            data = orjson.loads(value)
        except orjson.JSONDecodeError:
            return
        if not isinstance(data, dict) or data.get("type", "created") != "created":
            return
        job_id = data.get("job_id")
        if isinstance(job_id, str) and job_id:
            first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid"}
            where = ".".join(str(p) for p in first["loc"]) or "event"
            self._rules.reject(job_id, f"invalid job event: {where}: {first['msg']}")
