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
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal

import orjson

from schemas import JobCreated, RecordEvent, ResultEvent, TaskSpec
from schemas.http import Priority
from stream_app.core.exceptions import InsightStreamError, JobNeverAnnounced
from stream_app.core.logs import get_logger
from stream_app.jobs.aggregation import result_key
from stream_app.jobs.estimate import UsageHistory, expected_output_tokens
from stream_app.jobs.lanes import parse_deadline
from stream_app.jobs.spend_ledger import (
    LocalSpend,
    SpendGrants,
    Verdict,
    job_ledger,
    tenant_ledger,
)
from stream_app.jobs.tasks import check_task_model
from stream_app.provider.batches import at_batch_rates
from stream_app.provider.client import InsightClient
from stream_app.provider.pricing import BATCH_DISCOUNT, Price
from stream_app.provider.request import CHARS_PER_TOKEN, PreparedTask
from stream_app.provider.task_schema import check_output_schema
from stream_app.provider.usage import Usage

log = get_logger(__name__)

BUDGET_SKIPPED_ERROR = "skipped: the job's spending cap (max_cost_usd) was reached"
TENANT_SKIPPED_ERROR = "skipped: the tenant's monthly budget (TENANT_BUDGETS) was reached"
_PREPARED_KEPT = 256
_UNPLACED_JOBS_KEPT = 1000


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
        spend: SpendGrants | None = None,
        tenant_budgets: Mapping[str, Decimal] | None = None,
    ) -> None:
        self._client = client
        self._price_of = price_of
        self._announce_wait = announce_wait_seconds
        self._created_follows_wait = created_follows_wait_seconds
        self._terms: dict[str, JobTerms] = {}
        # Each announced job's record count (the batch lane cuts a provider batch when a
        # job's last record has reached it).
        self._totals: dict[str, int] = {}
        # Each announced job's deadline (Unix time), when it gave one.
        self._deadlines: dict[str, float] = {}
        self._announced: dict[str, asyncio.Event] = {}
        self._prepared: OrderedDict[str, PreparedTask] = OrderedDict()
        self._chars: dict[str, tuple[str, int]] = {}
        # Reservations of capped jobs and budgeted tenants, decided alike by every worker
        # (stream_app.jobs.spend_ledger); the ledgers each record of this worker reserved in.
        self.spend: SpendGrants = spend or LocalSpend()
        self.tenant_budgets: Mapping[str, Decimal] = tenant_budgets or {}
        self._reserved: dict[str, tuple[str, list[str]]] = {}
        self.history = UsageHistory()
        # Output tokens of successful results whose job's terms are not read yet (results
        # and job events are read apart): folded into the history when the job is learnt.
        self._unplaced_outputs: dict[str, list[int]] = {}
        # The next offset of each batch.results partition the history has not counted.
        self._results_read: dict[int, int] = {}
        # Set once the reader has read `batch.results` up to where it ended at start.
        self.results_caught_up = asyncio.Event()

    # -- fed by the reader of batch.jobs and batch.results --------------------------------

    def learn(self, created: JobCreated) -> None:
        """A job announced itself; the first announcement wins."""
        if created.job_id in self._terms:
            return
        self._totals[created.job_id] = created.total_records
        if created.deadline is not None:
            self._deadlines[created.job_id] = parse_deadline(created.deadline)
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
        for tokens in self._unplaced_outputs.pop(created.job_id, ()):
            self._learn_output(created.job_id, tokens)
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
        self._unplaced_outputs.pop(job_id, None)
        waiting = self._announced.pop(job_id, None)
        if waiting is not None:
            waiting.set()

    def lookup(self, job_id: str) -> tuple[str | None, Priority | None]:
        """(owner, priority) the job's `created` event named; (None, None) when unknown."""
        terms = self._terms.get(job_id)
        return (terms.owner, terms.priority) if terms is not None else (None, None)

    def observe_result(
        self, job_id: str, value: bytes | None, position: tuple[int, int] | None = None
    ) -> None:
        """An outcome on `batch.results` (any worker's, read from the beginning at start) at
        `position` (partition, offset): its output tokens, if it succeeded, go to the usage
        history of its task (the estimate's), once even when the reader reads the topic
        again after a broker error. Spend is counted in `batch.spend`, not here."""
        if position is not None:
            partition, offset = position
            if offset < self._results_read.get(partition, 0):
                return
            self._results_read[partition] = offset + 1
        if value:
            self._observe_output(job_id, value)

    def _observe_output(self, job_id: str, value: bytes) -> None:
        # Every worker reads every result: a plain JSON read of two fields, not a model's.
        try:
            data = orjson.loads(value)
        except orjson.JSONDecodeError:
            return
        if not isinstance(data, dict) or data.get("success") is not True:
            return
        tokens = data.get("output_tokens")
        if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0:
            self._learn_output(job_id, tokens)

    def _learn_output(self, job_id: str, tokens: int) -> None:
        terms = self._terms.get(job_id)
        if terms is None:
            self._unplaced_outputs.setdefault(job_id, []).append(tokens)
            if len(self._unplaced_outputs) > _UNPLACED_JOBS_KEPT:
                # Results of jobs whose announcement is gone (retention) never get placed.
                del self._unplaced_outputs[next(iter(self._unplaced_outputs))]
            return
        if terms.rejected is not None or terms.never_announced:
            return
        try:
            task = self._task(job_id, terms)
        except InsightStreamError:
            return
        self.history.observe_output(task.fingerprint, tokens)

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
        if terms.lane == "batch" and record.lane != "live":
            # The batch lane reserves it at the batch rates before its provider batch is
            # created (`reserve_batch_request`): a live reservation here would count it
            # twice, and wait on batches that settle only when they end.
            return task
        # A retry round is asked for by the job's owner after the job ended: its records are
        # not held to the job's own cap (cap-skipped records could never run again), only
        # to the tenant's budget (docs/lifecycle.md).
        limits = self._limits(record.job_id, terms, job_cap=not record.retry)
        if limits:
            _, refused = await self._reserve(record, task, limits)
            if refused is not None:
                log.info(
                    "spend limit reached: record skipped",
                    job_id=record.job_id,
                    index=record.index,
                    ledger=refused,
                    spent_usd=str(self.spend.ledgers.spent(refused)),
                )
                error = BUDGET_SKIPPED_ERROR if refused.startswith("job:") else TENANT_SKIPPED_ERROR
                return _outcome(record, error, skipped=True, model=task.model)
        key = result_key(record.job_id, record.index)
        self._chars[key] = (task.fingerprint, task.request_chars(record.record.text))
        return task

    def settle(self, result: ResultEvent, *, batch_lane: bool = False) -> None:
        """This worker produced the record's outcome: count its cost in the ledgers it
        reserved in, and learn from it. `batch_lane`: the batch lane produced it (its
        reservations are kept apart from the process agent's, which releases its own
        when it hands a record over)."""
        key = (
            _lane_key_of(result.job_id, result.index)
            if batch_lane
            else result_key(result.job_id, result.index)
        )
        usage = Usage.of(result)
        reserved = self._reserved.pop(key, None)
        if reserved is not None:
            reservation, ledgers = reserved
            cost = self.cost_of(result)
            for ledger in ledgers:
                self.spend.settle(ledger, reservation, cost)
        sent = self._chars.pop(key, None)
        if sent is not None and result.success and result.response is not None:
            self.history.observe(
                sent[0], sent[1], usage, result.response.metadata.latency_ms, time.time()
            )

    def release(self, record: RecordEvent, *, batch_lane: bool = False) -> None:
        """The record is done here, with or without an outcome: no reservation stays
        (`batch_lane`: the batch lane's reservation of it)."""
        key = _lane_key(record) if batch_lane else result_key(record.job_id, record.index)
        self._chars.pop(key, None)
        reserved = self._reserved.pop(key, None)
        if reserved is not None:
            reservation, ledgers = reserved
            for ledger in ledgers:
                self.spend.release(ledger, reservation)

    def _limits(
        self, job_id: str, terms: JobTerms, *, job_cap: bool = True
    ) -> list[tuple[str, Decimal]]:
        """(ledger, USD limit) a call of the job must fit: its cap (unless `job_cap` is
        False), its tenant's budget."""
        limits = []
        if job_cap and terms.max_cost_usd is not None:
            limits.append((job_ledger(job_id), terms.max_cost_usd))
        budget = self.tenant_budgets.get(terms.owner) if terms.owner is not None else None
        if budget is not None:
            limits.append((tenant_ledger(terms.owner or ""), budget))
        return limits

    def tenant_exhausted(self, tenant: str | None) -> bool:
        """Whether `tenant` has a budget (TENANT_BUDGETS) that this month's spend reached."""
        budget = self.tenant_budgets.get(tenant) if tenant is not None else None
        if budget is None:
            return False
        return self.spend.ledgers.exhausted(tenant_ledger(tenant or ""), budget)

    def tenant_spent(self, tenant: str) -> Decimal:
        """What `tenant`'s jobs billed this calendar month (UTC), USD, as `batch.spend`
        has been read (only tenants with a budget are counted)."""
        return self.spend.ledgers.spent(tenant_ledger(tenant))

    def tenant_budget(self, tenant: str | None) -> dict[str, object] | None:
        """`{"tenant", "budget_usd", "spent_usd", "month", "exhausted"}` for a tenant with a
        budget, else None."""
        budget = self.tenant_budgets.get(tenant) if tenant is not None else None
        if budget is None or tenant is None:
            return None
        ledger = tenant_ledger(tenant)
        return {
            "tenant": tenant,
            "budget_usd": float(budget),
            "spent_usd": float(round(self.spend.ledgers.spent(ledger), 6)),
            "month": ledger.rsplit(":", 1)[1],
            "exhausted": self.tenant_exhausted(tenant),
        }

    async def reserve_batch_request(
        self, record: RecordEvent, task: PreparedTask, token: str | None = None
    ) -> Verdict:
        """Reserve a Message Batches request of `record` at the batch rates in the ledgers
        of its job (its cap, its tenant's budget). ADMIT (also when the job has no limit),
        REFUSE (skip the record), or WAIT: a ledger cannot take it before calls in flight
        settle, and the batch lane creates its provider batch without it. Never waits: a
        provider batch's requests settle only once it ends. `token`: the provider batch's
        (the reservation's id ends with it, so `renew_batch` keeps them all)."""
        terms = self._terms.get(record.job_id, DEFAULT_TERMS)
        # A retry round is held to the tenant's budget only, as on the live lane.
        limits = self._limits(record.job_id, terms, job_cap=not record.retry)
        if not limits:
            return Verdict.ADMIT
        verdict, _ = await self._reserve(
            record,
            task,
            limits,
            factor=BATCH_DISCOUNT,
            wait=False,
            key=_lane_key(record),
            token=token,
        )
        return verdict

    def batch_reservations(self, job_id: str, indexes: list[int]) -> dict[str, list[int]]:
        """The ledgers the batch lane's reservations of these records of the job are in:
        {ledger: [index, ...]} (what a provider batch's intent keeps, so a worker that
        takes the batch over keeps them: `adopt_batch_reservations`)."""
        found: dict[str, list[int]] = {}
        for index in indexes:
            reserved = self._reserved.get(_lane_key_of(job_id, index))
            for ledger in reserved[1] if reserved is not None else []:
                found.setdefault(ledger, []).append(index)
        return found

    def adopt_batch_reservations(
        self, job_id: str, token: str, ledgers: dict[str, list[int]]
    ) -> None:
        """Take over the reservations of a provider batch another worker made (its
        `token`, `batch_reservations`' answer): this worker settles, releases and renews
        them from now on."""
        by_index: dict[int, list[str]] = {}
        for ledger, indexes in ledgers.items():
            for index in indexes:
                by_index.setdefault(int(index), []).append(ledger)
        for index, held in by_index.items():
            key = _lane_key_of(job_id, index)
            self._reserved.setdefault(key, (f"{key}:{token}", held))

    def release_batch_request(self, job_id: str, index: int) -> None:
        """The batch lane's reservation of the job's record `index` made no call after all
        (its provider batch was never created): released."""
        reserved = self._reserved.pop(_lane_key_of(job_id, index), None)
        if reserved is not None:
            reservation, ledgers = reserved
            for ledger in ledgers:
                self.spend.release(ledger, reservation)

    def renew_batch(self, token: str, ledgers: list[str]) -> None:
        """A provider batch is still in flight: every reservation of it (ids ending with
        `token`) in `ledgers` is kept for another reservation TTL (spend_ledger's `renew`)."""
        for ledger in ledgers:
            self.spend.renew(ledger, f"*:{token}")

    async def _reserve(
        self,
        record: RecordEvent,
        task: PreparedTask,
        limits: list[tuple[str, Decimal]],
        *,
        factor: Decimal = Decimal(1),
        wait: bool = True,
        key: str | None = None,
        token: str | None = None,
    ) -> tuple[Verdict, str | None]:
        """Reserve the record's call (its estimate and its most, times `factor`) in every
        ledger of `limits`: (ADMIT, None) when all admitted it, else the verdict and the
        ledger that gave it (the reservations made are released). Each reservation has an
        id of its own: a record run twice (by two workers around a rebalance) is two calls
        the provider bills, and the ledgers count both (`token`: the id's end, a fresh one
        when None)."""
        key = key or result_key(record.job_id, record.index)
        reservation = f"{key}:{token or uuid.uuid4().hex[:12]}"
        expected = self.call_estimate(task, record) * factor
        most = self.call_most(task, record) * factor
        granted: list[str] = []
        self._reserved[key] = (reservation, granted)
        for ledger, limit in limits:
            verdict = await self.spend.reserve(
                ledger, reservation, expected, most, limit, wait=wait
            )
            if verdict is not Verdict.ADMIT:
                for done in granted:
                    self.spend.release(done, reservation)
                self._reserved.pop(key, None)
                return verdict, ledger
            granted.append(ledger)
        return Verdict.ADMIT, None

    def call_estimate(self, task: PreparedTask, record: RecordEvent) -> Decimal:
        """Expected USD of one call of `record` (what a reservation holds)."""
        per_token = self.history.chars_per_token(task.fingerprint) or CHARS_PER_TOKEN
        input_tokens = int(task.request_chars(record.record.text) / per_token) + 1
        output_tokens = int(expected_output_tokens(task, self.history)[0]) + 1
        price = self._price_of(task.model)
        return price.cost(input_tokens, output_tokens)

    def call_most(self, task: PreparedTask, record: RecordEvent) -> Decimal:
        """The most one call of `record` can cost (USD): its prompt, at 3 characters a
        token (denser than any text this service sends), and max_tokens of output."""
        input_tokens = task.request_chars(record.record.text) // 3 + 1
        return self._price_of(task.model).cost(input_tokens, task.max_tokens)

    @property
    def client(self) -> InsightClient:
        """The provider client the records' calls go through (token counting too)."""
        return self._client

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

    def deadline_of(self, job_id: str) -> float | None:
        """The job's deadline (Unix time), None when it gave none (or is not read yet)."""
        return self._deadlines.get(job_id)

    def total_of(self, job_id: str) -> int | None:
        """How many records the job's `created` event announced (None: not read yet)."""
        return self._totals.get(job_id)

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


def _lane_key(record: RecordEvent) -> str:
    return _lane_key_of(record.job_id, record.index)


def _lane_key_of(job_id: str, index: int) -> str:
    """Where the batch lane's reservation of a record is kept (apart from the process
    agent's, under `result_key`)."""
    return f"lane:{result_key(job_id, index)}"


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
        input_metadata=record.record.metadata or None,
        attempts=0,
        finished_at=time.time(),
        model=model,
    )
