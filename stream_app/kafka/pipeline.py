"""The worker's Faust pipeline: its topics, its three tables and its three agents, and the
`Pipeline` handle the service and the API use (publishing jobs and cancels, reading jobs and
results). The agents are a few lines each; what they do lives in plain objects:
`RecordHandler` (the process agents, one per record topic: stream_app.kafka.record_handler,
stream_app.kafka.record_topics) and `Aggregator` (aggregate agent, stream_app.kafka.aggregator).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import faust
import orjson
from faust.types import EventT, TableT

from schemas import JobCancelled, JobCreated, JobDeleted, JobRetried
from stream_app.core.exceptions import BrokerUnavailable
from stream_app.core.logs import get_logger
from stream_app.core.metrics import WorkerMetrics
from stream_app.core.settings import Settings
from stream_app.jobs.aggregation import JobLedger, JobStatus, apply_created, result_key
from stream_app.jobs.cancellation import CancelledJobs
from stream_app.jobs.deletion import DeletedJobs
from stream_app.jobs.job_rules import JobRules
from stream_app.jobs.mirror import SqliteMirror
from stream_app.jobs.processing import IntakeGate, RecordProcessor
from stream_app.jobs.scheduler import FairScheduler, FifoScheduler, Scheduler, live_queue
from stream_app.kafka.aggregator import Aggregator
from stream_app.kafka.batch_lane import BatchLane, install_batch_lane, lane_topic_name
from stream_app.kafka.bulk_publish import publish_keyed
from stream_app.kafka.faust_app import build_app, install_repairs, make_table, raw_topic
from stream_app.kafka.faust_fixes import is_current
from stream_app.kafka.fencing import fence_table_writes
from stream_app.kafka.job_audit import audit_quiet_jobs
from stream_app.kafka.job_feed import JobFeed
from stream_app.kafka.local_state import discard_tables
from stream_app.kafka.lookahead import LookAhead
from stream_app.kafka.messages import DeadLetters, dump
from stream_app.kafka.purge import purge_job
from stream_app.kafka.record_handler import RecordHandler
from stream_app.kafka.record_reader import read_back
from stream_app.kafka.record_topics import record_topics, topic_for_job
from stream_app.kafka.replicas import active_partitions, stored_results, stored_values
from stream_app.kafka.topics import CHANGELOG_CONFIG
from stream_app.provider.batches import BatchClient
from stream_app.provider.pricing import Price

log = get_logger(__name__)

JOB_TABLE = "job-status"
RESULT_TABLE = "record-results"
PROCESSED_TABLE = "processed-records"
# Jobs published here and not yet in the job-status table that this instance remembers.
ANNOUNCED_KEPT = 1024
# How long a revoke waits for the calls already with Claude to send their outcomes (at
# most a third of the rebalance timeout): what finishes within it is written while the
# partition is still this worker's, and its next owner does not pay for it again.
HANDOVER_WAIT_SECONDS = 10.0


def record_key(job_id: str, index: int) -> bytes:
    # Records of one job are keyed per record so that they spread over all partitions.
    return result_key(job_id, index).encode()


@dataclass
class Pipeline:
    settings: Settings
    app: faust.App
    jobs_topic: faust.TopicT
    records_topic: faust.TopicT
    results_topic: faust.TopicT
    dlq_topic: faust.TopicT
    tables: list[TableT]
    ledger: JobLedger
    # Where the job-status table lives: which worker owns a job follows its partitions.
    job_changelog: str
    cancelled: CancelledJobs = field(default_factory=CancelledJobs)
    feed: JobFeed = field(default_factory=JobFeed)
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)
    # Records read ahead in batch.records, waiting for a call slot (stream_app.kafka.lookahead).
    lookahead: LookAhead[EventT] | None = None
    # Jobs this instance published whose `created` event the aggregate agent has not
    # applied yet (it can lag seconds behind a busy batch.results), so that a status read
    # right after the 202 finds the job: read-your-writes (see `job`).
    announced: OrderedDict[str, JobStatus] = field(default_factory=OrderedDict)
    # The process agent's logic (set once its agent is built).
    records: RecordHandler | None = None
    # Jobs deleted on batch.jobs (fed by the worker's batch.jobs reader): never answered.
    deleted: DeletedJobs = field(default_factory=DeletedJobs)
    # The batch lane (stream_app.kafka.batch_lane), when a batch client was given.
    lane: BatchLane | None = None

    @property
    def outcomes_sent(self) -> int:
        """Outcomes this worker sent to `batch.results` (new or re-sent known ones), and
        records handed over to the batch lane: the worker's progress."""
        sent = self.records.outcomes_sent if self.records is not None else 0
        if self.lane is not None:
            sent += self.lane.outcomes_sent + self.lane.handed_over
        return sent

    @property
    def topic_partitions(self) -> dict[str, int]:
        """Every topic the service uses, with the partition count it must have."""
        s = self.settings
        names = [s.topic_jobs, *record_topics(s), s.topic_results, s.topic_dlq]
        names += [lane_topic_name(s)] if self.lane is not None else []
        names += [table.changelog_topic.get_topic_name() for table in self.tables]
        return {name: s.kafka_partitions for name in names}

    @property
    def topic_configs(self) -> dict[str, Mapping[str, str]]:
        """Topic configs the service sets when it creates a topic: the changelogs compacted."""
        return {topic: CHANGELOG_CONFIG for topic in self.changelogs.values()}

    @property
    def tabledir(self) -> Path:
        return Path(self.app.conf.tabledir)

    @property
    def changelogs(self) -> dict[str, str]:
        """table name -> changelog topic."""
        return {table.name: table.changelog_topic.get_topic_name() for table in self.tables}

    def discard_stale_state(self, created_topics: set[str]) -> list[str]:
        """Drop local table files whose changelog topic did not exist until now.

        That happens when the broker lost its data (the embedded Tansu broker stopped):
        the local state could never be reconciled with an empty changelog, and Faust would
        refuse to recover. The SQLite mirror, when configured, keeps the history.
        """
        lost = [name for name, topic in self.changelogs.items() if topic in created_topics]
        dropped = discard_tables(self.tabledir, lost)
        if dropped:
            log.warning(
                "changelog topics are new but local table state existed: the broker lost its "
                "data; discarded the local state",
                dropped=",".join(dropped),
            )
        return dropped

    def job(self, job_id: str) -> JobStatus | None:
        """The job's status as stored; or, for a job this instance has just published and
        whose table partition it holds, `pending` as announced until the aggregate agent
        has applied its `created` event. None for a deleted job."""
        if job_id in self.deleted:
            self.announced.pop(job_id, None)
            return None
        job = self.ledger.job(job_id)
        if job is not None:
            self.announced.pop(job_id, None)
            return job
        pending = self.announced.get(job_id)
        if pending is not None and self.owns_job(job_id):
            return pending
        return None

    def job_partition(self, job_id: str) -> int:
        """The partition of `batch.jobs` (and of the job tables) that holds this job."""
        # Faust's router.key_store() hashes the key as the changelog topic serializes it (as
        # JSON, whatever the table schema says), not as batch.jobs was partitioned (raw
        # bytes); hash it as it was published instead.
        topic = self.settings.topic_jobs
        return int(self.app.producer.key_partition(topic, job_id.encode()).partition)

    def owns_job(self, job_id: str) -> bool:
        """Whether this worker owns the job's partition now: what it holds of the job is
        current (otherwise it is a standby replica, or nothing)."""
        return self.job_partition(job_id) in self.owned_job_partitions()

    def jobs(self) -> list[JobStatus]:
        return self.ledger.jobs()

    def held_jobs(self) -> list[JobStatus]:
        """Every job whose status this worker holds: on the partitions it owns and on
        those it keeps a standby replica of (TABLE_STANDBY_REPLICAS)."""
        return [JobStatus.model_validate(raw) for raw in stored_values(self.tables[0])]

    def owned_job_partitions(self) -> set[int]:
        """The job-status partitions this worker owns now (its own answers are current)."""
        return active_partitions(self.tables[0])

    def result(self, job_id: str, index: int) -> dict[str, Any] | None:
        return self.ledger.result(job_id, index)

    def stored_results(self, job_id: str) -> Iterator[list[bytes]] | None:
        """Every result of the job held locally (owned or standby partition), as stored
        (JSON), in no particular order, in chunks (give the event loop back between them);
        None when the store cannot list them (the memory store: look each index up with
        `result`). Reads only the results that exist, so it costs nothing at the start of
        a 100,000-record job."""
        return stored_results(self.tables[1], job_id)

    async def publish_job(self, created: JobCreated, records: Iterable[bytes]) -> None:
        """What an upstream producer does, all or nothing: send the job's records to
        `batch.records`, or `batch.records.bulk` for a big job (stream_app.kafka.record_topics)
        (`records`: each record's JSON object, in index order), wait until the broker has
        acknowledged all of them (acks=all), and only then announce the job on
        `batch.jobs` (its `created` event) and wait for that acknowledgement too.

        The records carry `created_follows: true`: a worker holds each one until the
        announcement comes, and dead-letters it, without a call, if none does (the submit
        failed halfway: stream_app.jobs.job_rules). So a job either exists whole or not at all.

        The records go in record batches built per partition (stream_app.kafka.bulk_publish):
        the memory held is a few batches per partition, not the job.

        Raises BrokerUnavailable when that takes longer than KAFKA_PUBLISH_TIMEOUT_SECONDS
        (the broker is down or unreachable); the job was then not announced.
        """
        job_id = created.job_id
        # Each record carries its job's owner and priority, for the scheduler of whichever
        # worker reads it, and a batch-lane job's lane (handed over before the job's
        # `created` event is read: stream_app.kafka.batch_lane).
        scheduling = created.model_dump(include={"owner", "priority"}, exclude_none=True)
        scheduling["created_follows"] = True
        if created.lane == "batch":
            scheduling["lane"] = "batch"

        async def send_all() -> None:
            # Straight to aiokafka, in record batches built per partition (the bytes are
            # final; Faust's per-message wrapper and aiokafka's per-record send cost more
            # than the records: stream_app.kafka.bulk_publish). Every batch's delivery is awaited,
            # so a lost one raises and the job is not announced.
            producer = self.app.producer
            # A big job goes to the bulk record topic, so that it never stands in a
            # partition between a small job and the workers (stream_app.kafka.record_topics).
            topic = topic_for_job(self.settings, created.total_records)

            def keyed() -> Iterator[tuple[bytes, bytes]]:
                for index, record in enumerate(records):
                    value = orjson.dumps(
                        {
                            "job_id": job_id,
                            "index": index,
                            "record": orjson.Fragment(record),
                            **scheduling,
                        }
                    )
                    yield record_key(job_id, index), value

            await publish_keyed(cast(Any, producer)._ensure_producer(), topic, keyed())
            # Every record is on Kafka: now the job exists.
            jobs_topic = self.jobs_topic.get_topic_name()
            announced = await producer.send(
                jobs_topic, job_id.encode(), dump(created), None, None, None
            )
            await announced
            self.announced[job_id] = apply_created(None, created, time.time())
            while len(self.announced) > ANNOUNCED_KEPT:
                self.announced.popitem(last=False)

        await self._within_publish_timeout(send_all(), f"job {job_id}")

    async def publish_cancel(self, job_id: str) -> None:
        """Announce on `batch.jobs` that the job is cancelled (every worker reads it).
        Raises BrokerUnavailable as publish_job does."""
        event = JobCancelled(job_id=job_id, cancelled_at=time.time())

        async def send() -> None:
            await self.jobs_topic.send(key=job_id.encode(), value=dump(event))
            await self.app.producer.flush()

        await self._within_publish_timeout(send(), f"cancel of job {job_id}")

    async def publish_delete(self, job_id: str, reason: str = "request") -> None:
        """Announce on `batch.jobs` that the job is deleted (every worker reads it and
        removes what it keeps of the job). `reason`: "request" or "retention". Raises
        BrokerUnavailable as publish_job does."""
        event = JobDeleted(job_id=job_id, deleted_at=time.time(), reason=reason)  # type: ignore[arg-type]

        async def send() -> None:
            await self.jobs_topic.send(key=job_id.encode(), value=dump(event))
            await self.app.producer.flush()

        await self._within_publish_timeout(send(), f"deletion of job {job_id}")

    async def read_records(
        self, where: set[tuple[int, int]], topic: str | None = None
    ) -> dict[tuple[int, int], bytes]:
        """The messages of `topic` (`batch.records` by default; a big job's records are on
        `batch.records.bulk`) at these (partition, offset) pairs that it still holds
        (stream_app.kafka.record_reader). Raises BrokerUnavailable when the broker does not
        answer within KAFKA_PUBLISH_TIMEOUT_SECONDS."""
        wanted: dict[int, list[int]] = {}
        for partition, offset in where:
            wanted.setdefault(partition, []).append(offset)
        timeout = self.settings.kafka_publish_timeout_seconds
        try:
            return await read_back(
                cast(str, self.settings.kafka_bootstrap_servers),
                topic or self.settings.topic_records,
                wanted,
                timeout,
            )
        except TimeoutError:
            raise BrokerUnavailable(
                f"the broker did not return the records within {timeout:g} s"
            ) from None

    async def read_job_records(
        self, job_id: str, positions: Mapping[int, tuple[int, int]]
    ) -> dict[int, bytes]:
        """index -> the record message of the job's record `index`, read back at its
        (partition, offset) in `positions`: from `batch.records`, else `batch.records.bulk`
        (where a big job's records are; an outcome says where, not on which of the two). A
        message is taken only if it is that very record (its job_id and index): the same
        position on the other topic holds another job's record. Records the topics no
        longer hold are left out. Raises BrokerUnavailable as read_records does."""

        def is_it(value: bytes, index: int) -> bool:
            try:
                data = orjson.loads(value)
            except orjson.JSONDecodeError:
                return False
            return (
                isinstance(data, dict)
                and data.get("job_id") == job_id
                and data.get("index") == index
            )

        found: dict[int, bytes] = {}
        for topic in (self.settings.topic_records, self.settings.topic_records_bulk):
            rest = {i: where for i, where in positions.items() if i not in found}
            if not rest:
                break
            read = await self.read_records(set(rest.values()), topic=topic)
            for index, where in rest.items():
                value = read.get(where)
                if value is not None and is_it(value, index):
                    found[index] = value
        return found

    async def publish_retry(
        self, job_id: str, retry: int, records: list[tuple[int, bytes]]
    ) -> None:
        """Retry round `retry` of the job: announce it on `batch.jobs` (its indexes), then
        send each record again to `batch.records` (`records`: (index, the record message
        as read back)) marked with the round, under its original key (so on its original
        partition). Raises BrokerUnavailable as publish_job does."""
        event = JobRetried(
            job_id=job_id, retry=retry, indexes=[i for i, _ in records], retried_at=time.time()
        )

        def keyed() -> Iterator[tuple[bytes, bytes]]:
            for index, value in records:
                message = orjson.loads(value)
                message.pop("created_follows", None)
                message["retry"] = retry
                yield record_key(job_id, index), orjson.dumps(message)

        async def send() -> None:
            await self.jobs_topic.send(key=job_id.encode(), value=dump(event))
            await self.app.producer.flush()
            producer = cast(Any, self.app.producer)._ensure_producer()
            await publish_keyed(producer, self.records_topic.get_topic_name(), keyed())

        await self._within_publish_timeout(send(), f"retry of job {job_id}")

    def forget_deleted(self, job_id: str) -> None:
        """Remove what this worker keeps of a deleted job outside the job tables (which the
        aggregate agent empties): its processed-records entries on the partitions this
        worker owns (stream_app.kafka.purge), and its read-your-writes memory."""
        self.announced.pop(job_id, None)
        removed = purge_job(self.tables[2], job_id, self.settings.kafka_partitions)
        if removed:
            log.info("deleted job's processed records removed", job_id=job_id, records=removed)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until the broker acknowledged everything produced (at shutdown). Raises
        BrokerUnavailable after `timeout` seconds (default KAFKA_PUBLISH_TIMEOUT_SECONDS)."""
        await self._within_publish_timeout(self.app.producer.flush(), "the final flush", timeout)

    async def _within_publish_timeout(
        self, sending: Awaitable[None], what: str, timeout: float | None = None
    ) -> None:
        setting = " (KAFKA_PUBLISH_TIMEOUT_SECONDS)" if timeout is None else ""
        if timeout is None:
            timeout = self.settings.kafka_publish_timeout_seconds
        try:
            await asyncio.wait_for(sending, timeout)
        except TimeoutError:
            raise BrokerUnavailable(
                f"the broker did not acknowledge {what} within {timeout:g} s{setting}"
            ) from None


def build_pipeline(
    settings: Settings,
    *,
    bootstrap_servers: str,
    processor: RecordProcessor,
    price: Price,
    mirror: SqliteMirror | None,
    canonical_url: str,
    gate: IntakeGate,
    rules: JobRules,
    cancelled: CancelledJobs | None = None,
    feed: JobFeed | None = None,
    metrics: WorkerMetrics | None = None,
    deleted: DeletedJobs | None = None,
    batch_client: BatchClient | None = None,
) -> Pipeline:
    """The Faust app with its topics, tables, agents and rebalance hooks, wired to the
    given plain objects (nothing starts until the app runs)."""
    s = settings
    cancelled = cancelled if cancelled is not None else CancelledJobs()
    feed = feed if feed is not None else JobFeed()
    metrics = metrics if metrics is not None else WorkerMetrics()
    deleted = deleted if deleted is not None else DeletedJobs()
    app = build_app(s, bootstrap_servers=bootstrap_servers, canonical_url=canonical_url)
    partitions = s.kafka_partitions
    jobs_topic = raw_topic(app, s.topic_jobs, partitions=partitions)
    records_topic = raw_topic(app, s.topic_records, partitions=partitions)
    bulk_topic = raw_topic(app, s.topic_records_bulk, partitions=partitions)
    results_topic = raw_topic(app, s.topic_results, partitions=partitions)
    dlq_topic = raw_topic(app, s.topic_dlq, partitions=partitions)
    # batch.jobs and batch.results share key (job_id) and partition count, so both land on
    # the same partition, and the tables' changelogs follow that partition.
    job_events = raw_topic(app, s.topic_jobs, s.topic_results, partitions=partitions)
    job_table = make_table(app, s, JOB_TABLE)
    result_table = make_table(app, s, RESULT_TABLE)
    processed = make_table(app, s, PROCESSED_TABLE)
    ledger = JobLedger(job_table, result_table, price, rules.price_of)
    pipeline = Pipeline(
        s,
        app,
        jobs_topic,
        records_topic,
        results_topic,
        dlq_topic,
        [job_table, result_table, processed],
        ledger,
        job_table.changelog_topic.get_topic_name(),
        cancelled,
        feed,
        metrics,
        deleted=deleted,
    )
    deleted.on_deleted(pipeline.forget_deleted)
    if mirror is not None:
        deleted.on_deleted(mirror.delete_job)
    scheduler: Scheduler[EventT] = (
        FairScheduler() if s.batch_scheduling == "fair" else FifoScheduler()
    )
    lookahead = pipeline.lookahead = LookAhead(
        scheduler,
        max_records=s.batch_lookahead_records,
        max_bytes=s.batch_lookahead_bytes,
        lanes=record_topics(s),
    )
    dead_letters = DeadLetters(dlq_topic)
    records = pipeline.records = RecordHandler(
        s,
        processor=processor,
        rules=rules,
        gate=gate,
        cancelled=cancelled,
        processed=processed,
        results_topic=results_topic,
        ledger=ledger,
        metrics=metrics,
        dead_letters=dead_letters,
        is_current=lambda message: is_current(app, message),
        deleted=deleted,
    )
    if batch_client is not None:
        install_batch_lane(
            pipeline,
            batch_client,
            rules=rules,
            records=records,
            dead_letters=dead_letters,
            partitions=partitions,
            live_ahead=lambda job_id: live_queue(scheduler, job_id),
        )
    aggregator = Aggregator(
        jobs_topic=s.topic_jobs,
        ledger=ledger,
        feed=feed,
        mirror=mirror,
        dead_letters=dead_letters,
        deleted=deleted,
        cancelled=cancelled,
    )

    @app.agent(records_topic, name="process")
    async def process(stream: faust.StreamT[bytes]) -> None:
        await records.serve(stream, lookahead, s.topic_records)

    # Big jobs' records: read into their own lane of the look-ahead, called by the slots
    # of the process agent (stream_app.kafka.record_topics).
    @app.agent(bulk_topic, name="process-bulk")
    async def process_bulk(stream: faust.StreamT[bytes]) -> None:
        await records.feed(stream, lookahead, s.topic_records_bulk)

    @app.agent(job_events, name="aggregate")
    async def aggregate(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            await aggregator.apply(event)

    # Faust's Signal.connect stub does not accept async receivers with named arguments.
    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(app: faust.App, revoked: Any, **kwargs: Any) -> None:
        ledger.forget_recounts()
        # Their new owner reads them again from the committed offset.
        dropped = lookahead.drop(lambda event: event.message.tp in revoked)
        if dropped:
            log.info("look-ahead dropped records of revoked partitions", records=dropped)
        # Until the new assignment, this worker owns no share of the provider budget.
        processor.budget.assign(())
        # Calls already with Claude send their outcomes before the partitions are handed
        # over (records that have not called yet are left to the partitions' owners), and
        # what they wrote reaches the broker.
        wait = min(HANDOVER_WAIT_SECONDS, s.kafka_rebalance_timeout_seconds / 3)
        began = time.monotonic()
        left = await records.finish_calls(wait)
        try:
            await asyncio.wait_for(
                app.producer.flush(), max(0.1, wait - (time.monotonic() - began))
            )
        except TimeoutError:
            left = left or -1
        if left:
            log.warning(
                "calls in flight not finished before the revoke completed; their next owner "
                "may call again",
                calls=max(left, 0),
                seconds=round(time.monotonic() - began, 1),
            )

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(app: faust.App, assigned: Any, **kwargs: Any) -> None:
        owned = sorted(
            tp.partition for tp in app.consumer.assignment() if tp.topic == s.topic_records
        )
        processor.budget.assign(owned)
        if pipeline.lane is not None:
            pipeline.lane.assigned(
                {tp.partition for tp in app.consumer.assignment() if tp.topic == lane_topic_name(s)}
            )
        log.info(
            "budget share",
            partitions=f"{len(owned)}/{s.kafka_partitions}",
            cluster_rpm=processor.budget.requests_per_minute,
        )

    # Registered on the app; nothing else calls them.
    del process, process_bulk, aggregate, on_revoked, on_assigned
    install_repairs(app, s)
    # No table write for a partition this worker lost (stream_app.kafka.fencing), and a
    # quiet job whose counts disagree with Kafka is repaired (stream_app.kafka.job_audit).
    fence_table_writes(app, pipeline.tables)
    audit_quiet_jobs(
        app,
        ledger,
        result_table,
        results_topic=s.topic_results,
        bootstrap_servers=bootstrap_servers,
        partition_of=pipeline.job_partition,
        quiet_seconds=s.batch_audit_quiet_seconds,
    )
    return pipeline
