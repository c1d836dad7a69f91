"""One record through the real anthropic SDK against the simulator: retries and isolation."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from schemas import BatchRecord, RecordEvent
from simulator.testing import SimulatorHandle
from stream_app.llm import InsightClient, build_anthropic_client
from stream_app.processing import RecordProcessor, RetryPolicy
from stream_app.ratelimit import RateBudget

TEXT = "The export button crashes the app every time. Customers are angry and want refunds."


@pytest.fixture
async def make_processor(simulator: SimulatorHandle) -> AsyncIterator[object]:
    clients = []

    def make(retries: int = 1) -> RecordProcessor:
        client = build_anthropic_client(api_key="sk-x", base_url=simulator.base_url, timeout=10)
        clients.append(client)
        return RecordProcessor(
            client=InsightClient(client, model="claude-sonnet-4-6", max_tokens=512),
            budget=RateBudget(6000),
            policy=RetryPolicy(retries=retries, backoff_seconds=0.01),
        )

    yield make
    for client in clients:
        await client.close()


def event(text: str, index: int = 0) -> RecordEvent:
    return RecordEvent(job_id="job-1", index=index, record=BatchRecord(text=text, id="r-1"))


async def test_success_carries_insight_and_exact_usage(make_processor, simulator) -> None:
    result = await make_processor().process(event(TEXT, index=3))
    assert result.success and result.index == 3 and result.record_id == "r-1"
    assert result.response is not None
    assert result.response.summary and result.response.summary in TEXT
    stats = simulator.stats()
    assert result.input_tokens == stats["total_input_tokens_billed"]
    assert result.output_tokens == stats["total_output_tokens_billed"]
    meta = result.response.metadata
    assert meta.tokens_used == result.input_tokens + result.output_tokens
    assert (meta.attempts, meta.model) == (1, "claude-sonnet-4-6")


@pytest.mark.parametrize(
    "marker",
    [
        "[[sim:fail-500-once]]",
        "[[sim:overloaded-once]]",
        "[[sim:bad-json-once]]",
        "[[sim:fail-408-once]]",
        "[[sim:fail-409-once]]",
    ],
)
async def test_transient_failure_is_retried_once(make_processor, simulator, marker) -> None:
    result = await make_processor(retries=1).process(event(f"{TEXT} {marker}"))
    assert result.success, result.error
    assert result.attempts == 2
    stats = simulator.stats()
    assert len(stats["requests"]) == 2
    # Every billed attempt counts, the invalid structured output included.
    assert result.input_tokens == stats["total_input_tokens_billed"]
    assert result.output_tokens == stats["total_output_tokens_billed"]


async def test_retries_run_out(make_processor, simulator) -> None:
    result = await make_processor(retries=2).process(event(f"{TEXT} [[sim:fail-500-always]]"))
    assert not result.success
    assert result.attempts == 3
    assert result.error is not None and result.error.startswith("HTTP 500")
    assert len(simulator.stats()["requests"]) == 3


async def test_client_error_fails_at_once_with_provider_message(make_processor, simulator):
    result = await make_processor(retries=3).process(event(f"{TEXT} [[sim:fail-400]]"))
    assert not result.success
    assert result.attempts == 1
    assert result.error is not None and "HTTP 400 invalid_request_error" in result.error
    assert len(simulator.stats()["requests"]) == 1
    assert "sk-x" not in result.error


async def test_429_does_not_use_up_retries(make_processor, simulator) -> None:
    processor = make_processor(retries=0)
    result = await processor.process(event(f"{TEXT} [[sim:429-once]]"))
    assert result.success, result.error
    assert result.attempts == 2
    assert processor.budget.throttled_count == 1
    assert simulator.stats()["by_status"] == {"429": 1, "200": 1}
