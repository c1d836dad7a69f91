"""GET /metrics on the real service: the counters equal the job's own numbers."""

from __future__ import annotations

from decimal import Decimal

import httpx
import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from schemas import RecordEvent, ResultEvent
from simulator.testing import SimulatorHandle
from stream_app.core.metrics import MeteredTransport, WorkerMetrics
from stream_app.jobs.cancellation import skipped_outcome
from tests.conftest import StartService
from tests.support import Namespace, submit, wait_completed, wait_until

SECRET = "sk-test-secret-do-not-log"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: httpx.Client) -> Samples:
    reply = client.get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    assert SECRET not in reply.text
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_counters_equal_the_jobs_numbers(
    start: StartService, simulator: SimulatorHandle, namespace: Namespace
) -> None:
    simulator.configure(latency_ms=40)
    service = start(batch_max_concurrent_llm_calls=3)
    texts = [
        f"Incident {i}: the nightly export stopped at 02:00 and the dashboards are empty."
        for i in range(12)
    ]
    texts[2] += " [[sim:fail-400]]"
    texts[7] += " [[sim:fail-400]]"
    texts[4] += " [[sim:fail-500-once]]"  # one retry
    texts[9] += " [[sim:429-once]]"  # one call again after the pause
    with service.client() as client:
        job_id = submit(client, texts)
        body = wait_completed(client, job_id)
        # Offsets are committed every few seconds; then nothing is left to read.
        records_topic = namespace.topics["records"]

        def caught_up() -> Samples | None:
            samples = scrape(client)
            lags = {k: v for k, v in samples.items() if k[0] == "insight_consumer_lag"}
            on_records = [v for k, v in lags.items() if ("topic", records_topic) in k[1]]
            return samples if len(on_records) == 4 and sum(on_records) == 0 else None

        samples = wait_until(caught_up, timeout=30, interval=0.5, what="consumer lag 0")

    sim = simulator.stats()
    calls = sum(sim["by_status"].values())
    assert body["completed_count"] == 10 and body["failed_count"] == 2
    assert value(samples, "insight_records_total", outcome="succeeded") == 10
    assert value(samples, "insight_records_total", outcome="failed") == 2
    assert value(samples, "insight_records_total", outcome="skipped") == 0
    assert value(samples, "insight_records_retried_total") == 2
    assert value(samples, "insight_record_retry_calls_total") == calls - 12
    for status_code, count in sim["by_status"].items():
        assert value(samples, "insight_provider_calls_total", status=status_code) == count
    assert sim["by_status"] == {"200": 10, "400": 2, "429": 1, "500": 1}
    assert value(samples, "insight_llm_latency_seconds_count") == calls
    assert value(samples, "insight_rate_limit_wait_seconds_count") == calls
    assert value(samples, "insight_tokens_total", kind="input_tokens") == body["input_tokens"]
    assert value(samples, "insight_tokens_total", kind="output_tokens") == body["output_tokens"]
    assert body["input_tokens"] == sim["total_input_tokens_billed"]
    cost = Decimal(str(value(samples, "insight_cost_usd_total")))
    assert abs(cost - Decimal(str(body["estimated_cost"]))) < Decimal("1e-9")
    assert value(samples, "insight_provider_calls_in_flight") == 0
    assert value(samples, "insight_jobs", state="completed") == 1
    assert value(samples, "insight_jobs", state="running") == 0
    assert value(samples, "insight_budget_share") == 1.0
    assert value(samples, "insight_budget_requests_per_minute") == 6000


def counter(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    assert found is not None, (name, labels)
    return found


def test_outcomes_are_counted_by_kind() -> None:
    metrics = WorkerMetrics()
    metrics.outcome(
        ResultEvent(
            job_id="j", index=0, success=True, input_tokens=10, output_tokens=4, attempts=3
        ),
        Decimal("0.25"),
    )
    metrics.outcome(
        skipped_outcome(
            RecordEvent.model_validate({"job_id": "j", "index": 1, "record": {"text": "t"}})
        ),
        Decimal(0),
    )
    assert counter(metrics, "insight_records_total", outcome="succeeded") == 1
    assert counter(metrics, "insight_records_total", outcome="skipped") == 1
    assert counter(metrics, "insight_records_retried_total") == 1
    assert counter(metrics, "insight_record_retry_calls_total") == 2
    assert counter(metrics, "insight_tokens_total", kind="input_tokens") == 10
    assert counter(metrics, "insight_tokens_total", kind="cache_read_input_tokens") == 0
    assert counter(metrics, "insight_cost_usd_total") == 0.25


async def test_the_transport_counts_calls_by_status() -> None:
    metrics = WorkerMetrics()
    answers = iter([httpx2.Response(200), httpx2.Response(429)])

    def provider(request: httpx2.Request) -> httpx2.Response:
        assert counter(metrics, "insight_provider_calls_in_flight") == 1
        if request.url.path == "/down/v1/messages":
            raise httpx2.ConnectError("refused")
        return next(answers)

    transport = MeteredTransport(httpx2.MockTransport(provider), metrics)
    async with httpx2.AsyncClient(transport=transport, base_url="http://p") as client:
        await client.post("/v1/messages")
        await client.post("/v1/messages")
        with pytest.raises(httpx2.ConnectError):
            await client.post("/down/v1/messages")
    assert counter(metrics, "insight_provider_calls_total", status="200") == 1
    assert counter(metrics, "insight_provider_calls_total", status="429") == 1
    assert counter(metrics, "insight_provider_calls_total", status="error") == 1
    assert counter(metrics, "insight_llm_latency_seconds_count") == 2
    assert counter(metrics, "insight_provider_calls_in_flight") == 0
