"""The Faust app: topics, tables and the two agents, built from Settings."""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import faust
import orjson
from faust.streams import _current_event
from faust.types import EventT, TableT
from pydantic import ValidationError

from schemas import DeadLetter, JobCancelled, JobCreated, RecordEvent, ResultEvent, parse_job_event
from stream_app.core.exceptions import BrokerUnavailable, JobNeverAnnounced, first_line
from stream_app.core.logs import get_logger
from stream_app.core.metrics import WorkerMetrics
from stream_app.core.settings import Settings
from stream_app.jobs.aggregation import Applied, JobLedger, JobStatus, apply_created, result_key
from stream_app.jobs.cancellation import (
    CancelledBeforeCall,
    CancelledJobs,
    record_scope,
    skipped_outcome,
)
from stream_app.jobs.job_rules import JobRules
from stream_app.jobs.mirror import SqliteMirror
from stream_app.jobs.processing import IntakeGate, RecordProcessor
from stream_app.jobs.scheduler import (
    FairScheduler,
    FifoScheduler,
    JobDirectory,
    Scheduler,
    Ticket,
    record_cost,
    ticket_for,
)
from stream_app.kafka.bulk_publish import publish_keyed
from stream_app.kafka.faust_fixes import (
    bound_the_fetch_wait,
    deliver_without_a_task_per_message,
    ebb_when_the_producer_buffer_drains,
    fetch_only_what_the_streams_can_take,
    fetch_these_topics_first,
    guard_stale_acks,
    guard_unacked_commits,
    hold_commits_at_skipped_offsets,
    send_without_an_event_loop_turn,
    take_several_events_per_event_loop_turn,
)
from stream_app.kafka.job_feed import JobFeed
from stream_app.kafka.local_state import discard_tables
from stream_app.kafka.lookahead import LookAhead
from stream_app.kafka.redelivery import heal_lost_deliveries
from stream_app.kafka.replicas import active_partitions, stored_results, stored_values
from stream_app.kafka.topics import CHANGELOG_CONFIG
from stream_app.provider.answers import redact
from stream_app.provider.pricing import Price
from stream_app.provider.usage import Usage

log = get_logger(__name__)

JOB_TABLE = "job-status"
RESULT_TABLE = "record-results"
PROCESSED_TABLE = "processed-records"
# Table writes queued for the producer before message delivery waits (stream_app.kafka.faust_fixes).
PRODUCER_BUFFER_MESSAGES = 1000
# Most messages one fetch hands to the streams (aiokafka's max_poll_records; Faust leaves it
# unset: a fetch returns everything buffered, thousands of records of a big job). A fetch
# leaves out the partitions whose stream queue (4,096) has no room for this many
# (stream_app.kafka.faust_fixes.fetch_only_what_the_streams_can_take), so the worker's one fetch
# loop never waits on a full queue with every other topic behind it (issue 9).
MAX_POLL_RECORDS = 500
# Longest time the broker holds a fetch with no new data (stream_app.kafka.faust_fixes
# .bound_the_fetch_wait; Faust: 1.5 s, which results waited out at the end of a job).
FETCH_MAX_WAIT_SECONDS = 0.1
# How long a stream may hand its agent queued events before it gives up the event loop
# (stream_app.kafka.faust_fixes.take_several_events_per_event_loop_turn; Faust: one event a turn).
STREAM_TURN_SECONDS = 0.005
# Jobs published here and not yet in the job-status table that this instance remembers.
ANNOUNCED_KEPT = 1024
# Each table partition is a RocksDB database of its own (3 tables x KAFKA_PARTITIONS). With
# Faust's defaults (64 MiB write buffers, 3 of them, a 2 GiB block cache each) a database
# keeps everything written to it in memory until 64 MiB have accumulated, and caches what
# is read up to 2 GiB, so the worker's memory grew with the size of the jobs it had
# processed (issue 9: ~150 MiB for 10,000 records). Small write buffers are flushed to
# disk early and the block cache is small (reads come from the OS page cache otherwise):
# about 3 MiB per database at most (two 1 MiB memtables and a 1 MiB cache), whatever the
# job's size; 72 MiB for the 24 databases of 8 partitions.
ROCKSDB_OPTIONS = {
    "write_buffer_size": 2**20,
    "max_write_buffer_number": 2,
    "block_cache_size": 2**20,
}


def record_key(job_id: str, index: int) -> bytes:
    # Records of one job are keyed per record so that they spread over all partitions.
    return result_key(job_id, index).encode()


def _raw_topic(app: faust.App, *names: str, partitions: int) -> faust.TopicT:
    """Topics carry plain bytes: payloads are public JSON contracts, not Faust records."""
    return app.topic(*names, partitions=partitions, key_serializer="raw", value_serializer="raw")


def broker_urls(bootstrap_servers: str) -> str:
    return ";".join(f"kafka://{server.strip()}" for server in bootstrap_servers.split(","))


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
    # Outcomes this worker sent to `batch.results` (new or re-sent known ones): progress.
    outcomes_sent: int = 0
    # Records read ahead in batch.records, waiting for a call slot (stream_app.kafka.lookahead).
    lookahead: LookAhead[EventT] | None = None
    # Jobs this instance published whose `created` event the aggregate agent has not
    # applied yet (it can lag seconds behind a busy batch.results), so that a status read
    # right after the 202 finds the job: read-your-writes (see `job`).
    announced: OrderedDict[str, JobStatus] = field(default_factory=OrderedDict)

    @property
    def topic_partitions(self) -> dict[str, int]:
        """Every topic the service uses, with the partition count it must have."""
        s = self.settings
        names = [s.topic_jobs, s.topic_records, s.topic_results, s.topic_dlq]
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
        has applied its `created` event."""
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
        `batch.records` (`records`: each record's JSON object, in index order), wait until
        the broker has acknowledged all of them (acks=all), and only then announce the job
        on `batch.jobs` (its `created` event) and wait for that acknowledgement too.

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
        # worker reads it.
        scheduling = created.model_dump(include={"owner", "priority"}, exclude_none=True)
        scheduling["created_follows"] = True

        async def send_all() -> None:
            # Straight to aiokafka, in record batches built per partition (the bytes are
            # final; Faust's per-message wrapper and aiokafka's per-record send cost more
            # than the records: stream_app.kafka.bulk_publish). Every batch's delivery is awaited,
            # so a lost one raises and the job is not announced.
            producer = self.app.producer
            topic = self.records_topic.get_topic_name()

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
                jobs_topic, job_id.encode(), _dump(created), None, None, None
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
            await self.jobs_topic.send(key=job_id.encode(), value=_dump(event))
            await self.app.producer.flush()

        await self._within_publish_timeout(send(), f"cancel of job {job_id}")

    async def flush(self) -> None:
        """Wait until the broker acknowledged everything produced (at shutdown). Raises
        BrokerUnavailable after KAFKA_PUBLISH_TIMEOUT_SECONDS."""
        await self._within_publish_timeout(self.app.producer.flush(), "the final flush")

    async def _within_publish_timeout(self, sending: Awaitable[None], what: str) -> None:
        timeout = self.settings.kafka_publish_timeout_seconds
        try:
            await asyncio.wait_for(sending, timeout)
        except TimeoutError:
            raise BrokerUnavailable(
                f"the broker did not acknowledge {what} within {timeout:g} s "
                "(KAFKA_PUBLISH_TIMEOUT_SECONDS)"
            ) from None


def _dump(model: Any) -> bytes:
    return model.model_dump_json(exclude_none=True).encode()


def build_pipeline(
    settings: Settings,
    *,
    bootstrap_servers: str,
    processor: RecordProcessor,
    price: Price,
    mirror: SqliteMirror | None,
    canonical_url: str,
    gate: IntakeGate,
    cancelled: CancelledJobs | None = None,
    feed: JobFeed | None = None,
    metrics: WorkerMetrics | None = None,
    directory: JobDirectory | None = None,
    rules: JobRules | None = None,
) -> Pipeline:
    s = settings
    cancelled = cancelled if cancelled is not None else CancelledJobs()
    feed = feed if feed is not None else JobFeed()
    metrics = metrics if metrics is not None else WorkerMetrics()
    store = "memory://" if s.batch_persistence_backend == "memory" else "rocksdb://"
    app = faust.App(
        s.kafka_app_id,
        broker=broker_urls(bootstrap_servers),
        store=store,
        datadir=str(s.batch_job_storage_path.resolve()),
        autodiscover=False,
        web_enabled=False,
        canonical_url=canonical_url,
        topic_partitions=s.kafka_partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        broker_rebalance_timeout=s.kafka_rebalance_timeout_seconds,
        broker_session_timeout=s.kafka_session_timeout_seconds,
        broker_heartbeat_interval=min(3.0, s.kafka_session_timeout_seconds / 3),
        producer_acks=-1,
        broker_max_poll_records=MAX_POLL_RECORDS,
        # aiokafka always puts the first record in a batch, so 1 byte means one per batch.
        # 256 KiB batches (Kafka's own default is 16 KiB): a submit publishes 10,000 records
        # in about half the time (issue 9: 2.0-2.2 s against 0.8-1.2 s, measured warm on 2
        # loaded cores); outcomes are produced as they come, so linger, not size, sets their
        # latency.
        producer_max_batch_size=1 if s.kafka_one_record_per_batch else 262144,
        # The intake refuses a record larger than BATCH_MAX_RECORD_BYTES, below this.
        producer_max_request_size=s.kafka_max_request_bytes,
        # Other workers keep a standby replica of each table partition, read by the API
        # while the partition's owner is dead (api.forwarding) and replayed from where it
        # stands when a standby becomes the owner (README: "Reads during a failover").
        table_standby_replicas=s.table_standby_replicas,
        # Stopping must not wait for records held at the closed intake gate: they stay
        # unacknowledged, so uncommitted, and are processed after the restart.
        stream_wait_empty=False,
    )
    jobs_topic = _raw_topic(app, s.topic_jobs, partitions=s.kafka_partitions)
    records_topic = _raw_topic(app, s.topic_records, partitions=s.kafka_partitions)
    results_topic = _raw_topic(app, s.topic_results, partitions=s.kafka_partitions)
    dlq_topic = _raw_topic(app, s.topic_dlq, partitions=s.kafka_partitions)
    # batch.jobs and batch.results share key (job_id) and partition count, so both land on
    # the same partition, and the tables' changelogs follow that partition.
    job_events = _raw_topic(app, s.topic_jobs, s.topic_results, partitions=s.kafka_partitions)
    table_schema: faust.Schema = faust.Schema(
        key_type=str, value_type=None, key_serializer="raw", value_serializer="json"
    )
    # A standby applies each changelog entry as it comes (Faust buffers 1000 by default,
    # which would leave a replica that far behind; its global tables use 1 for the same
    # reason, faust/app/base.py GlobalTable).
    table_options: dict[str, Any] = {
        "partitions": s.kafka_partitions,
        "schema": table_schema,
        "standby_buffer_size": 1,
    }

    def table(name: str) -> TableT:
        # A dict of its own per table: Faust's store pops keys from the one it is given.
        storage: dict[str, Any] = (
            {"options": dict(ROCKSDB_OPTIONS)} if store == "rocksdb://" else {}
        )
        return app.Table(name, **table_options, **storage)

    job_table = table(JOB_TABLE)
    result_table = table(RESULT_TABLE)
    # Keyed like batch.records and written by the process agent, so co-partitioned with it:
    # a redelivered record whose outcome is already known is not sent to Claude again.
    processed = table(PROCESSED_TABLE)
    ledger = JobLedger(
        job_table, result_table, price, rules.price_of if rules is not None else None
    )
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
    )
    scheduler: Scheduler[EventT] = (
        FairScheduler() if s.batch_scheduling == "fair" else FifoScheduler()
    )
    lookahead = pipeline.lookahead = LookAhead(
        scheduler, max_records=s.batch_lookahead_records, max_bytes=s.batch_lookahead_bytes
    )

    async def dead_letter(event: EventT, reason: str, **extra: Any) -> None:
        message = event.message
        value = message.value if isinstance(message.value, bytes) else b""
        letter = DeadLetter(
            source_topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=message.key.decode(errors="replace") if isinstance(message.key, bytes) else None,
            value=value[:65536].decode(errors="replace"),
            reason=reason,
            at=time.time(),
            extra=extra,
        )
        await dlq_topic.send(key=message.key, value=_dump(letter))
        log.warning(
            "dead-lettered",
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            reason=reason,
        )

    @app.agent(records_topic, name="process")
    async def process(stream: faust.StreamT[bytes]) -> None:
        # Faust acknowledges the current event even when the agent is cancelled mid-way (at
        # stop), which would commit a record that never got its result. Acknowledge by hand,
        # only once the result has been handed to the producer. One reader fills the
        # look-ahead; BATCH_MAX_CONCURRENT_LLM_CALLS slots take records in the scheduler's
        # order, so acknowledgements come out of offset order (see stream_app.kafka.lookahead).
        manual = cast(faust.Stream[bytes], stream).noack()

        async def handle(event: EventT) -> None:
            if event.message.generation_id != app.consumer_generation_id:
                # Read before a rebalance: Kafka delivers it again to its partition's owner.
                return
            # Table writes go to the changelog partition of the event being processed, which
            # Faust reads from a context variable that its stream sets in the reader's task
            # only; each call slot is a task of its own (faust/streams.py, current_event).
            _current_event.set(weakref.ref(event))
            if await _process_one(event):
                await manual.ack(event)

        await lookahead.serve(
            manual.events(), _ticket, handle, slots=s.batch_max_concurrent_llm_calls
        )

    def _ticket(event: EventT) -> tuple[Ticket, int]:
        """Who the record belongs to for the scheduler, and its size in bytes."""
        value = event.message.value if isinstance(event.message.value, bytes) else b""
        job_id, owner, priority = _scheduling_fields(value)
        cost = record_cost(
            len(value),
            requests_per_minute=processor.budget.requests_per_minute,
            input_tokens_per_minute=s.claude_input_tokens_per_minute,
            output_tokens_per_minute=s.claude_output_tokens_per_minute,
            output_tokens_estimate=processor.budget.estimate_output_tokens(s.claude_max_tokens),
        )
        return ticket_for(job_id, owner, priority, directory, cost), len(value)

    # Records this worker is processing now, by key. The consumer can deliver a record
    # again while its first copy is still with Claude (it re-reads from the last committed
    # offset, e.g. when a restarted worker's fetch is reset after table recovery); the
    # copy then waits for that outcome instead of paying for a second call.
    running: dict[str, asyncio.Future[None]] = {}

    async def _process_one(event: EventT) -> bool:
        """The record's boundary: whatever goes wrong, the record gets an outcome (the
        processor already turns its own failures into one; this catches the rest). False
        only when not even a failed outcome could be sent: the record then stays
        unacknowledged, and its job shows as stalled."""
        try:
            await _handle_record(event)
            return True
        except Exception as exc:
            log.exception(
                "internal error at a record's boundary",
                topic=event.message.topic,
                partition=event.message.partition,
                offset=event.message.offset,
            )
            error = f"internal error: {type(exc).__name__}: {redact(first_line(exc))}"
        try:
            ident = _job_and_index(_payload(event))
            if ident is None:
                await dead_letter(event, error)
                return True
            failed = ResultEvent(
                job_id=ident[0], index=ident[1], success=False, error=error, finished_at=time.time()
            )
            await _send_outcome(result_key(*ident), failed)
            return True
        except Exception:
            log.exception("could not send the failed outcome; the record stays unacknowledged")
            return False

    async def _handle_record(event: EventT) -> None:
        record = await _parse_record(event)
        if record is None:
            return
        key = result_key(record.job_id, record.index)
        first = running.get(key)
        if first is not None and processed.get(key) is None:
            await asyncio.wait([first])  # returns also when the first copy was cancelled
        known = processed.get(key)
        if known is not None:
            # Redelivered after a crash: re-send the known outcome (the aggregate agent
            # drops duplicates) instead of paying for the call again.
            log.info("record already processed", job=record.job_id, index=record.index)
            await results_topic.send(key=record.job_id.encode(), value=orjson.dumps(known))
            pipeline.outcomes_sent += 1
            return
        # Registered before any wait, so a redelivered copy waits for this one's outcome.
        done = running[key] = asyncio.get_running_loop().create_future()
        try:
            if await cancelled.should_skip(record.job_id):
                await _send_outcome(key, skipped_outcome(record))
                return
            # The job's task, or the outcome without a call (its spending cap was reached).
            try:
                task = await rules.admit(record) if rules is not None else None
            except JobNeverAnnounced as exc:
                # Its submit failed halfway: the job does not exist, nothing is paid.
                await dead_letter(event, str(exc))
                return
            if isinstance(task, ResultEvent):
                await _send_outcome(key, task)
                return
            await gate.admit()
            async with gate.in_flight():
                try:
                    with record_scope(record.job_id):
                        result = await processor.process(record, task)
                except CancelledBeforeCall:
                    # Its job was cancelled while it waited for the rate budget.
                    result = skipped_outcome(record)
                await _send_outcome(key, result)
        finally:
            if rules is not None:  # a reservation of a record that got no outcome here
                rules.release(record)
            if running.get(key) is done:
                del running[key]
            if not done.done():
                done.set_result(None)

    async def _send_outcome(key: str, result: ResultEvent) -> None:
        outcome = result.model_dump(mode="json", exclude_none=True)
        processed[key] = outcome
        await results_topic.send(key=result.job_id.encode(), value=orjson.dumps(outcome))
        if rules is not None:
            rules.settle(result)
        pipeline.outcomes_sent += 1
        # Priced as the job's status prices it (apply_result), so the counters add up.
        cost = ledger.price_for(result).cost_of(Usage.of(result))
        metrics.outcome(result, cost)

    async def _parse_record(event: EventT) -> RecordEvent | None:
        try:
            return RecordEvent.model_validate_json(_payload(event))
        except ValidationError as exc:
            reason = f"invalid record event: {_validation_summary(exc)}"
        await dead_letter(event, reason)
        # A record that names its job and index still gets an outcome, so the job completes.
        ident = _job_and_index(_payload(event))
        if ident is not None:
            failed = ResultEvent(
                job_id=ident[0],
                index=ident[1],
                success=False,
                error=reason,
                finished_at=time.time(),
            )
            await results_topic.send(key=ident[0].encode(), value=_dump(failed))
        return None

    @app.agent(job_events, name="aggregate")
    async def aggregate(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            now = time.time()
            if event.message.topic == s.topic_jobs:
                await _apply_job_event(event, now)
            else:
                await _apply_result_event(event, now)

    async def _apply_job_event(event: EventT, now: float) -> None:
        try:
            job_event = parse_job_event(_payload(event))
        except ValidationError as exc:
            await dead_letter(event, f"invalid job event: {_validation_summary(exc)}")
            return
        if isinstance(job_event, JobCancelled):
            job = ledger.record_cancelled(job_event, now)
            log.info("job status cancelled", job_id=job.job_id, partition=event.message.partition)
        else:
            job = ledger.record_created(job_event, now)
        feed.publish(job)
        if mirror is not None:
            mirror.save_job(job)

    async def _apply_result_event(event: EventT, now: float) -> None:
        try:
            result = ResultEvent.model_validate_json(_payload(event))
        except ValidationError as exc:
            await dead_letter(event, f"invalid result event: {_validation_summary(exc)}")
            return
        applied, job = ledger.record_result(result, now, offset=event.message.offset)
        if applied is Applied.OUT_OF_RANGE:
            await dead_letter(event, f"index {result.index} is outside the job's records")
            return
        if applied is Applied.DUPLICATE and job is not None:
            log.warning("recounted job after redelivery", job=job.job_id, outcomes=job.outcomes)
        if job is not None:
            counted = applied is Applied.COUNTED and feed.watching(job.job_id)
            feed.publish(job, ledger.result(job.job_id, result.index) if counted else None)
        if mirror is not None and job is not None:
            if applied is Applied.COUNTED:
                mirror.save_result(result)
            mirror.save_job(job)

    # Faust's Signal.connect stub does not accept async receivers with named arguments.
    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def _on_revoked(app: faust.App, revoked: Any, **kwargs: Any) -> None:
        ledger.forget_recounts()
        # Their new owner reads them again from the committed offset.
        dropped = lookahead.drop(lambda event: event.message.tp in revoked)
        if dropped:
            log.info("look-ahead dropped records of revoked partitions", records=dropped)
        # Until the new assignment, this worker owns no share of the provider budget.
        processor.budget.assign(())

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def _on_assigned(app: faust.App, assigned: Any, **kwargs: Any) -> None:
        owned = sorted(
            tp.partition for tp in app.consumer.assignment() if tp.topic == s.topic_records
        )
        processor.budget.assign(owned)
        log.info(
            "budget share",
            partitions=f"{len(owned)}/{s.kafka_partitions}",
            cluster_rpm=processor.budget.requests_per_minute,
        )

    # Registered on the app; nothing else calls them.
    del process, aggregate, _on_revoked, _on_assigned
    guard_stale_acks(app)
    guard_unacked_commits(app)
    hold_commits_at_skipped_offsets(app)
    heal_lost_deliveries(app, (s.topic_records, s.topic_jobs, s.topic_results))
    deliver_without_a_task_per_message(app)
    ebb_when_the_producer_buffer_drains(app, PRODUCER_BUFFER_MESSAGES)
    send_without_an_event_loop_turn(app)
    fetch_only_what_the_streams_can_take(app, MAX_POLL_RECORDS)
    bound_the_fetch_wait(app, FETCH_MAX_WAIT_SECONDS)
    # Job events and outcomes are few and latency-bound; records come by the thousand.
    fetch_these_topics_first(app, (s.topic_jobs, s.topic_results))
    take_several_events_per_event_loop_turn(STREAM_TURN_SECONDS)
    return pipeline


def _payload(event: EventT) -> bytes:
    # Typing only: the value is None for a tombstone, and is passed on unchanged. pydantic
    # rejects None with a ValidationError and orjson with a JSONDecodeError, so a tombstone
    # is dead-lettered like any other unreadable message.
    return cast(bytes, event.message.value)


def _validation_summary(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:3]:
        where = ".".join(str(p) for p in error["loc"]) or "value"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def _scheduling_fields(value: bytes) -> tuple[str, str | None, str | None]:
    """(job_id, owner, priority) of a record event; blanks when unreadable (the process
    agent dead-letters it when its turn comes)."""
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return "", None, None
    if not isinstance(data, dict):
        return "", None, None
    job_id, owner, priority = data.get("job_id"), data.get("owner"), data.get("priority")
    return (
        job_id if isinstance(job_id, str) else "",
        owner if isinstance(owner, str) else None,
        priority if isinstance(priority, str) else None,
    )


def _job_and_index(value: bytes) -> tuple[str, int] | None:
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    job_id, index = data.get("job_id"), data.get("index")
    if isinstance(job_id, str) and job_id and isinstance(index, int) and index >= 0:
        return job_id, index
    return None
