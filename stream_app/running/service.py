"""The running service: everything the API needs, started and stopped as one unit."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faust.exceptions import ConsumerNotStarted
from faust.tables.manager import TableManager

from schemas import JobCreated
from stream_app.core.collector import freeze_startup_objects
from stream_app.core.exceptions import BrokerUnavailable
from stream_app.core.logs import get_logger
from stream_app.core.metrics import MeteredTransport, WorkerMetrics
from stream_app.core.settings import Settings
from stream_app.jobs.aggregation import JobStatus
from stream_app.jobs.cancellation import CancellableBudget, CancelledJobs, SkipCancelledTransport
from stream_app.jobs.deletion import DeletedJobs
from stream_app.jobs.idempotency import IdempotencyKeys
from stream_app.jobs.job_rules import JobRules
from stream_app.jobs.mirror import SqliteMirror
from stream_app.jobs.processing import IntakeGate, RecordProcessor, RetryPolicy
from stream_app.jobs.spend_ledger import SpendLedgers
from stream_app.kafka.job_feed import JobFeed
from stream_app.kafka.jobs_reader import JobsReader
from stream_app.kafka.local_state import adopt_cluster, drop_unreconcilable, kafka_cluster_id
from stream_app.kafka.pipeline import JOB_TABLE, Pipeline, build_pipeline
from stream_app.kafka.retention import run_retention
from stream_app.kafka.spend_log import SPEND_TOPIC_CONFIG, SpendLog
from stream_app.kafka.stall import Backlog, StallWatch
from stream_app.kafka.topics import ensure_topics, leader_topic
from stream_app.provider.batches import BatchClient, PollPolicy
from stream_app.provider.breaker import ProviderBreaker
from stream_app.provider.budget import RateBudget
from stream_app.provider.call_slots import CallSlots
from stream_app.provider.client import InsightClient, build_anthropic_client
from stream_app.provider.pricing import FALLBACK_MODEL, is_known_model, price_for
from stream_app.running.dir_lock import DirLock
from stream_app.running.stopping import FAUST_STOP_SECONDS, StopPlan, faust_running, plan_stop

log = get_logger(__name__)

_BROKER_CHECK_TTL = 1.0


@dataclass
class Readiness:
    ready: bool
    checks: dict[str, str]


@dataclass
class Service:
    settings: Settings
    pipeline: Pipeline
    budget: RateBudget
    breaker: ProviderBreaker
    mirror: SqliteMirror | None
    admin: AIOKafkaAdminClient
    canonical_url: str
    gate: IntakeGate
    rules: JobRules
    # Called once with the reason when the worker gives up (it then stops, exit code 1).
    on_fatal: Callable[[str], None] = lambda reason: None
    fatal: str | None = None
    _broker_check: tuple[float, str] | None = field(default=None, repr=False)
    # Since when (monotonic seconds) the assignment check has not been ok, while the
    # broker answers.
    _unassigned_since: float | None = field(default=None, repr=False)
    stall: StallWatch | None = None
    backlog: Backlog | None = None
    # (monotonic seconds, records) of the last backlog read: read at most every 5 s.
    _backlog_read: tuple[float, int] = field(default=(-1e9, 0), repr=False)
    # Idempotency-Key -> job, from batch.jobs (stream_app.jobs.idempotency), and the reader
    # that keeps it (and the cancels, deletions, job terms) current.
    idempotency: IdempotencyKeys = field(default_factory=IdempotencyKeys)
    jobs_reader: JobsReader | None = None

    def stop_intake(self) -> None:
        """No record starts from now on; calls in flight finish (at SIGTERM/SIGINT)."""
        self.gate.close()

    def liveness(self) -> str:
        """ "ok", or why this worker is not alive in a way a restart would fix."""
        if self.fatal is not None:
            return self.fatal
        crashed = self._crashed()
        if crashed is not None:
            return crashed
        return "ok"

    def _crashed(self) -> str | None:
        app = self.pipeline.app
        tables = cast(TableManager, app.tables)
        for name, part in (
            ("app", app),
            ("tables", tables),
            ("table recovery", tables.recovery),
            ("consumer", app.consumer),
        ):
            reason = part.crash_reason
            if reason is not None:
                return f"{name} crashed: {type(reason).__name__}: {reason}"
        return None

    async def watch(self, deadline_seconds: float, interval: float = 1.0) -> None:
        """Give up (exit non-zero, to be restarted) when Faust crashed, or when partitions
        stay unassigned or unrecovered for `deadline_seconds` while the broker answers.
        A worker that can never become ready must not idle with a healthy liveness."""
        while self.fatal is None:
            await asyncio.sleep(interval)
            reason = self._crashed()
            assignment = self._check_assignment()
            now = time.monotonic()
            # Holding no partition is a legitimate idle state (more workers than partitions);
            # a rebalance or a recovery that never ends is not.
            stuck = assignment in ("rebalancing", "recovering table state")
            if not stuck or await self._check_broker() != "ok":
                self._unassigned_since = None
            elif self._unassigned_since is None:
                self._unassigned_since = now
            elif now - self._unassigned_since > deadline_seconds:
                reason = f"not ready for {deadline_seconds:.0f} s: {assignment}"
            if reason is None:
                reason = await self._check_stall(now, assignment)
            if reason is not None:
                self.give_up(reason)

    async def _check_stall(self, now: float, assignment: str) -> str | None:
        if self.stall is None or self.backlog is None:
            return None
        if self.gate.closed:
            excuse: str | None = "stopping"
        elif assignment != "ok":
            excuse = assignment
        else:
            state = self.breaker.report()["state"]
            excuse = None if state == "available" else f"provider {state}"
        in_flight = self.gate.count
        outcomes = self.pipeline.outcomes_sent
        backlog = 0
        if excuse is None and in_flight == 0:
            read_at, backlog = self._backlog_read
            if now - read_at >= 5.0:
                owned = [
                    TopicPartition(topic, p)
                    for topic in (self.settings.topic_records, self.settings.topic_records_bulk)
                    for p in self.owned_partitions()
                ]
                try:
                    backlog = await asyncio.wait_for(self.backlog.count(owned), timeout=5.0)
                except Exception as exc:  # the broker checks report it; not a stall
                    log.warning("could not read the backlog", error=type(exc).__name__)
                    backlog = 0
                self._backlog_read = (now, backlog)
        return self.stall.observe(
            now, backlog=backlog, in_flight=in_flight, outcomes=outcomes, excuse=excuse
        )

    def give_up(self, reason: str) -> None:
        log.error("worker cannot become ready; stopping so it is restarted", reason=reason)
        self.fatal = reason
        self.on_fatal(reason)
        # The server's own signal handling stops it in the usual order.
        os.kill(os.getpid(), signal.SIGTERM)

    async def submit(
        self, records: Sequence[bytes], owner: str | None, created: JobCreated | None = None
    ) -> str:
        """Publish a job and its records, as an upstream producer would; returns its id.
        `records`: each record's JSON object as published (`BatchRecord` fields, e.g.
        api.records.record_json); `created`: the job's announcement (its id is used) with
        the job's options. Raises BrokerUnavailable (stream_app.kafka.pipeline.publish_job)."""
        job_id = created.job_id if created is not None else uuid.uuid4().hex
        created = (created or JobCreated(job_id=job_id, total_records=0)).model_copy(
            update={"total_records": len(records), "created_at": time.time(), "owner": owner}
        )
        await self.pipeline.publish_job(created, records)
        return job_id

    def is_local(self, owner_url: str | None) -> bool:
        return owner_url is None or owner_url == self.canonical_url

    def worker_urls(self) -> list[str]:
        """The API addresses of the workers that own job partitions now, as this worker's
        last assignment says (a worker that just died is still in it until the rebalance)."""
        app = self.pipeline.app
        urls = {str(url).rstrip("/") for url in app.router.table_metadata(JOB_TABLE)}
        return sorted(urls)

    def owner_url(self, job_id: str) -> str | None:
        """The API address of the worker whose partitions hold this job's state."""
        app = self.pipeline.app
        partition = self.pipeline.job_partition(job_id)
        changelog = self.pipeline.job_changelog
        for url, topics in app.router.table_metadata(JOB_TABLE).items():
            if partition in topics.get(changelog, ()):
                return str(url).rstrip("/")
        return None

    def archived(self, job_id: str) -> tuple[JobStatus, dict[int, dict[str, Any]]] | None:
        """A job known only to the SQLite mirror (its broker state is gone)."""
        if self.mirror is None or job_id in self.pipeline.deleted:
            return None
        job = self.mirror.job(job_id)
        return (job, self.mirror.results(job_id)) if job is not None else None

    def held_jobs(self) -> list[tuple[JobStatus, bool]]:
        """Every job this worker can tell about, each with whether what it holds is current:
        jobs on the partitions it owns (current), its standby replicas of other workers'
        partitions (not current: the owner may be ahead), and with the SQLite mirror the
        jobs only the mirror still has (current: their broker state is gone)."""
        owned = self.pipeline.owned_job_partitions()
        deleted = self.pipeline.deleted
        held = {
            job.job_id: (job, self.pipeline.job_partition(job.job_id) in owned)
            for job in self.pipeline.held_jobs()
            # (A standby replica may not have applied the deletion's tombstone yet.)
            if job.job_id not in deleted
        }
        if self.mirror is not None:
            for job in self.mirror.jobs():
                if job.job_id not in deleted:
                    held.setdefault(job.job_id, (job, True))
        return list(held.values())

    async def readiness(self) -> Readiness:
        checks = {
            "broker": await self._check_broker(),
            "assignment": self._check_assignment(),
            "storage": self._check_storage(),
        }
        return Readiness(all(v == "ok" for v in checks.values()), checks)

    async def _check_broker(self) -> str:
        # A round trip to the broker per probe is wasteful under frequent polling.
        now = time.monotonic()
        if self._broker_check is not None and now - self._broker_check[0] < _BROKER_CHECK_TTL:
            return self._broker_check[1]
        result = await self._ask_broker()
        self._broker_check = (now, result)
        return result

    async def _ask_broker(self) -> str:
        try:
            await asyncio.wait_for(self.admin.describe_cluster(), timeout=2.0)
        except Exception as exc:  # any failure means "not reachable"; the reason is reported
            return f"unreachable: {type(exc).__name__}"
        return "ok"

    def owned_partitions(self) -> list[int]:
        """The `batch.records` partitions the consumer holds now: empty before the first
        assignment and between revocation and the next one."""
        try:
            assignment = self.pipeline.app.consumer.assignment()
        except ConsumerNotStarted:
            return []
        records = self.settings.topic_records
        return sorted(tp.partition for tp in assignment if tp.topic == records)

    def _check_assignment(self) -> str:
        app = self.pipeline.app
        if app.rebalancing:
            return "rebalancing"
        if not cast(TableManager, app.tables).recovery.completed.is_set():
            return "recovering table state"
        if not self.owned_partitions():
            return f"no {self.settings.topic_records} partitions assigned"
        return "ok"

    def _check_storage(self) -> str:
        if self.settings.batch_persistence_backend == "memory":
            return "ok"
        probe = Path(self.settings.batch_job_storage_path) / f".ready-{uuid.uuid4().hex}"
        try:
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            return f"not writable: {exc.strerror}"
        return "ok"


@asynccontextmanager
async def running_service(settings: Settings) -> AsyncIterator[Service]:
    """Build every client from Settings, start the Faust app, and stop it all on exit.

    Raises DirectoryInUse when another worker holds BATCH_JOB_STORAGE_PATH, ValueError when
    the broker or the provider's key is not resolved yet.
    """
    # One worker per state directory: a second one would repair (drop) stores the first
    # still writes. Raises DirectoryInUse.
    storage_lock = DirLock(
        settings.batch_job_storage_path, "the worker's state directory (BATCH_JOB_STORAGE_PATH)"
    )
    try:
        async with _running_service(settings) as service:
            yield service
    finally:
        storage_lock.release()


@asynccontextmanager
async def _running_service(settings: Settings) -> AsyncIterator[Service]:
    if not settings.kafka_bootstrap_servers:
        raise ValueError("KAFKA_BOOTSTRAP_SERVERS must be resolved before the service starts")
    if settings.anthropic_api_key is None:
        raise ValueError("ANTHROPIC_API_KEY must be resolved before the service starts")
    if not is_known_model(settings.claude_model):
        log.warning(
            "model without a price in genai-prices; priced like the fallback model",
            model=settings.claude_model,
            fallback=FALLBACK_MODEL,
        )
    metrics = WorkerMetrics()
    cancelled = CancelledJobs()
    deleted = DeletedJobs()
    keys = IdempotencyKeys(settings.batch_idempotency_hours)
    anthropic_client = build_anthropic_client(
        api_key=settings.anthropic_api_key.get_secret_value(),
        base_url=settings.anthropic_base_url,
        timeout=settings.claude_timeout_seconds,
        wrap_transport=lambda inner: SkipCancelledTransport(
            MeteredTransport(inner, metrics), cancelled
        ),
    )
    # Records of cancelled jobs take no slot; every wait for a slot is measured.
    budget: RateBudget = CancellableBudget(
        settings.claude_requests_per_minute,
        cancelled=cancelled,
        on_wait=metrics.waited_for_budget,
        partitions=settings.kafka_partitions,
        input_tokens_per_minute=settings.claude_input_tokens_per_minute,
        output_tokens_per_minute=settings.claude_output_tokens_per_minute,
    )
    breaker = ProviderBreaker(
        threshold=settings.batch_breaker_threshold,
        probe_base_seconds=settings.batch_probe_base_seconds,
        probe_max_seconds=settings.batch_probe_max_seconds,
    )
    gate = IntakeGate()
    insight_client = InsightClient(
        anthropic_client,
        model=settings.claude_model,
        max_tokens=settings.claude_max_tokens,
        max_tokens_ceiling=settings.claude_max_tokens_ceiling,
        timeout_seconds=settings.claude_timeout_seconds,
    )
    rules = JobRules(
        insight_client,
        lambda model: price_for(
            model or settings.claude_model,
            settings.batch_cost_per_1k_input_tokens,
            settings.batch_cost_per_1k_output_tokens,
            fallback_model=FALLBACK_MODEL,
        ),
        announce_wait_seconds=settings.batch_job_announce_wait_seconds,
        # A submit gives up after KAFKA_PUBLISH_TIMEOUT_SECONDS: by then its job is
        # announced or never will be (its records wait this long, then are dead-lettered).
        created_follows_wait_seconds=settings.kafka_publish_timeout_seconds
        + settings.batch_job_announce_wait_seconds,
        spend=(
            spend_log := SpendLog(
                settings.kafka_bootstrap_servers,
                settings.topic_spend,
                settings.kafka_partitions,
                SpendLedgers(settings.batch_spend_reservation_ttl_seconds),
            )
        ),
        tenant_budgets=settings.tenant_budget_table(),
    )
    processor = RecordProcessor(
        client=insight_client,
        budget=budget,
        policy=RetryPolicy(
            retries=settings.batch_record_retry_count,
            backoff_seconds=settings.batch_retry_backoff_seconds,
            retry_after_cap_seconds=settings.batch_retry_after_cap_seconds,
        ),
        breaker=breaker,
        gate=gate,
        cancelled=cancelled,
        slots=CallSlots(
            settings.batch_max_concurrent_llm_calls,
            rate=lambda: budget.requests_per_minute * budget.share / 60,
        ),
    )
    mirror = (
        SqliteMirror(settings.batch_sqlite_path)
        if settings.batch_persistence_backend == "sqlite"
        else None
    )
    canonical_url = settings.advertised_url or f"http://{settings.host}:{settings.port}"
    pipeline = build_pipeline(
        settings,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        processor=processor,
        price=price_for(
            settings.claude_model,
            settings.batch_cost_per_1k_input_tokens,
            settings.batch_cost_per_1k_output_tokens,
            fallback_model=FALLBACK_MODEL,
        ),
        mirror=mirror,
        canonical_url=canonical_url,
        gate=gate,
        cancelled=cancelled,
        feed=JobFeed(),
        metrics=metrics,
        rules=rules,
        deleted=deleted,
        batch_client=BatchClient(
            anthropic_client,
            PollPolicy(first=settings.batch_lane_poll_seconds),
        ),
    )
    created = await ensure_topics(
        settings.kafka_bootstrap_servers,
        {
            **pipeline.topic_partitions,
            leader_topic(settings.kafka_app_id): 1,
            settings.topic_spend: settings.kafka_partitions,
        },
        configs={**pipeline.topic_configs, settings.topic_spend: SPEND_TOPIC_CONFIG},
        group_id=settings.kafka_app_id,
    )
    pipeline.discard_stale_state(created)
    if settings.batch_persistence_backend != "memory":
        adopt_cluster(
            pipeline.tabledir,
            pipeline.changelogs,
            await kafka_cluster_id(settings.kafka_bootstrap_servers),
        )
    if settings.batch_persistence_backend != "memory" and settings.batch_heal_local_state:
        await drop_unreconcilable(
            pipeline.tabledir, pipeline.changelogs, settings.kafka_bootstrap_servers
        )
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    # Every worker reads every cancel (records wait until it has caught up).
    jobs_reader = JobsReader(
        settings.kafka_bootstrap_servers,
        settings.topic_jobs,
        settings.kafka_partitions,
        cancelled,
        rules,
        results_topic=settings.topic_results,
        deleted=deleted,
        keys=keys,
    )
    await jobs_reader.start()
    await spend_log.start()
    # Decided when the stop begins: short bounds while the broker does not answer.
    stop_plan: list[StopPlan] = []

    def faust_stop_seconds() -> float:
        return stop_plan[0].faust_stop_seconds if stop_plan else FAUST_STOP_SECONDS

    try:
        async with faust_running(pipeline.app, faust_stop_seconds):
            # What start-up built stays for the process's life: no collection walks it.
            frozen = freeze_startup_objects()
            log.info(
                "worker started",
                app_id=settings.kafka_app_id,
                broker=settings.kafka_bootstrap_servers,
                storage=settings.batch_persistence_backend,
                rpm=settings.claude_requests_per_minute,
                concurrency=settings.batch_max_concurrent_llm_calls,
                scheduling=settings.batch_scheduling,
                lookahead=settings.batch_lookahead_records,
                objects_frozen=frozen,
            )
            service = Service(
                settings, pipeline, budget, breaker, mirror, admin, canonical_url, gate, rules
            )
            service.idempotency = keys
            service.jobs_reader = jobs_reader
            service.stall = StallWatch(settings.batch_stall_exit_seconds)
            service.backlog = Backlog(
                settings.kafka_bootstrap_servers, admin, settings.kafka_app_id
            )
            watchdog = asyncio.create_task(service.watch(settings.batch_ready_deadline_seconds))
            retention = (
                asyncio.create_task(run_retention(pipeline, settings.batch_retention_days))
                if settings.batch_retention_days is not None
                else None
            )
            try:
                yield service
            finally:
                watchdog.cancel()
                if retention is not None:
                    retention.cancel()
                await service.backlog.close()
            # Graceful stop: take no new records, let calls in flight finish and send their
            # results, then Faust commits what was acknowledged as it stops.
            left = await gate.drain(settings.batch_shutdown_timeout_seconds)
            # Asked afresh, not the readiness probe's cached answer: a broker that went
            # away a moment ago must get the short bounds.
            broker = await service._ask_broker()
            plan = plan_stop(broker == "ok", settings.kafka_publish_timeout_seconds)
            stop_plan.append(plan)
            try:
                await pipeline.flush(plan.flush_seconds)
            except BrokerUnavailable as exc:
                # Unacknowledged outcomes were not committed either: redelivered later.
                log.error("outcomes not acknowledged at stop", reason=str(exc))
            log.info("drained", calls_abandoned=left, broker=broker)
    finally:
        await spend_log.stop()
        await jobs_reader.stop()
        await admin.close()
        await anthropic_client.close()
        if mirror is not None:
            mirror.close()
