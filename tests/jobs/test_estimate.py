"""Estimating a job before it runs, and the spending cap's ledger: pure, no Kafka."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from schemas import TaskSpec
from stream_app.jobs.estimate import Pace, UsageHistory, estimate_job, output_chars
from stream_app.jobs.spend_cap import SpendCap, Verdict
from stream_app.provider.pricing import price_for
from stream_app.provider.request import prepare_task
from stream_app.provider.usage import Usage

PRICE = price_for("claude-sonnet-4-6")
SCHEMA = {
    "type": "object",
    "properties": {
        "urgency": {"type": "string", "enum": ["low", "high"]},
        "summary": {"type": "string"},
    },
}


def task(instructions: str = "Triage the ticket."):  # type: ignore[no-untyped-def]
    spec = TaskSpec(instructions=instructions, output_schema=SCHEMA)
    return prepare_task(spec, name=None, default_model="claude-sonnet-4-6", default_max_tokens=1024)


PACE = Pace(requests_per_minute=60, concurrent_calls=5, latency_seconds=1.0)


def test_cold_estimate_counts_characters_and_the_schema() -> None:
    t = task()
    est = estimate_job(
        t, records=10, text_chars=4000, price=PRICE, history=UsageHistory(), pace=PACE
    )
    assert est.input_tokens == -(-(t.prefix_chars * 10 + 4000) // 4)
    assert est.output_basis == "schema"
    assert est.output_tokens == -(-10 * output_chars(SCHEMA, SCHEMA) * 2 // 7)
    assert est.cache_read_input_tokens == 0 and est.cost_usd == est.cost_usd_without_caching
    expected = PRICE.cost(est.input_tokens, est.output_tokens)
    assert est.cost_usd == expected
    # 60 requests a minute is slower than 5 calls of 1 s: one record a second.
    assert est.duration_seconds == 10.0


def test_history_replaces_the_guess() -> None:
    t = task()
    history = UsageHistory()
    history.observe(
        t.fingerprint, chars=1000, usage=Usage(input_tokens=500, output_tokens=40), latency_ms=500
    )
    history.observe(
        t.fingerprint, chars=1000, usage=Usage(input_tokens=500, output_tokens=60), latency_ms=500
    )
    est = estimate_job(t, records=4, text_chars=0, price=PRICE, history=history, pace=PACE)
    assert est.output_tokens == 200 and est.output_basis == "history of 2"
    # 2 characters a token, as billed.
    assert est.input_tokens == -(-(t.prefix_chars * 4) // 2)


def test_a_cached_prefix_is_written_once_per_slot_and_read_after() -> None:
    t = task("Triage the ticket with care. " * 200)
    assert t.cache_prefix
    est = estimate_job(
        t, records=100, text_chars=20_000, price=PRICE, history=UsageHistory(), pace=PACE
    )
    prefix = -(-t.prefix_chars // 4)
    assert est.cache_creation_input_tokens == 5 * prefix
    assert est.cache_read_input_tokens == 95 * prefix
    assert est.cost_usd < est.cost_usd_without_caching / 2
    # A prefix this worker used within the cache's lifetime is read, not written.
    history = UsageHistory()
    history.observe(t.fingerprint, 1000, Usage(input_tokens=250, output_tokens=30), 100, now=1000)
    warm = estimate_job(
        t, records=100, text_chars=20_000, price=PRICE, history=history, pace=PACE, now=1100
    )
    assert warm.cache_creation_input_tokens == 0 and warm.cache_read_input_tokens > 0
    later = estimate_job(
        t, records=100, text_chars=20_000, price=PRICE, history=history, pace=PACE, now=2000
    )
    assert later.cache_creation_input_tokens > 0


def test_backlog_comes_before_the_job() -> None:
    pace = Pace(
        requests_per_minute=600, concurrent_calls=100, latency_seconds=1.0, backlog_records=90
    )
    est = estimate_job(
        task(), records=10, text_chars=100, price=PRICE, history=UsageHistory(), pace=pace
    )
    assert est.duration_seconds == 10.0


def test_spend_cap_reserves_settles_and_stops_for_good() -> None:
    cap = SpendCap()
    assert cap.reserve("free", 0, Decimal(100)) is Verdict.ADMIT  # not capped
    cap.watch("j", Decimal("1.00"))
    assert cap.reserve("j", 0, Decimal("0.40")) is Verdict.ADMIT
    assert cap.reserve("j", 1, Decimal("0.40")) is Verdict.ADMIT
    # 1.20 > 1.00 only with the reservations: wait for the calls in flight.
    assert cap.reserve("j", 2, Decimal("0.40")) is Verdict.WAIT
    cap.settle("j", 0, Decimal("0.10"))
    cap.settle("j", 0, Decimal("0.10"))  # the same outcome read again is counted once
    assert cap.spent("j") == Decimal("0.10")
    assert cap.reserve("j", 2, Decimal("0.40")) is Verdict.ADMIT  # 0.10 + 0.40 + 0.40
    cap.settle("j", 1, Decimal("0.45"))
    cap.settle("j", 2, Decimal("0.40"))
    # The spend alone (0.95) leaves no room: refused, and for good on this worker.
    assert cap.reserve("j", 3, Decimal("0.10")) is Verdict.REFUSE
    assert cap.reserve("j", 4, Decimal("0.01")) is Verdict.REFUSE
    # A record whose outcome is known is never refused (a redelivery re-sends it).
    assert cap.reserve("j", 0, Decimal("5")) is Verdict.ADMIT


def test_outcomes_read_from_batch_results_count_against_the_cap() -> None:
    from schemas import JobCreated, ResultEvent
    from stream_app.jobs.job_rules import JobRules

    rules = JobRules(None, lambda model: PRICE)  # type: ignore[arg-type]
    rules.learn(JobCreated(job_id="j", total_records=3, max_cost_usd=1.0))
    billed = ResultEvent(
        job_id="j", index=0, success=False, error="x", input_tokens=1000, output_tokens=100
    )
    rules.observe_result("j", billed.model_dump_json().encode())
    rules.observe_result("j", b"{not json")  # unreadable: ignored, never raised
    rules.observe_result("free", billed.model_dump_json().encode())  # not capped: ignored
    assert rules.spend.spent("j") == PRICE.cost(1000, 100)
    assert rules.spend.spent("free") == 0


async def test_records_of_a_refused_job_fail_instead_of_running_without_its_terms() -> None:
    from schemas import BatchRecord, JobCreated, RecordEvent, ResultEvent
    from stream_app.jobs.job_rules import JobRules

    rules = JobRules(None, lambda model: PRICE, announce_wait_seconds=30)  # type: ignore[arg-type]
    record = RecordEvent(job_id="bad", index=0, record=BatchRecord(text="hello"))
    waiting = asyncio.create_task(rules.admit(record))  # waits for the job's announcement
    await asyncio.sleep(0)
    rules.reject("bad", "invalid job event: priority: Input should be 'high', 'normal' or 'low'")
    outcome = await asyncio.wait_for(waiting, 5)
    assert isinstance(outcome, ResultEvent) and not outcome.success and not outcome.skipped
    assert "created event was refused" in (outcome.error or "")
    # A valid announcement seen first wins over a later refusal.
    rules.learn(JobCreated(job_id="good", total_records=1, max_cost_usd=1.0))
    rules.reject("good", "late")
    assert rules.spend.is_capped("good")


def test_the_duration_uses_the_median_of_recent_latencies() -> None:
    from stream_app.jobs.estimate import UsageHistory
    from stream_app.provider.usage import Usage

    history = UsageHistory()
    assert history.latency_seconds() is None
    usage = Usage(input_tokens=100, output_tokens=10)
    for _ in range(3):  # held through a configuration stop: 22 s each
        history.observe("task", 400, usage, 22_000)
    for _ in range(UsageHistory.RECENT - 3):
        history.observe("task", 400, usage, 500)
    assert history.latency_seconds() == 0.5  # a few outliers do not move it
    for _ in range(UsageHistory.RECENT):
        history.observe("task", 400, usage, 800)
    assert history.latency_seconds() == 0.8  # only recent records count
