"""Which waiting record goes to the provider next: fair shares between tenants and jobs.

Pure logic (no Kafka, no clock): `stream_app.kafka.lookahead` feeds it the records a worker has
read ahead in `batch.records`, and takes from it whenever a call slot is free.

`FairScheduler` is a two-level weighted fair queue (stride scheduling, i.e. start-time
fair queueing with unit-size packets; deficit round robin gives the same shares with
coarser interleaving). Every tenant and every job carries a virtual *pass*; the tenant
with the lowest pass is served first, and within it the job with the lowest pass; the
record served advances both by `cost / weight`. A job's weight is its priority's
(`high` 4, `normal` 1); a tenant's weight is the largest weight among its waiting jobs,
so a tenant's `high` job also pulls its tenant ahead of tenants with only `normal` work.
A tenant or job that starts waiting again enters at the current virtual time: it gets its
share from now on and cannot claim credit for the time it had nothing to send. `low` jobs
form a tier of their own that is served only when no `high` or `normal` record waits.

With ten jobs of tenant A and one of tenant B waiting, A and B each get half of the
slots; A's half is split ten ways. A record's `cost` is what it takes from the budget in
"requests": 1, or more when a token limit binds (see `record_cost`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, get_args

from schemas.http import Priority
from stream_app.jobs.lanes import LiveQueue

T = TypeVar("T")

PRIORITIES: tuple[Priority, ...] = get_args(Priority)
DEFAULT_PRIORITY: Priority = "normal"
# Share of the budget relative to a `normal` job while both wait. `low` is a tier below.
PRIORITY_WEIGHTS: dict[Priority, float] = {"high": 4.0, "normal": 1.0, "low": 1.0}
_LOW_TIER = 1
# Records without an owner (API_KEYS unset, or an upstream producer that names none).
UNKNOWN_TENANT = ""


def tier_of(priority: Priority) -> int:
    return _LOW_TIER if priority == "low" else 0


@dataclass(frozen=True)
class Ticket:
    """Who a waiting record belongs to, for the scheduler."""

    tenant: str
    job: str
    priority: Priority = DEFAULT_PRIORITY
    cost: float = 1.0


class Scheduler(Protocol[T]):
    """What `stream_app.kafka.lookahead.LookAhead` needs from a scheduling policy."""

    def put(self, item: T, ticket: Ticket) -> None: ...

    def pop(self) -> T | None: ...

    def remove(self, unwanted: Callable[[T], bool]) -> list[T]: ...

    def __len__(self) -> int: ...


class FifoScheduler(Generic[T]):
    """Arrival order: what `batch.records` partitions give without a scheduler
    (BATCH_SCHEDULING=fifo, for comparison)."""

    def __init__(self) -> None:
        self._queue: deque[T] = deque()

    def put(self, item: T, ticket: Ticket) -> None:
        self._queue.append(item)

    def pop(self) -> T | None:
        return self._queue.popleft() if self._queue else None

    def remove(self, unwanted: Callable[[T], bool]) -> list[T]:
        removed = [item for item in self._queue if unwanted(item)]
        if removed:
            self._queue = deque(item for item in self._queue if not unwanted(item))
        return removed

    def __len__(self) -> int:
        return len(self._queue)


@dataclass
class _Job(Generic[T]):
    weight: float
    pass_: float
    items: deque[tuple[T, float]] = field(default_factory=deque)


@dataclass
class _Tenant(Generic[T]):
    pass_: float
    # Virtual time inside the tenant: the pass of the job served last.
    vtime: float = 0.0
    jobs: dict[str, _Job[T]] = field(default_factory=dict)

    @property
    def weight(self) -> float:
        return max(job.weight for job in self.jobs.values())


@dataclass
class _Tier(Generic[T]):
    vtime: float = 0.0
    tenants: dict[str, _Tenant[T]] = field(default_factory=dict)


class FairScheduler(Generic[T]):
    """Weighted fair shares: per tenant first, then per job (see the module's text).

    Memory: one entry per waiting record plus one per tenant and job that has records
    waiting; a job or tenant whose last record leaves is forgotten.
    """

    def __init__(self) -> None:
        self._tiers: dict[int, _Tier[T]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def put(self, item: T, ticket: Ticket) -> None:
        tier = self._tiers.setdefault(tier_of(ticket.priority), _Tier())
        tenant = tier.tenants.get(ticket.tenant)
        if tenant is None:
            tenant = tier.tenants[ticket.tenant] = _Tenant(pass_=tier.vtime, vtime=tier.vtime)
        job = tenant.jobs.get(ticket.job)
        if job is None:
            weight = PRIORITY_WEIGHTS[ticket.priority]
            job = tenant.jobs[ticket.job] = _Job(weight=weight, pass_=tenant.vtime)
        job.items.append((item, max(ticket.cost, 1e-9)))
        self._count += 1

    def pop(self) -> T | None:
        for rank in sorted(self._tiers):
            tier = self._tiers[rank]
            if tier.tenants:
                return self._pop_from(tier)
        return None

    def _pop_from(self, tier: _Tier[T]) -> T:
        # min() keeps the first of equals: ties go to whoever waited first.
        tenant_name = min(tier.tenants, key=lambda name: tier.tenants[name].pass_)
        tenant = tier.tenants[tenant_name]
        job_name = min(tenant.jobs, key=lambda name: tenant.jobs[name].pass_)
        job = tenant.jobs[job_name]
        item, cost = job.items.popleft()
        self._count -= 1
        tier.vtime = tenant.pass_
        tenant.vtime = job.pass_
        tenant_weight = tenant.weight
        job.pass_ += cost / job.weight
        if not job.items:
            del tenant.jobs[job_name]
        if tenant.jobs:
            tenant.pass_ += cost / tenant_weight
        else:
            del tier.tenants[tenant_name]
        return item

    def remove(self, unwanted: Callable[[T], bool]) -> list[T]:
        """Take out every waiting record for which `unwanted` is true (partitions revoked)."""
        removed: list[T] = []
        for tier in self._tiers.values():
            for tenant_name, tenant in list(tier.tenants.items()):
                for job_name, job in list(tenant.jobs.items()):
                    keep = deque(pair for pair in job.items if not unwanted(pair[0]))
                    removed += [pair[0] for pair in job.items if unwanted(pair[0])]
                    job.items = keep
                    if not keep:
                        del tenant.jobs[job_name]
                if not tenant.jobs:
                    del tier.tenants[tenant_name]
        self._count -= len(removed)
        return removed

    def waiting(self) -> dict[str, int]:
        """job id -> records waiting, for logs and tests."""
        return {
            name: len(job.items)
            for tier in self._tiers.values()
            for tenant in tier.tenants.values()
            for name, job in tenant.jobs.items()
        }


def live_queue(scheduler: Scheduler[Any], job_id: str) -> LiveQueue:
    """The records of jobs other than `job_id` waiting in `scheduler` for a call: with fair
    shares, how many jobs they belong to; in FIFO order each record counts as a job of its
    own (all of them are served first)."""
    if isinstance(scheduler, FairScheduler):
        waiting = scheduler.waiting()
        waiting.pop(job_id, None)
        return LiveQueue(jobs=len(waiting), records=sum(waiting.values()))
    return LiveQueue(jobs=len(scheduler), records=len(scheduler))


def record_cost(
    value_bytes: int,
    *,
    requests_per_minute: int,
    input_tokens_per_minute: int | None,
    output_tokens_per_minute: int | None,
    output_tokens_estimate: int,
    chars_per_token: float = 4.0,
) -> float:
    """What a record takes from the provider budget, in requests: 1, or more when a token
    limit binds first (its estimated tokens over one request's share of that limit per
    minute). Shares are then fair in whichever resource is scarce (dominant resource
    fairness), not only in requests. `value_bytes` (the record's JSON) stands for its text.
    """
    cost = 1.0
    if input_tokens_per_minute:
        per_request = input_tokens_per_minute / requests_per_minute
        cost = max(cost, value_bytes / chars_per_token / per_request)
    if output_tokens_per_minute:
        per_request = output_tokens_per_minute / requests_per_minute
        cost = max(cost, output_tokens_estimate / per_request)
    return cost if math.isfinite(cost) else 1.0


class KnownJobs(Protocol):
    """Where the scheduler looks up a job's owner and priority for records that do not
    carry them (stream_app.jobs.job_rules.JobRules, fed from `batch.jobs`)."""

    def lookup(self, job_id: str) -> tuple[str | None, Priority | None]: ...


def ticket_for(
    job_id: str,
    owner: str | None,
    priority: str | None,
    directory: KnownJobs | None = None,
    cost: float = 1.0,
) -> Ticket:
    """The record's own fields win; then what `batch.jobs` said of its job; then defaults
    (unknown tenant, `normal`). An unknown priority name counts as `normal`."""
    if directory is not None and (owner is None or priority is None):
        known_owner, known_priority = directory.lookup(job_id)
        owner = owner if owner is not None else known_owner
        priority = priority if priority is not None else known_priority
    chosen: Priority = DEFAULT_PRIORITY
    for name in PRIORITIES:
        if priority == name:
            chosen = name
    return Ticket(owner or UNKNOWN_TENANT, job_id, chosen, cost)
