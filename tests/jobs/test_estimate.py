"""Estimating a job before it runs, and the job directory's terms: pure, no Kafka."""

from __future__ import annotations

import asyncio

from schemas import TaskSpec
from stream_app.jobs.estimate import Pace, UsageHistory, estimate_job, output_chars
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
    # 400 characters a text on average; JSON at 3.5 characters a token.
    assert est.output_tokens == -(-10 * output_chars(SCHEMA, SCHEMA, text_chars=400) * 2 // 7)
    assert est.input_basis == "characters" and est.cost_usd_low < est.cost_usd < est.cost_usd_high
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
    # Output tokens come from batch.results (every worker's), not from this worker's calls.
    assert history.output_tokens(t.fingerprint) is None
    history.observe_output(t.fingerprint, 40)
    history.observe_output(t.fingerprint, 60)
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
    assert rules.lookup("good") == (None, None) and rules._terms["good"].max_cost_usd == 1


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


def test_counted_prompts_are_exact_or_scaled_from_a_sample() -> None:
    from stream_app.jobs.estimate import CountedPrompts

    t = task()
    # Every record counted: the counts are the prompt tokens.
    every = CountedPrompts(prefix_tokens=100, tokens=3 * 100 + 60, chars=240, sampled=3)
    est = estimate_job(
        t, records=3, text_chars=240, price=PRICE, history=UsageHistory(), pace=PACE, counted=every
    )
    assert est.input_tokens == 360 and est.input_basis == "counted"
    # A sample of 2 of 1,000 records: 50 text tokens for 200 characters, 4 a token.
    sample = CountedPrompts(prefix_tokens=100, tokens=2 * 100 + 50, chars=200, sampled=2)
    est = estimate_job(
        t,
        records=1000,
        text_chars=300_000,
        price=PRICE,
        history=UsageHistory(),
        pace=PACE,
        counted=sample,
    )
    assert est.input_tokens == 1000 * 100 + 75_000
    assert est.input_basis == "counted sample of 2"
    # The texts' measured characters per token turn the schema's characters into tokens.
    assert est.output_tokens == -(-1000 * output_chars(SCHEMA, SCHEMA, text_chars=300) // 4)


def test_the_range_narrows_with_a_history() -> None:
    t = task()
    cold = estimate_job(
        t, records=100, text_chars=40_000, price=PRICE, history=UsageHistory(), pace=PACE
    )
    history = UsageHistory()
    for tokens in [50, 70] * 50:
        history.observe_output(t.fingerprint, tokens)
    warm = estimate_job(t, records=100, text_chars=40_000, price=PRICE, history=history, pace=PACE)
    assert cold.cost_usd_low < cold.cost_usd < cold.cost_usd_high
    assert warm.cost_usd_low < warm.cost_usd < warm.cost_usd_high
    width = lambda e: (e.cost_usd_high - e.cost_usd_low) / e.cost_usd  # noqa: E731
    assert width(warm) < width(cold) / 3


def test_the_schema_guess_reads_field_names() -> None:
    schema = {
        "type": "object",
        "properties": {
            "topics": {"type": "array", "items": {"type": "string"}},
            "summary": {"type": "string"},
            "name": {"type": "string"},
        },
    }
    # 3 keywords of 12, a summary of 130 and a string of 100 (no longer than the text).
    assert output_chars(schema, schema) == 2 + (6 + 4 + 2 + 3 * 15) + (7 + 4 + 132) + (4 + 4 + 102)
    assert output_chars(schema, schema, text_chars=50) == output_chars(schema, schema) - 80 - 50


def test_every_workers_results_feed_the_history_once_their_job_is_known() -> None:
    from schemas import JobCreated, ResultEvent
    from stream_app.jobs.job_rules import JobRules
    from stream_app.provider.client import InsightClient

    client = InsightClient(None, model="claude-sonnet-5-5", max_tokens=1024)  # type: ignore[arg-type]
    rules = JobRules(client, lambda model: PRICE)
    spec = TaskSpec(instructions="Triage.", output_schema=SCHEMA)
    fingerprint = client.prepare(spec).fingerprint

    def result(job: str, index: int, output: int, success: bool = True) -> bytes:
        event = ResultEvent(
            job_id=job,
            index=index,
            success=success,
            error=None if success else "x",
            input_tokens=10,
            output_tokens=output,
        )
        return event.model_dump_json().encode()

    # A result read before its job's announcement waits for it.
    rules.observe_result("j", result("j", 0, 30))
    assert rules.history.records(fingerprint) == 0
    rules.learn(JobCreated(job_id="j", total_records=3, task=spec))
    rules.observe_result("j", result("j", 1, 50), (0, 7))
    rules.observe_result("j", result("j", 2, 999, success=False))  # failed: not a sample
    assert rules.history.output_tokens(fingerprint) == 40
    # The reader reads the topic again after a broker error: counted once.
    rules.observe_result("j", result("j", 1, 50), (0, 7))
    assert rules.history.records(fingerprint) == 2
    # The default task's results feed the default task's history.
    rules.learn(JobCreated(job_id="d", total_records=1))
    rules.observe_result("d", result("d", 0, 120))
    assert rules.history.output_tokens(client.default_task.fingerprint) == 120


def test_the_batch_lane_is_priced_at_half_and_takes_the_providers_hour() -> None:
    plain = task()
    backlog = Pace(
        requests_per_minute=60, concurrent_calls=5, latency_seconds=1.0, backlog_records=5000
    )
    live = estimate_job(
        plain, records=100, text_chars=20_000, price=PRICE, history=UsageHistory(), pace=backlog
    )
    batch = estimate_job(
        plain,
        records=100,
        text_chars=20_000,
        price=PRICE,
        history=UsageHistory(),
        pace=backlog,
        batch_seconds=3600.0,
    )
    # Same tokens, every price halved; the live backlog and budget do not count.
    assert (batch.input_tokens, batch.output_tokens) == (live.input_tokens, live.output_tokens)
    assert batch.cost_usd == live.cost_usd / 2
    assert (batch.cost_usd_low, batch.cost_usd_high) == (
        live.cost_usd_low / 2,
        live.cost_usd_high / 2,
    )
    assert live.duration_seconds == 5100.0 and batch.duration_seconds == 3600.0
    # A cached prefix: the batch lane writes it to the 1-hour cache (2x input, not 1.25x),
    # at half the price.
    cached = task("Triage the ticket with care. " * 200)
    batch = estimate_job(
        cached,
        records=100,
        text_chars=20_000,
        price=PRICE,
        history=UsageHistory(),
        pace=PACE,
        batch_seconds=3600.0,
    )
    half = PRICE.at_batch_rates()
    assert batch.cost_usd == half.cost_of(
        Usage(
            input_tokens=batch.input_tokens
            - batch.cache_creation_input_tokens
            - batch.cache_read_input_tokens,
            output_tokens=batch.output_tokens,
            cache_creation_input_tokens=batch.cache_creation_input_tokens,
            cache_read_input_tokens=batch.cache_read_input_tokens,
            cache_creation_1h_input_tokens=batch.cache_creation_input_tokens,
        )
    )
    assert batch.cache_creation_input_tokens > 0
