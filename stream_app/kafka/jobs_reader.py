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
judges a record. A fetch returns at most 0.1 s after a cancel is written
(stream_app.kafka.fetching), so workers learn of it within a tenth of a second. The same
reader feeds the worker's one directory of jobs (`stream_app.jobs.job_rules.JobRules`):
each job's owner and priority (for the scheduler, when a record does not carry them), task
and spending cap.
"""

from __future__ import annotations

import asyncio

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from schemas import JobCancelled, JobCreated, JobDeleted, parse_job_event
from stream_app.core.logs import get_logger
from stream_app.jobs.cancellation import CancelledJobs
from stream_app.jobs.deletion import DeletedJobs
from stream_app.jobs.idempotency import IdempotencyKeys
from stream_app.jobs.job_rules import JobRules
from stream_app.kafka.groupless import (
    FoldReader,
    assign_from_start,
    every_partition,
    groupless_consumer,
)

log = get_logger(__name__)


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
        deleted: DeletedJobs | None = None,
        keys: IdempotencyKeys | None = None,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._topic = topic
        self._rules = rules
        self._results_topic = results_topic
        # The service declared the topic with this many partitions before starting.
        self._partitions = partitions
        self._cancelled = cancelled
        self._deleted = deleted
        self._keys = keys
        self._consumer: AIOKafkaConsumer | None = None
        # batch.jobs partition -> the offset after the last event applied.
        self._read_to: dict[int, int] = {}
        # A broker that goes away and comes back: start over (reading again is idempotent).
        self._reader = FoldReader("batch.jobs reader", self._read)

    async def start(self) -> None:
        self._reader.start()

    async def stop(self) -> None:
        await self._reader.stop()

    async def _read(self) -> None:
        async with groupless_consumer(self._bootstrap, batched=True) as consumer:
            self._consumer = consumer
            try:
                await self._read_with(consumer)
            finally:
                self._consumer = None

    async def _read_with(self, consumer: AIOKafkaConsumer) -> None:
        topics = [self._topic]
        if self._results_topic is not None:
            topics.append(self._results_topic)
        assigned = every_partition(topics, self._partitions)
        await assign_from_start(consumer, assigned)
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
                        self._read_to[tp.partition] = message.offset + 1
                    elif message.key:
                        self._rules.observe_result(
                            message.key.decode(errors="replace"),
                            message.value,
                            (tp.partition, message.offset),
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

    async def read_to_end(self, timeout: float = 5.0) -> bool:
        """Wait until this reader has applied every event `batch.jobs` held when called
        (read-your-writes across instances: a job another instance has just created is
        known here afterwards). False when it could not within `timeout` seconds."""
        deadline = asyncio.get_running_loop().time() + timeout
        consumer = self._consumer
        while consumer is None:
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.05)
            consumer = self._consumer
        tps = [TopicPartition(self._topic, p) for p in range(self._partitions)]
        try:
            ends = await asyncio.wait_for(consumer.end_offsets(tps), timeout)
        except Exception as exc:  # the broker did not answer: the caller decides
            log.warning("could not read batch.jobs end offsets", error=type(exc).__name__)
            return False
        while any(self._read_to.get(tp.partition, 0) < ends[tp] for tp in tps):
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.005)
        return True

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
            if self._keys is not None and event.idempotency_key and event.request_hash:
                self._keys.remember(
                    event.owner,
                    event.idempotency_key,
                    event.job_id,
                    event.request_hash,
                    event.total_records,
                    event.created_at or 0.0,
                )
            return
        if isinstance(event, JobDeleted):
            if self._keys is not None:
                self._keys.forget_job(event.job_id)
            # A deleted job's records that have not started are skipped, as if cancelled;
            # the listeners remove what this worker keeps of it.
            self._cancelled.add(event.job_id)
            if self._deleted is not None:
                try:
                    self._deleted.add(event.job_id)
                except Exception:
                    log.exception(
                        "could not remove a deleted job's local data", job_id=event.job_id
                    )
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
