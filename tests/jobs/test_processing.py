"""One record through the real anthropic SDK against the simulator: retries and isolation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from schemas import BatchRecord, RecordEvent, ResultEvent
from simulator.testing import SimulatorHandle
from stream_app.jobs.processing import RecordProcessor, RetryPolicy
from stream_app.provider.budget import RateBudget
from stream_app.provider.client import InsightClient, build_anthropic_client

TEXT = "The export button crashes the app every time. Customers are angry and want refunds."


@pytest.fixture
async def make_processor(simulator: SimulatorHandle) -> AsyncIterator[object]:
    clients = []

    def make(retries: int = 1, ceiling: int = 1024) -> RecordProcessor:
        client = build_anthropic_client(api_key="sk-x", base_url=simulator.base_url, timeout=10)
        clients.append(client)
        return RecordProcessor(
            client=InsightClient(
                client, model="claude-sonnet-4-6", max_tokens=512, max_tokens_ceiling=ceiling
            ),
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


def calls(simulator: SimulatorHandle) -> list[tuple[int, int | None, str | None]]:
    return [(r["status"], r["max_tokens"], r["stop_reason"]) for r in simulator.stats()["requests"]]


def assert_billed(result: ResultEvent, simulator: SimulatorHandle) -> None:
    stats = simulator.stats()
    assert result.input_tokens == stats["total_input_tokens_billed"]
    assert result.output_tokens == stats["total_output_tokens_billed"]
    assert result.cache_creation_input_tokens == stats["total_cache_creation_input_tokens_billed"]
    assert result.cache_read_input_tokens == stats["total_cache_read_input_tokens_billed"]


async def test_truncated_output_is_retried_once_with_more_room(make_processor, simulator):
    result = await make_processor(retries=0).process(event(f"{TEXT} [[sim:needs-tokens=800]]"))
    assert result.success, result.error
    assert calls(simulator) == [(200, 512, "max_tokens"), (200, 1024, "end_turn")]
    assert result.output_tokens == 512 + 800 and result.attempts == 2
    assert_billed(result, simulator)


async def test_output_truncated_even_with_more_room_fails_saying_so(make_processor, simulator):
    result = await make_processor(retries=3).process(event(f"{TEXT} [[sim:max-tokens]]"))
    assert not result.success
    assert (
        result.error == "output truncated at 1024 tokens (stop_reason max_tokens, max_tokens 1024)"
    )
    assert calls(simulator) == [(200, 512, "max_tokens"), (200, 1024, "max_tokens")]
    assert_billed(result, simulator)


@pytest.mark.parametrize(
    ("marker", "error", "attempts"),
    [
        ("refusal", "the model declined to answer this record (stop_reason refusal)", 1),
        (
            "context-window",
            "the record does not fit the model's context window "
            "(stop_reason model_context_window_exceeded)",
            1,
        ),
        ("empty", "the model returned no content (stop_reason end_turn)", 3),
        ("pause-turn", "the model paused its turn before answering (stop_reason pause_turn)", 3),
        ("prompt-too-long", "HTTP 400 invalid_request_error: prompt is too long: 210345", 1),
        ("413", "HTTP 413 request_too_large: Request exceeds the maximum allowed", 1),
    ],
)
async def test_named_outcomes(make_processor, simulator, marker, error, attempts) -> None:
    processor = make_processor(retries=2)
    result = await processor.process(event(f"{TEXT} [[sim:{marker}]]"))
    assert not result.success
    assert result.error is not None and result.error.startswith(error)
    assert result.attempts == attempts == len(simulator.stats()["requests"])
    assert_billed(result, simulator)
    assert not processor.breaker.is_open  # the provider works: these are the record's


async def test_cache_tokens_are_billed_to_the_record(make_processor, simulator) -> None:
    text = f"{TEXT} [[sim:cache-write=1000]] [[sim:cache-write-1h=300]] [[sim:cache-read=2000]]"
    result = await make_processor().process(event(text))
    assert result.success
    assert (result.cache_creation_input_tokens, result.cache_read_input_tokens) == (1300, 2000)
    assert result.cache_creation_1h_input_tokens == 300
    assert_billed(result, simulator)
    assert result.response is not None
    meta = result.response.metadata
    assert (
        meta.tokens_used == result.tokens_used == result.input_tokens + result.output_tokens + 3300
    )
    assert (meta.cache_creation_input_tokens, meta.cache_read_input_tokens) == (1300, 2000)


async def test_an_unreadable_answer_becomes_a_failed_outcome_that_says_so(
    make_processor, simulator
):
    # A 200 whose body is no message: the SDK hands back text; the error says what came.
    result = await make_processor(retries=3).process(event(f"{TEXT} [[sim:unreadable]]"))
    assert not result.success
    assert result.error is not None
    assert result.error.startswith(
        "unreadable answer again: the provider's answer is not a message (HTTP 200, text/plain"
    ), result.error
    assert "ANTHROPIC_BASE_URL" in result.error and "AttributeError" not in result.error
    assert (
        result.attempts == 2 == len(simulator.stats()["requests"])
    )  # retried once: nothing billed
    assert result.tokens_used == 0


async def test_an_internal_error_is_retried_once_when_nothing_was_billed(make_processor, simulator):
    result = await make_processor(retries=0).process(event(f"{TEXT} [[sim:unreadable-once]]"))
    assert result.success, result.error
    assert result.attempts == 2 == len(simulator.stats()["requests"])
    assert_billed(result, simulator)


async def test_an_internal_error_after_billing_is_not_retried(make_processor, simulator):
    # Billed invalid output first, then the unreadable answer: a retry would pay again.
    text = f"{TEXT} [[sim:bad-json-once]] [[sim:unreadable]]"
    result = await make_processor(retries=3).process(event(text))
    assert not result.success and result.error is not None
    assert result.error.startswith("unreadable answer: the provider's answer is not a message")
    assert len(simulator.stats()["requests"]) == 2 and result.attempts == 2
    assert_billed(result, simulator)
    assert result.tokens_used > 0


async def test_a_record_alone_failing_with_5xx_uses_its_retries(make_processor, simulator):
    processor = make_processor(retries=2)
    healthy = [event(f"Record {i}. {TEXT}", index=i) for i in range(1, 4)]
    results = await asyncio.gather(
        processor.process(event(f"{TEXT} [[sim:fail-500-always]]")),
        *(processor.process(e) for e in healthy),
    )
    assert [r.success for r in results] == [False, True, True, True]
    assert results[0].attempts == 3 and results[0].error.startswith("HTTP 500 api_error")
    assert not processor.breaker.is_open


async def test_a_429_with_garbage_retry_after_never_raises(make_processor, simulator) -> None:
    processor = make_processor(retries=0)
    result = await processor.process(event(f"{TEXT} [[sim:retry-after=soon]]"))
    assert result.success, result.error
    assert simulator.stats()["by_status"] == {"429": 1, "200": 1}
    assert processor.budget.throttled_count == 1
