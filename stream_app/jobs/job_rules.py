"""What a worker must know about a record's job: its owner and priority (for the
scheduler, when the record does not carry them), its task and its spending cap. The one
directory of jobs a worker keeps, fed from `batch.jobs` and `batch.results` by every
worker's own group-less reader (`stream_app.kafka.jobs_reader`), read by the process agent.

Why the task travels in the job's `created` event and not with each record: a task's
instructions and schema are the same for every record (often kilobytes, since a prefix
worth caching is 1,024 tokens or more), so carrying them in each of 50,000 records would
multiply `batch.records` by that. Instead every worker reads all of `batch.jobs` from the
beginning at start (it already does, for cancels) and keeps each job's terms in memory: a
record's worker is generally not its job's owner (records are keyed per record across all
partitions), and after a rebalance or restart any worker knows the terms of any record it
is given, because it has read the topic up to its end before judging a record. A record
that overtakes its job's `created` event waits for it (BATCH_JOB_ANNOUNCE_WAIT_SECONDS),
then runs with the default task (records of jobs that were never announced keep working as
before this feature).

Records the API publishes carry `created_follows: true`: the API announces a job only after
every record is acknowledged, so a submit that fails halfway leaves records of a job that
does not exist. Such a record waits for its announcement up to KAFKA_PUBLISH_TIMEOUT_SECONDS
+ BATCH_JOB_ANNOUNCE_WAIT_SECONDS (`created_follows_wait_seconds`: the submit has given up by
then) and is then refused with JobNeverAnnounced (the process agent dead-letters it, no call
is made), as are the job's other records at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from pydantic import ValidationError

from schemas import JobCreated, RecordEvent, ResultEvent, TaskSpec
from schemas.http import Priority
from stream_app.core.exceptions import InsightStreamError, JobNeverAnnounced
from stream_app.core.logs import get_logger
from stream_app.jobs.aggregation import result_key
from stream_app.jobs.estimate import UsageHistory, expected_output_tokens
from stream_app.jobs.spend_cap import SpendCap, Verdict
from stream_app.jobs.tasks import check_task_model
from stream_app.provider.batches import at_batch_rates
from stream_app.provider.client import InsightClient
from stream_app.provider.pricing import Price
from stream_app.provider.request import CHARS_PER_TOKEN, PreparedTask
from stream_app.provider.task_schema import check_output_schema
from stream_app.provider.usage import Usage

log = get_logger(__name__)

BUDGET_SKIPPED_ERROR = "skipped: the job's spending cap (max_cost_usd) was reached"
_PREPARED_KEPT = 256


@dataclass(frozen=True)
class JobTerms:
    task: TaskSpec | None = None
    task_name: str | None = None
    max_cost_usd: Decimal | None = None
    # Why the job's `created` event was refused (dead-lettered): its records then fail
    # instead of running with default terms the job never asked for (e.g. without its cap).
    rejected: str | None = None
    # Its records were published with `created_follows` and no announcement came.
    never_announced: bool = False
    # Who submitted it (API_KEYS) and its priority: the scheduler's tenant and weight.
    owner: str | None = None
    priority: Priority | None = None
    # "batch": its records go to the batch lane (stream_app.kafka.batch_lane).
    lane: str | None = None


DEFAULT_TERMS = JobTerms()
NEVER_ANNOUNCED = JobTerms(never_announced=True)


class JobRules:
    """Each job's terms, the spend of capped jobs, and what records of each task billed."""

    def __init__(
        self,
        client: InsightClient,
        price_of: Callable[[str | None], Price],
        *,
        announce_wait_seconds: float = 10.0,
        created_follows_wait_seconds: float = 40.0,
    ) -> None:
        self._client = client
        self._price_of = price_of
        self._announce_wait = announce_wait_seconds
        self._created_follows_wait = created_follows_wait_seconds
        self._terms: dict[str, JobTerms] = {}
        self._announced: dict[str, asyncio.Event] = {}
        self._prepared: OrderedDict[str, PreparedTask] = OrderedDict()
        self._chars: dict[str, tuple[str, int]] = {}
        self.spend = SpendCap()
        # Set (and replaced) whenever a capped job's spend or reservations change.
        self._spend_changed: dict[str, asyncio.Event] = {}
        self.history = UsageHistory()
        # Set once the reader has read `batch.results` up to where it ended at start:
        # until then a capped job's spend is not known, so none of its records starts.
        self.results_caught_up = asyncio.Event()

    # -- fed by the reader of batch.jobs and batch.results --------------------------------

    def learn(self, created: JobCreated) -> None:
        """A job announced itself; the first announcement wins."""
        if created.job_id in self._terms:
            return
        cap = Decimal(str(created.max_cost_usd)) if created.max_cost_usd is not None else None
        terms = (
            JobTerms(
                created.task,
                created.task_name,
                cap,
                owner=created.owner,
                priority=created.priority,
                lane=created.lane,
            )
            if created.task is not None
            or cap is not None
            or created.owner is not None
            or created.priority is not None
            or created.lane is not None
            else DEFAULT_TERMS
        )
        self._terms[created.job_id] = terms
        if cap is not None:
            self.spend.watch(created.job_id, cap)
        waiting = self._announced.pop(created.job_id, None)
        if waiting is not None:
            waiting.set()

    def reject(self, job_id: str, reason: str) -> None:
        """The job's `created` event could not be read (it goes to the dead-letter topic):
        its records fail with `reason` rather than run without the job's terms. A valid
        announcement seen earlier wins."""
        if job_id in self._terms:
            return
        self._terms[job_id] = JobTerms(rejected=reason)
        waiting = self._announced.pop(job_id, None)
        if waiting is not None:
            waiting.set()

    def lookup(self, job_id: str) -> tuple[str | None, Priority | None]:
        """(owner, priority) the job's `created` event named; (None, None) when unknown."""
        terms = self._terms.get(job_id)
        return (terms.owner, terms.priority) if terms is not None else (None, None)

    def observe_result(self, job_id: str, value: bytes | None) -> None:
        """An outcome on `batch.results`: counted against its job's cap, if it has one."""
        if not value or not self.spend.is_capped(job_id):
            return
        try:
            result = ResultEvent.model_validate_json(value)
        except ValidationError:
            return  # the aggregate agent dead-letters it
        self.spend.settle(job_id, result.index, self.cost_of(result))
        self._changed(job_id)

    # -- asked by the process agent ------------------------------------------------------

    async def admit(self, record: RecordEvent) -> PreparedTask | ResultEvent:
        """The record's task, or the outcome it gets without a call: skipped when its job
        reached its spending cap, failed when its job's task cannot be sent. Raises
        JobNeverAnnounced for a `created_follows` record whose job was never announced."""
        terms = await self._terms_of(record.job_id, created_follows=bool(record.created_follows))
        if terms.never_announced:
            raise JobNeverAnnounced(
                f"job {record.job_id} was never announced on batch.jobs: its submit failed "
                "before the end, so its records are not run"
            )
        if terms.rejected is not None:
            return _outcome(record, f"the job's created event was refused: {terms.rejected}")
        try:
            task = self._task(record.job_id, terms)
        except InsightStreamError as exc:
            return _outcome(record, f"the job's task cannot be used: {exc}")
        if terms.max_cost_usd is not None:
            await self.results_caught_up.wait()
            estimate = self.call_estimate(task, record)
            while (
                verdict := self.spend.reserve(record.job_id, record.index, estimate)
            ) is Verdict.WAIT:
                await self._wait_for_change(record.job_id)
            if verdict is Verdict.REFUSE:
                log.info(
                    "spending cap reached: record skipped",
                    job_id=record.job_id,
                    index=record.index,
                    spent_usd=str(self.spend.spent(record.job_id)),
                    cap_usd=str(terms.max_cost_usd),
                )
                return _outcome(record, BUDGET_SKIPPED_ERROR, skipped=True, model=task.model)
        key = result_key(record.job_id, record.index)
        self._chars[key] = (task.fingerprint, task.request_chars(record.record.text))
        return task

    def settle(self, result: ResultEvent) -> None:
        """This worker produced the record's outcome: count its cost and learn from it."""
        key = result_key(result.job_id, result.index)
        usage = Usage.of(result)
        self.spend.settle(result.job_id, result.index, self.cost_of(result))
        self._changed(result.job_id)
        sent = self._chars.pop(key, None)
        if sent is not None and result.success and result.response is not None:
            self.history.observe(
                sent[0], sent[1], usage, result.response.metadata.latency_ms, time.time()
            )

    def release(self, record: RecordEvent) -> None:
        """The record is done here, with or without an outcome: no reservation stays."""
        self._chars.pop(result_key(record.job_id, record.index), None)
        if self.spend.is_capped(record.job_id):
            self.spend.release(record.job_id, record.index)
            self._changed(record.job_id)

    def call_estimate(self, task: PreparedTask, record: RecordEvent) -> Decimal:
        """Expected USD of one call of `record` (what a reservation holds)."""
        per_token = self.history.chars_per_token(task.fingerprint) or CHARS_PER_TOKEN
        input_tokens = int(task.request_chars(record.record.text) / per_token) + 1
        output_tokens = int(expected_output_tokens(task, self.history)[0]) + 1
        price = self._price_of(task.model)
        return price.cost(input_tokens, output_tokens)

    def cost_of(self, result: ResultEvent) -> Decimal:
        """USD `result` cost: its model's price, at the batch rates for a batch-lane one."""
        price = self._price_of(result.model)
        if result.lane == "batch":
            price = at_batch_rates(price)
        return price.cost_of(Usage.of(result))

    def lane_of(self, job_id: str) -> str | None:
        """The lane the job's `created` event named (None: not known, or none named)."""
        terms = self._terms.get(job_id)
        return terms.lane if terms is not None else None

    async def terms_known(self, job_id: str) -> None:
        """Return once the job's terms are known (or taken as the defaults)."""
        await self._terms_of(job_id)

    def task_of(self, job_id: str) -> PreparedTask:
        """The job's prepared task (its terms must be known: `terms_known`). Raises
        InsightStreamError when it cannot be sent."""
        return self._task(job_id, self._terms.get(job_id, DEFAULT_TERMS))

    def prepare(self, spec: TaskSpec | None, name: str | None = None) -> PreparedTask:
        return self._client.prepare(spec, name)

    def price_of(self, model: str | None) -> Price:
        return self._price_of(model)

    def _changed(self, job_id: str) -> None:
        event = self._spend_changed.pop(job_id, None)
        if event is not None:
            event.set()

    async def _wait_for_change(self, job_id: str) -> None:
        event = self._spend_changed.setdefault(job_id, asyncio.Event())
        await event.wait()

    async def _terms_of(self, job_id: str, *, created_follows: bool = False) -> JobTerms:
        terms = self._terms.get(job_id)
        if terms is not None:
            return terms
        waiting = self._announced.setdefault(job_id, asyncio.Event())
        started = time.monotonic()
        wait = self._created_follows_wait if created_follows else self._announce_wait
        try:
            await asyncio.wait_for(waiting.wait(), wait)
        except TimeoutError:
            if job_id in self._terms:  # another record of the job decided meanwhile
                return self._terms[job_id]
            waited = round(time.monotonic() - started, 1)
            if created_follows:
                log.warning(
                    "records of a job whose submit failed: dead-lettered, not run",
                    job_id=job_id,
                    waited_seconds=waited,
                )
                terms = NEVER_ANNOUNCED
            else:
                log.warning(
                    "record of a job never announced on batch.jobs: default task, no cap",
                    job_id=job_id,
                    waited_seconds=waited,
                )
                terms = DEFAULT_TERMS
            self._terms[job_id] = terms
            # The job's other records waiting now learn it at once.
            self._announced.pop(job_id, waiting).set()
            return terms
        return self._terms[job_id]

    def _task(self, job_id: str, terms: JobTerms) -> PreparedTask:
        if terms.task is None:
            return self._client.default_task
        task = self._prepared.get(job_id)
        if task is None:
            check_output_schema(terms.task.output_schema)
            check_task_model(terms.task.model, self._client.model)
            task = self._client.prepare(terms.task, terms.task_name)
            self._prepared[job_id] = task
            if len(self._prepared) > _PREPARED_KEPT:
                self._prepared.popitem(last=False)
        self._prepared.move_to_end(job_id)
        return task


def _outcome(
    record: RecordEvent, error: str, *, skipped: bool = False, model: str | None = None
) -> ResultEvent:
    return ResultEvent(
        job_id=record.job_id,
        index=record.index,
        success=False,
        error=error,
        skipped=True if skipped else None,
        skip_reason="budget_exhausted" if skipped else None,
        record_id=record.record.id,
        attempts=0,
        finished_at=time.time(),
        model=model,
    )
