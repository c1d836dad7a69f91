"""A job never stays `running` with every outcome on Kafka: the audit of quiet jobs.

The job-status table counts outcomes as the aggregate agent reads them from
`batch.results`; the record-results table holds each outcome once. Both are kept by the
owner of the job's partition, and both can fall out of step with Kafka when a fault breaks
a guarantee underneath (seen: a job at 395 of 400 for good, every outcome on
`batch.results`, the group's offsets at the end, so nothing would ever be read again). The
audit catches any such case, whatever its cause, from what Kafka holds:

every CHECK_INTERVAL_SECONDS, for each unfinished job whose partition this worker owns and
that got no outcome for BATCH_AUDIT_QUIET_SECONDS (at most once per job in
AUDIT_COOLDOWN_SECONDS), it compares the job's counts with its stored results. When they
disagree, or some records have no stored result, it reads the job's outcomes on its
`batch.results` partition (from the job's creation time on: `offsets_for_times`) and, if
the results table lacks some of them or the counts are off, sends them to `batch.results`
again, followed by one outcome already stored: the aggregate agent counts the missing ones
and the known one makes it rebuild the job's counters from its results (JobLedger's
recount). Outcomes are idempotent per (job, index), so a repair never counts twice. Each
repair is logged as a warning (`job counts disagreed with Kafka: repaired`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import faust
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TableT

from stream_app.core.logs import get_logger
from stream_app.jobs.aggregation import JobLedger, JobStatus
from stream_app.kafka.replicas import stored_results

log = get_logger(__name__)

CHECK_INTERVAL_SECONDS = 10.0
# The least time between two audits of one job: each may read the job's batch.results
# partition since the job was created (a job quiet because the provider is down, or its
# records wait for the budget, is read again at this pace and found whole).
AUDIT_COOLDOWN_SECONDS = 120.0
# Outcomes read from batch.results for one audit at most.
READ_TIMEOUT_SECONDS = 30.0


def is_quiet(job: JobStatus, now: float, quiet_seconds: float) -> bool:
    """Unfinished, with a known size, and no outcome for `quiet_seconds` (`now`: epoch s)."""
    if job.status not in ("pending", "running") or job.total_records is None:
        return False
    last = job.updated_at if job.updated_at is not None else job.created_at
    return last is not None and now - last >= quiet_seconds


def looks_off(job: JobStatus, stored: int) -> bool:
    """Whether the job's counts disagree with its `stored` results, or records lack one
    (then Kafka may hold outcomes the tables never got)."""
    total = job.total_records or 0
    return job.outcomes != stored or stored < total


def repair_plan(job: JobStatus, stored: set[int], on_kafka: dict[int, bytes]) -> list[bytes]:
    """What to send to `batch.results` again: the outcomes on Kafka that the results table
    lacks, then one outcome it holds (its duplicate makes the ledger recount the job from
    its results); nothing when the results hold every outcome on Kafka and the counts
    equal them. `on_kafka`: index -> the outcome as found on batch.results."""
    total = job.total_records or 0
    missing = sorted(i for i in on_kafka if i not in stored and i < total)
    if not missing and job.outcomes == len(stored):
        return []
    anchor = next((i for i in sorted(stored) if i in on_kafka), None)
    if anchor is None and missing:
        anchor = missing[0]  # counted when sent first, a duplicate when sent again
    if anchor is None:
        return []  # nothing on Kafka to rebuild from
    return [on_kafka[i] for i in missing] + [on_kafka[anchor]]


@dataclass
class JobAudit:
    """The audit's loop body, over what the worker gives it (injected, so it is testable
    with dictionaries): `jobs()` the jobs on owned partitions, `stored(job_id, total)` the
    indexes with a stored result, `read(job, stored)` the job's outcomes on batch.results
    (those not in `stored`, and one that is), `resend(job_id, values)` sends outcomes to
    batch.results, `recount(job_id)` asks the ledger to recount on the next duplicate."""

    jobs: Callable[[], Iterable[JobStatus]]
    stored: Callable[[str, int], Awaitable[set[int]]]
    read: Callable[[JobStatus, set[int]], Awaitable[dict[int, bytes]]]
    resend: Callable[[str, list[bytes]], Awaitable[None]]
    recount: Callable[[str], None]
    quiet_seconds: float
    cooldown_seconds: float = AUDIT_COOLDOWN_SECONDS

    def __post_init__(self) -> None:
        self._audited: dict[str, float] = {}  # job -> monotonic time of its last audit

    async def check(self, now: float | None = None) -> int:
        """One pass; returns how many jobs were repaired. `now`: epoch seconds."""
        now = time.time() if now is None else now
        tick = time.monotonic()
        repaired = 0
        for job in list(self.jobs()):
            if not is_quiet(job, now, self.quiet_seconds):
                continue
            if tick - self._audited.get(job.job_id, -1e18) < self.cooldown_seconds:
                continue
            total = job.total_records or 0
            stored = await self.stored(job.job_id, total)
            if not looks_off(job, len(stored)):
                continue
            self._audited[job.job_id] = tick
            on_kafka = await self.read(job, stored)
            plan = repair_plan(job, stored, on_kafka)
            if not plan:
                continue
            self.recount(job.job_id)
            await self.resend(job.job_id, plan)
            repaired += 1
            log.warning(
                "job counts disagreed with Kafka: repaired from batch.results",
                job=job.job_id,
                counted=job.outcomes,
                stored=len(stored),
                on_kafka=len(on_kafka),
                total=total,
                resent=len(plan),
            )
        for job_id in [
            j for j, t in self._audited.items() if tick - t > 10 * self.cooldown_seconds
        ]:
            del self._audited[job_id]
        return repaired


async def outcomes_on_partition(
    bootstrap_servers: str,
    tp: TopicPartition,
    job_id: str,
    since: float | None,
    stored: set[int],
) -> dict[int, bytes]:
    """index -> the first outcome of `job_id` on `tp` (batch.results) for every index not in
    `stored`, and for one index that is (the first found), read from the first offset at or
    after `since` (epoch seconds; None: the log's start) to the end offset as it was when
    the read began (at most READ_TIMEOUT_SECONDS). Only those values are kept: memory for
    the missing outcomes, not the job. Raises KafkaError when the broker does not answer."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    found: dict[int, bytes] = {}
    anchored = False
    key = job_id.encode()
    try:
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        start = None
        if since is not None:
            # A little before: the job's created_at is the API's clock, the log's the broker's.
            at = await consumer.offsets_for_times({tp: max(0, int((since - 60) * 1000))})
            start = at.get(tp)
        if start is not None:
            consumer.seek(tp, start.offset)
        else:
            await consumer.seek_to_beginning(tp)
        deadline = time.monotonic() + READ_TIMEOUT_SECONDS
        while await consumer.position(tp) < end and time.monotonic() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=500)
            for message in batch.get(tp, ()):
                if message.key != key or message.value is None:
                    continue
                index = _index_of(message.value)
                if index is None or index in found:
                    continue
                if index not in stored or not anchored:
                    found[index] = message.value
                    anchored = anchored or index in stored
    finally:
        await consumer.stop()
    return found


def _index_of(value: bytes) -> int | None:
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    index = data.get("index") if isinstance(data, dict) else None
    return index if isinstance(index, int) and index >= 0 else None


def audit_quiet_jobs(
    app: faust.App,
    ledger: JobLedger,
    result_table: TableT,
    *,
    results_topic: str,
    bootstrap_servers: str,
    partition_of: Callable[[str], int],
    quiet_seconds: float,
) -> JobAudit:
    """Run the audit every CHECK_INTERVAL_SECONDS as a Faust timer of the worker `app`,
    over the jobs of the partitions it owns (`ledger.jobs()` reads only those), their
    results in `result_table`, and their outcomes on `results_topic` (`partition_of`:
    job_id -> its partition). A failing pass is logged and the next one tries again."""

    async def stored(job_id: str, total: int) -> set[int]:
        chunks = stored_results(result_table, job_id)
        if chunks is None:
            return ledger.stored_indexes(job_id, total)
        indexes: set[int] = set()
        for chunk in chunks:
            indexes.update(i for raw in chunk if (i := _index_of(raw)) is not None)
            await asyncio.sleep(0)
        return indexes

    async def read(job: JobStatus, have: set[int]) -> dict[int, bytes]:
        tp = TopicPartition(results_topic, partition_of(job.job_id))
        return await outcomes_on_partition(bootstrap_servers, tp, job.job_id, job.created_at, have)

    async def resend(job_id: str, values: list[bytes]) -> None:
        producer = app.producer
        sent = [
            await producer.send(results_topic, job_id.encode(), value, None, None, None)
            for value in values
        ]
        for delivery in sent:
            await delivery

    audit = JobAudit(
        jobs=ledger.jobs,
        stored=stored,
        read=read,
        resend=resend,
        recount=ledger.recount_on_next_duplicate,
        quiet_seconds=quiet_seconds,
    )

    @app.timer(CHECK_INTERVAL_SECONDS, name="audit-quiet-jobs")
    async def check() -> None:
        # A Faust timer that raises crashes the app: log it, the next pass tries again.
        if app.rebalancing:
            return
        try:
            await audit.check()
        except Exception:
            log.exception("could not audit quiet jobs")

    del check
    return audit
