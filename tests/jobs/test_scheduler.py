"""The scheduler's shares, without Kafka: who gets the next call slot."""

from __future__ import annotations

from collections import Counter

import pytest

from schemas import JobCreated
from stream_app.jobs.job_rules import JobRules
from stream_app.jobs.scheduler import (
    FairScheduler,
    FifoScheduler,
    Ticket,
    record_cost,
    ticket_for,
)


def fill(scheduler: FairScheduler[str], tenant: str, job: str, count: int, **kw: object) -> None:
    for index in range(count):
        scheduler.put(f"{job}:{index}", Ticket(tenant, job, **kw))  # type: ignore[arg-type]


def drain(
    scheduler: FairScheduler[str] | FifoScheduler[str], count: int | None = None
) -> list[str]:
    served: list[str] = []
    while count is None or len(served) < count:
        item = scheduler.pop()
        if item is None:
            break
        served.append(item)
    return served


def job_of(item: str) -> str:
    return item.partition(":")[0]


def test_a_small_job_behind_a_big_one_is_served_at_once_and_alternates() -> None:
    scheduler: FairScheduler[str] = FairScheduler()
    fill(scheduler, "", "big", 600)
    drain(scheduler, 3)  # the big job ran alone for a while
    fill(scheduler, "", "small", 5)
    served = drain(scheduler, 10)
    # Round robin from the moment it arrives: small, big, small, big...
    assert [job_of(i) for i in served].count("small") == 5
    assert max(i for i, item in enumerate(served) if job_of(item) == "small") <= 9
    assert job_of(served[0]) == "small" or job_of(served[1]) == "small"
    # Within a job, records keep their order.
    assert [i for i in served if job_of(i) == "small"] == [f"small:{n}" for n in range(5)]


def test_fifo_serves_in_arrival_order() -> None:
    scheduler: FifoScheduler[str] = FifoScheduler()
    for item in ("big:0", "big:1", "small:0"):
        scheduler.put(item, Ticket("", job_of(item)))
    assert drain(scheduler) == ["big:0", "big:1", "small:0"]


def test_tenants_share_equally_whatever_their_number_of_jobs() -> None:
    scheduler: FairScheduler[str] = FairScheduler()
    for n in range(10):
        fill(scheduler, "a", f"a{n}", 100)
    fill(scheduler, "b", "b0", 1000)
    served = drain(scheduler, 400)
    by_tenant = Counter("b" if job_of(i) == "b0" else "a" for i in served)
    assert by_tenant == {"a": 200, "b": 200}
    # Tenant a's half is split between its ten jobs.
    by_job = Counter(job_of(i) for i in served if job_of(i) != "b0")
    assert set(by_job.values()) == {20}


def test_high_gets_four_times_normal_and_low_waits_for_both() -> None:
    scheduler: FairScheduler[str] = FairScheduler()
    fill(scheduler, "", "normal", 100, priority="normal")
    fill(scheduler, "", "high", 100, priority="high")
    fill(scheduler, "", "low", 100, priority="low")
    served = drain(scheduler, 100)
    counts = Counter(job_of(i) for i in served)
    assert counts == {"high": 80, "normal": 20}
    rest = drain(scheduler)
    # Low starts only once nothing of a higher tier waits.
    assert [job_of(i) for i in rest[-100:]] == ["low"] * 100


def test_a_high_job_of_another_tenant_also_gets_the_larger_share() -> None:
    scheduler: FairScheduler[str] = FairScheduler()
    fill(scheduler, "a", "a-normal", 100)
    fill(scheduler, "b", "b-high", 100, priority="high")
    counts = Counter(job_of(i) for i in drain(scheduler, 50))
    assert counts == {"b-high": 40, "a-normal": 10}


def test_a_job_that_comes_back_gets_no_credit_for_its_idle_time() -> None:
    scheduler: FairScheduler[str] = FairScheduler()
    fill(scheduler, "", "big", 300)
    fill(scheduler, "", "small", 1)
    drain(scheduler, 200)  # small left after its one record; big ran alone
    fill(scheduler, "", "small", 50)
    counts = Counter(job_of(i) for i in drain(scheduler, 40))
    assert counts == {"big": 20, "small": 20}


def test_cost_weighs_records_that_use_more_of_the_budget() -> None:
    scheduler: FairScheduler[str] = FairScheduler()
    for n in range(100):
        scheduler.put(f"long:{n}", Ticket("", "long", cost=3.0))
        scheduler.put(f"short:{n}", Ticket("", "short", cost=1.0))
    counts = Counter(job_of(i) for i in drain(scheduler, 40))
    assert counts == {"long": 10, "short": 30}


def test_remove_takes_out_records_and_forgets_empty_jobs() -> None:
    scheduler: FairScheduler[str] = FairScheduler()
    fill(scheduler, "a", "x", 4)
    fill(scheduler, "b", "y", 2)
    removed = scheduler.remove(lambda item: item.endswith((":0", ":1")))
    assert sorted(removed) == ["x:0", "x:1", "y:0", "y:1"]
    assert len(scheduler) == 2 and scheduler.waiting() == {"x": 2}
    assert drain(scheduler) == ["x:2", "x:3"]
    assert scheduler.waiting() == {} and len(scheduler) == 0


def test_record_cost_is_one_request_unless_a_token_limit_binds() -> None:
    assert record_cost(
        400,
        requests_per_minute=50,
        input_tokens_per_minute=None,
        output_tokens_per_minute=None,
        output_tokens_estimate=256,
    ) == pytest.approx(1.0)
    # 50 rpm and 10,000 input tokens a minute: 200 tokens a request. A 4,000-byte record
    # (about 1,000 tokens) uses five requests' worth of the input limit.
    assert record_cost(
        4000,
        requests_per_minute=50,
        input_tokens_per_minute=10_000,
        output_tokens_per_minute=None,
        output_tokens_estimate=256,
    ) == pytest.approx(5.0)
    assert record_cost(
        400,
        requests_per_minute=50,
        input_tokens_per_minute=None,
        output_tokens_per_minute=5_000,
        output_tokens_estimate=300,
    ) == pytest.approx(3.0)


def test_a_ticket_takes_the_record_fields_then_the_job_directory_then_defaults() -> None:
    directory = JobRules(None, lambda model: None)  # type: ignore[arg-type]
    directory.learn(JobCreated(job_id="j1", total_records=1, owner="team-a", priority="high"))
    assert ticket_for("j1", None, None, directory) == Ticket("team-a", "j1", "high")
    assert ticket_for("j1", "team-b", "low", directory) == Ticket("team-b", "j1", "low")
    assert ticket_for("j9", None, None, directory) == Ticket("", "j9", "normal")
    assert ticket_for("j9", None, "urgent", directory).priority == "normal"
    # A job announced with neither owner nor priority: the defaults.
    directory.learn(JobCreated(job_id="j2", total_records=1))
    assert ticket_for("j2", None, None, directory) == Ticket("", "j2", "normal")
