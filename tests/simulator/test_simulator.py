"""The Claude API simulator, driven through the real anthropic SDK over HTTP."""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import math
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Literal

import anthropic
import httpx
import orjson
import pydantic
import pytest
from pydantic import BaseModel, Field

from simulator import SimulatorConfig, run_simulator
from simulator.generate import (
    extractive_summary,
    fit_schema,
    key_phrases,
    pick_sentiment,
    salient_words,
)
from simulator.ratelimit import Window
from simulator.testing import SimulatorHandle, max_in_window

MODEL = "claude-simulated"
TEXT = (
    "The firmware update broke the sync feature on my tablet. "
    "Support was slow to answer and I am angry about the lost photos. "
    "This is a high priority problem for our team."
)
FIRST_TWO_SENTENCES = (
    "The firmware update broke the sync feature on my tablet. "
    "Support was slow to answer and I am angry about the lost photos."
)
SENTIMENTS = ("positive", "neutral", "negative")


class Analysis(BaseModel):
    summary: str = Field(max_length=130)
    insights: list[str]
    sentiment: Literal["positive", "neutral", "negative"]


class Ticket(BaseModel):
    summary: str
    priority: Literal["low", "medium", "high"]
    tags: list[str]
    needs_follow_up: bool


TICKET_TOOL: anthropic.types.ToolParam = {
    "name": "record_ticket",
    "description": "Store the ticket.",
    "input_schema": Ticket.model_json_schema(),
}


def user(text: str) -> list[anthropic.types.MessageParam]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def shared_sim() -> Iterator[SimulatorHandle]:
    with run_simulator() as handle:
        yield handle


@pytest.fixture
def sim(shared_sim: SimulatorHandle) -> SimulatorHandle:
    """The module's simulator, back to defaults with no history (cheaper than a restart)."""
    shared_sim.configure(**SimulatorConfig().model_dump())
    shared_sim.reset()
    return shared_sim


@asynccontextmanager
async def claude(
    handle: SimulatorHandle, api_key: str = "sim-test"
) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=handle.base_url, api_key=api_key, max_retries=0
    ) as client:
        yield client


def text_of(message: anthropic.types.Message) -> str:
    block = message.content[0]
    assert block.type == "text"
    return block.text


async def plain(client: anthropic.AsyncAnthropic, text: str) -> anthropic.types.Message:
    return await client.messages.create(model=MODEL, max_tokens=256, messages=user(text))


# --- Messages API shape -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_parse_populates_the_pydantic_model_from_the_input(sim: SimulatorHandle) -> None:
    async with claude(sim) as client:
        message = await client.messages.parse(
            model=MODEL, max_tokens=512, messages=user(TEXT), output_format=Analysis
        )
    analysis = message.parsed_output
    assert isinstance(analysis, Analysis)
    # max_length=130 reaches the API only as a description hint; whole sentences still fit.
    assert analysis.summary == FIRST_TWO_SENTENCES
    assert analysis.insights == [
        "Support was slow to answer and I am angry about the lost photos.",
        "This is a high priority problem for our team.",
        "firmware",
    ]
    assert analysis.sentiment == "negative"
    assert message.id.startswith("msg_sim_") and message.type == "message"
    assert (message.role, message.model, message.stop_reason) == ("assistant", MODEL, "end_turn")
    assert message.stop_sequence is None
    assert message._request_id is not None and message._request_id.startswith("req_sim_")
    assert (message.usage.cache_creation_input_tokens, message.usage.cache_read_input_tokens) == (
        0,
        0,
    )


@pytest.mark.asyncio
async def test_forced_tool_call_returns_schema_valid_input(sim: SimulatorHandle) -> None:
    async with claude(sim) as client:
        message = await client.messages.create(
            model=MODEL,
            max_tokens=512,
            messages=user(TEXT),
            tools=[TICKET_TOOL],
            tool_choice={"type": "tool", "name": "record_ticket"},
        )
    assert message.stop_reason == "tool_use"
    [block] = message.content
    assert block.type == "tool_use"
    assert block.name == "record_ticket" and block.id.startswith("toolu_")
    ticket = Ticket.model_validate(block.input)
    assert ticket.summary == TEXT  # 166 chars: the three sentences fit the 200-char summary
    assert ticket.priority == "high"  # an enum value the text mentions wins
    assert ticket.tags == ["firmware", "update", "broke"]


@pytest.mark.asyncio
async def test_plain_request_gets_an_extractive_text_reply(sim: SimulatorHandle) -> None:
    async with claude(sim) as client:
        message = await plain(client, f"{TEXT} [[sim:slow=1]]")
    [block] = message.content
    assert block.type == "text" and block.text == TEXT  # the marker is not content
    assert message.stop_reason == "end_turn"


@pytest.mark.asyncio
async def test_unknown_tool_choice_is_a_bad_request(sim: SimulatorHandle) -> None:
    async with claude(sim) as client:
        with pytest.raises(anthropic.BadRequestError, match="nope"):
            await client.messages.create(
                model=MODEL,
                max_tokens=64,
                messages=user(TEXT),
                tools=[TICKET_TOOL],
                tool_choice={"type": "tool", "name": "nope"},
            )


# --- Token usage and billing --------------------------------------------------------------


@pytest.mark.asyncio
async def test_usage_is_the_documented_estimate_and_matches_billing(sim: SimulatorHandle) -> None:
    async with claude(sim) as client:
        reply = await plain(client, TEXT)
        parsed = await client.messages.parse(
            model=MODEL,
            max_tokens=512,
            system="Be brief.",
            messages=user(TEXT),
            output_format=Analysis,
        )
        counted = await client.messages.count_tokens(
            model=MODEL, system="Be brief.", messages=user(TEXT), output_format=Analysis
        )
    assert reply.usage.input_tokens == math.ceil(len(TEXT) / 4)
    assert reply.usage.output_tokens == math.ceil(len(text_of(reply)) / 4)
    structured_text = text_of(parsed)
    assert parsed.usage.output_tokens == math.ceil(len(structured_text) / 4)
    # System, message text and the schema JSON are all counted.
    assert parsed.usage.input_tokens > math.ceil((len(TEXT) + len("Be brief.")) / 4)
    assert counted.input_tokens == parsed.usage.input_tokens

    stats = sim.stats()
    assert stats["total_input_tokens_billed"] == (
        reply.usage.input_tokens + parsed.usage.input_tokens
    )
    assert stats["total_output_tokens_billed"] == (
        reply.usage.output_tokens + parsed.usage.output_tokens
    )
    assert [(r["input_tokens"], r["output_tokens"]) for r in stats["requests"]] == [
        (reply.usage.input_tokens, reply.usage.output_tokens),
        (parsed.usage.input_tokens, parsed.usage.output_tokens),
    ]  # count_tokens is neither recorded nor billed


@pytest.mark.asyncio
async def test_max_tokens_truncates_plain_text(sim: SimulatorHandle) -> None:
    async with claude(sim) as client:
        message = await client.messages.create(model=MODEL, max_tokens=3, messages=user(TEXT))
    assert message.stop_reason == "max_tokens"
    assert text_of(message) == TEXT[:12]
    assert message.usage.output_tokens == 3


# --- Rate limits ----------------------------------------------------------------------------


def _reset_time(headers: httpx.Headers | Any, name: str) -> datetime:
    return datetime.strptime(headers[f"anthropic-ratelimit-{name}-reset"], "%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.asyncio
async def test_requests_per_minute_limit(sim: SimulatorHandle) -> None:
    sim.configure(requests_per_minute=5)
    remaining = []
    async with claude(sim) as client:
        for _ in range(5):
            raw = await client.messages.with_raw_response.create(
                model=MODEL, max_tokens=64, messages=user(TEXT)
            )
            assert raw.headers["anthropic-ratelimit-requests-limit"] == "5"
            remaining.append(raw.headers["anthropic-ratelimit-requests-remaining"])
        rejections = []
        for _ in range(2):
            with pytest.raises(anthropic.RateLimitError) as caught:
                await plain(client, TEXT)
            rejections.append(caught.value)
    assert remaining == ["4", "3", "2", "1", "0"]
    for error in rejections:
        headers = error.response.headers
        assert 1 <= int(headers["retry-after"]) <= 60
        assert headers["anthropic-ratelimit-requests-limit"] == "5"
        assert headers["anthropic-ratelimit-requests-remaining"] == "0"
        reset = _reset_time(headers, "requests").replace(tzinfo=UTC)
        assert 55 <= (reset - datetime.now(UTC)).total_seconds() <= 61
        assert error.type == "rate_limit_error" and error.request_id is not None
    assert sim.stats()["by_status"] == {"200": 5, "429": 2}  # rejections used no budget
    assert sim.max_requests_in_window(60.0) == 5


@pytest.mark.asyncio
async def test_input_tokens_per_minute_limit(sim: SimulatorHandle) -> None:
    per_request = math.ceil(len(TEXT) / 4)
    sim.configure(input_tokens_per_minute=per_request + 10)
    async with claude(sim) as client:
        ok = await client.messages.with_raw_response.create(
            model=MODEL, max_tokens=64, messages=user(TEXT)
        )
        with pytest.raises(anthropic.RateLimitError) as caught:
            await plain(client, TEXT)
        await plain(client, "Short.")  # 2 tokens still fit the remaining 10
    assert ok.headers["anthropic-ratelimit-input-tokens-remaining"] == "10"
    assert ok.headers["anthropic-ratelimit-tokens-remaining"] == "10"
    headers = caught.value.response.headers
    assert headers["anthropic-ratelimit-input-tokens-limit"] == str(per_request + 10)
    assert headers["anthropic-ratelimit-input-tokens-remaining"] == "10"
    assert 1 <= int(headers["retry-after"]) <= 60
    assert sim.stats()["by_status"] == {"200": 2, "429": 1}


@pytest.mark.asyncio
async def test_output_tokens_are_charged_after_the_fact(sim: SimulatorHandle) -> None:
    sim.configure(output_tokens_per_minute=5)
    async with claude(sim) as client:
        first = await plain(client, TEXT)  # allowed: nothing spent yet, then overruns
        with pytest.raises(anthropic.RateLimitError) as caught:
            await plain(client, TEXT)
    assert first.usage.output_tokens > 5
    headers = caught.value.response.headers
    assert headers["anthropic-ratelimit-output-tokens-remaining"] == "0"
    assert headers["anthropic-ratelimit-tokens-limit"] == "5"


# --- Failure markers ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_fail_400_marker_fails_every_time(sim: SimulatorHandle) -> None:
    async with claude(sim) as client:
        for _ in range(2):
            with pytest.raises(anthropic.BadRequestError) as caught:
                await plain(client, f"{TEXT} [[sim:fail-400]]")
            assert caught.value.status_code == 400
            assert caught.value.type == "invalid_request_error"
            assert caught.value.api_message is not None and "fail-400" in caught.value.api_message
    assert sim.stats()["by_status"] == {"400": 2}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("marker", "status", "error_type", "failures"),
    [
        ("fail-500-once", 500, "api_error", 1),
        ("fail-500-twice", 500, "api_error", 2),
        ("overloaded-once", 529, "overloaded_error", 1),
        ("overloaded-twice", 529, "overloaded_error", 2),
        ("429-once", 429, "rate_limit_error", 1),
        ("429-twice", 429, "rate_limit_error", 2),
        ("fail-408-once", 408, "api_error", 1),
        ("fail-409-twice", 409, "api_error", 2),
    ],
)
async def test_repeat_limited_markers_fail_then_succeed(
    sim: SimulatorHandle, marker: str, status: int, error_type: str, failures: int
) -> None:
    text = f"{TEXT} [[sim:{marker}]]"
    async with claude(sim) as client:
        for _ in range(failures):
            with pytest.raises(anthropic.APIStatusError) as caught:
                await plain(client, text)
            assert (caught.value.status_code, caught.value.type) == (status, error_type)
            if status == 429:
                assert caught.value.response.headers["retry-after"] == "1"
        with pytest.raises(anthropic.APIStatusError):  # memory is per exact text
            await plain(client, f"Other text. [[sim:{marker}]]")
        message = await plain(client, text)
    assert message.content[0].type == "text"
    assert sim.stats()["by_status"] == {str(status): failures + 1, "200": 1}


@pytest.mark.asyncio
async def test_overloaded_maps_to_the_sdk_overloaded_error(sim: SimulatorHandle) -> None:
    async with claude(sim) as client:
        with pytest.raises(anthropic.OverloadedError):
            await plain(client, f"{TEXT} [[sim:overloaded-once]]")
        with pytest.raises(anthropic.InternalServerError):
            await plain(client, f"{TEXT} [[sim:fail-500-once]]")


@pytest.mark.asyncio
async def test_fail_500_always(sim: SimulatorHandle) -> None:
    async with claude(sim) as client:
        for _ in range(3):
            with pytest.raises(anthropic.InternalServerError):
                await plain(client, f"{TEXT} [[sim:fail-500-always]]")
    assert sim.stats()["by_status"] == {"500": 3}


@pytest.mark.asyncio
async def test_bad_json_once_breaks_structured_output_then_recovers(sim: SimulatorHandle) -> None:
    text = f"{TEXT} [[sim:bad-json-once]]"
    async with claude(sim) as client:
        with pytest.raises(pydantic.ValidationError):
            await client.messages.parse(
                model=MODEL, max_tokens=512, messages=user(text), output_format=Analysis
            )
        again = await client.messages.parse(
            model=MODEL, max_tokens=512, messages=user(text), output_format=Analysis
        )
        tool_args: dict[str, Any] = {
            "model": MODEL,
            "max_tokens": 512,
            "tools": [TICKET_TOOL],
            "tool_choice": {"type": "tool", "name": "record_ticket"},
        }
        tool_text = f"Tool call. {text}"
        broken = await client.messages.create(messages=user(tool_text), **tool_args)
        fixed = await client.messages.create(messages=user(tool_text), **tool_args)
    assert isinstance(again.parsed_output, Analysis)
    assert broken.content[0].type == "tool_use" and fixed.content[0].type == "tool_use"
    with pytest.raises(pydantic.ValidationError):
        Ticket.model_validate(broken.content[0].input)
    Ticket.model_validate(fixed.content[0].input)
    stats = sim.stats()
    assert stats["by_status"] == {"200": 4}  # the broken outputs were delivered and billed
    assert stats["total_output_tokens_billed"] == sum(r["output_tokens"] for r in stats["requests"])


@pytest.mark.asyncio
async def test_unknown_marker_is_rejected(sim: SimulatorHandle) -> None:
    async with claude(sim) as client:
        with pytest.raises(anthropic.BadRequestError, match="sim:fail-501"):
            await plain(client, "Hello. [[sim:fail-501]]")


@pytest.mark.asyncio
async def test_random_failures_follow_the_seed(sim: SimulatorHandle) -> None:
    sim.configure(failure_rate=1.0, seed=7)
    async with claude(sim) as client:
        statuses = []
        for _ in range(6):
            with pytest.raises(anthropic.InternalServerError) as caught:
                await plain(client, TEXT)
            statuses.append(caught.value.status_code)
        sim.reset()
        for index in range(6):
            with pytest.raises(anthropic.InternalServerError) as caught:
                await plain(client, TEXT)
            assert caught.value.status_code == statuses[index]
    assert set(statuses) <= {500, 529}


# --- Latency and concurrency ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_slow_marker_and_max_in_flight(sim: SimulatorHandle) -> None:
    # The four concurrent requests overlap as long as they all arrive within the latency:
    # 600 ms is the margin a loaded machine has, not a race of a few milliseconds.
    sim.configure(latency_ms=600)
    async with claude(sim) as client:
        await asyncio.gather(*(plain(client, f"Record {i}. {TEXT}") for i in range(4)))
        await plain(client, f"{TEXT} [[sim:slow=200]]")
    stats = sim.stats()
    assert (stats["max_in_flight"], stats["in_flight"]) == (4, 0)
    records = stats["requests"]
    # The counter agrees with the log: the most requests whose [t, t_done] overlap.
    edges = sorted([(r["t"], 1) for r in records] + [(r["t_done"], -1) for r in records])
    overlap = max(itertools.accumulate(step for _, step in edges))
    assert overlap == stats["max_in_flight"]
    durations = [r["t_done"] - r["t"] for r in records]
    assert all(d >= 0.6 for d in durations[:4])
    assert durations[4] >= 0.8


# --- Stop reasons, cache usage and the answers of issue 8 -----------------------------------

STRUCTURED: dict[str, Any] = {
    "format": {"type": "json_schema", "schema": anthropic.transform_schema(Analysis)}
}


async def structured(
    client: anthropic.AsyncAnthropic, text: str, max_tokens: int = 512
) -> anthropic.types.Message:
    return await client.messages.create(
        model=MODEL, max_tokens=max_tokens, messages=user(text), output_config=STRUCTURED
    )


def is_valid_analysis(message: anthropic.types.Message) -> bool:
    texts = [block.text for block in message.content if block.type == "text"]
    try:
        Analysis.model_validate_json("".join(texts))
    except pydantic.ValidationError:
        return False
    return True


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("marker", "max_tokens", "stop_reason", "has_content", "valid", "output_tokens"),
    [
        ("max-tokens", 512, "max_tokens", True, False, 512),
        ("max-tokens", 2048, "max_tokens", True, False, 2048),
        ("needs-tokens=700", 512, "max_tokens", True, False, 512),
        ("needs-tokens=700", 1024, "end_turn", True, True, 700),
        ("refusal", 512, "refusal", False, False, 0),
        ("empty", 512, "end_turn", False, False, 0),
        ("pause-turn", 512, "pause_turn", False, False, 0),
        ("context-window", 512, "model_context_window_exceeded", True, False, None),
    ],
)
async def test_stop_reason_markers(
    sim: SimulatorHandle,
    marker: str,
    max_tokens: int,
    stop_reason: str,
    has_content: bool,
    valid: bool,
    output_tokens: int | None,
) -> None:
    async with claude(sim) as client:
        message = await structured(client, f"{TEXT} [[sim:{marker}]]", max_tokens)
    assert message.stop_reason == stop_reason
    assert bool(message.content) is has_content
    assert is_valid_analysis(message) is valid
    if output_tokens is not None:
        assert message.usage.output_tokens == output_tokens
    [seen] = sim.stats()["requests"]
    assert (seen["max_tokens"], seen["stop_reason"]) == (max_tokens, stop_reason)
    assert seen["output_tokens"] == message.usage.output_tokens  # billed like any reply


@pytest.mark.asyncio
async def test_content_fault_markers(sim: SimulatorHandle) -> None:
    async with claude(sim) as client:
        with pytest.raises(anthropic.BadRequestError) as too_long:
            await structured(client, f"{TEXT} [[sim:prompt-too-long]]")
        with pytest.raises(anthropic.APIStatusError) as too_large:
            await structured(client, f"{TEXT} [[sim:413]]")
    assert too_long.value.api_message == "prompt is too long: 210345 tokens > 200000 maximum"
    assert (too_large.value.status_code, too_large.value.type) == (413, "request_too_large")
    assert sim.stats()["by_status"] == {"400": 1, "413": 1}


@pytest.mark.asyncio
async def test_cache_usage_markers_are_reported_and_billed(sim: SimulatorHandle) -> None:
    text = f"{TEXT} [[sim:cache-write=1000]] [[sim:cache-write-1h=300]] [[sim:cache-read=2000]]"
    async with claude(sim) as client:
        cached = await structured(client, text)
        nulls = await structured(client, f"{TEXT} [[sim:usage-nulls]]")
    usage = cached.usage
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (1300, 2000)
    assert usage.cache_creation is not None
    assert usage.cache_creation.ephemeral_5m_input_tokens == 1000
    assert usage.cache_creation.ephemeral_1h_input_tokens == 300
    assert nulls.usage.cache_creation_input_tokens is None
    assert nulls.usage.cache_read_input_tokens is None and nulls.usage.cache_creation is None
    stats = sim.stats()
    assert stats["total_cache_creation_input_tokens_billed"] == 1300
    assert stats["total_cache_read_input_tokens_billed"] == 2000
    assert [r["cache_creation_1h_input_tokens"] for r in stats["requests"]] == [300, 0]


def _wait_headers(sim: SimulatorHandle, marker: str) -> httpx.Headers:
    body = {"model": MODEL, "max_tokens": 64, "messages": user(f"{TEXT} [[sim:{marker}]]")}
    with httpx.Client(base_url=sim.base_url, headers={"x-api-key": "k"}) as http:
        first = http.post("/v1/messages", json=body)
        second = http.post("/v1/messages", json=body)
    assert (first.status_code, second.status_code) == (429, 200)  # once, then served
    return first.headers


def test_throttle_markers_give_each_form_of_wait(sim: SimulatorHandle) -> None:
    assert _wait_headers(sim, "retry-after=soon")["retry-after"] == "soon"
    assert _wait_headers(sim, "retry-after=1.5")["retry-after"] == "1.5"
    ms = _wait_headers(sim, "retry-after-ms=1500")
    assert ms["retry-after-ms"] == "1500" and "retry-after" not in ms
    before = datetime.now(UTC)
    dated = _wait_headers(sim, "retry-after=date+3")["retry-after"]
    ahead = email.utils.parsedate_to_datetime(dated) - before
    assert dated.endswith(" GMT") and 2 <= ahead.total_seconds() <= 4.5
    reset = _wait_headers(sim, "reset-after=2")
    assert "retry-after" not in reset
    assert reset["anthropic-ratelimit-requests-remaining"] == "0"
    at = datetime.fromisoformat(reset["anthropic-ratelimit-requests-reset"])
    assert 1.5 <= (at - datetime.now(UTC)).total_seconds() <= 2.5
    tokens = _wait_headers(sim, "429-input-tokens=4")
    assert tokens["retry-after"] == "1"
    assert tokens["anthropic-ratelimit-input-tokens-remaining"] == "0"
    at = datetime.fromisoformat(tokens["anthropic-ratelimit-input-tokens-reset"])
    assert 3.5 <= (at - datetime.now(UTC)).total_seconds() <= 4.5


@pytest.mark.asyncio
async def test_unreadable_marker_answers_200_with_no_message(sim: SimulatorHandle) -> None:
    async with claude(sim) as client:
        raw = await client.messages.with_raw_response.create(
            model=MODEL, max_tokens=64, messages=user(f"{TEXT} [[sim:unreadable-once]]")
        )
        unreadable = await raw.parse()
        again = await plain(client, f"{TEXT} [[sim:unreadable-once]]")
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/plain")
    assert isinstance(unreadable, str)  # the SDK hands non-JSON bodies back as text
    assert again.content[0].type == "text"
    stats = sim.stats()
    assert stats["by_status"] == {"200": 2}
    assert [r["input_tokens"] for r in stats["requests"]][0] == 0  # nothing billed


@pytest.mark.asyncio
async def test_outage_switch_answers_every_call(sim: SimulatorHandle) -> None:
    sim.configure(force_status=529)
    async with claude(sim) as client:
        for text in (TEXT, "Another record."):
            with pytest.raises(anthropic.OverloadedError):
                await plain(client, text)
        sim.configure(force_status=400)
        with pytest.raises(anthropic.BadRequestError, match="output_config.format.schema"):
            await plain(client, TEXT)
        sim.configure(force_status=None)
        assert (await plain(client, TEXT)).stop_reason == "end_turn"
    assert sim.stats()["by_status"] == {"529": 2, "400": 1, "200": 1}


@pytest.mark.asyncio
async def test_key_and_model_checks(sim: SimulatorHandle) -> None:
    sim.configure(api_keys=["sk-right"], models=[MODEL])
    async with claude(sim, api_key="sk-wrong") as client:
        with pytest.raises(anthropic.AuthenticationError, match="invalid x-api-key"):
            await plain(client, TEXT)
    async with claude(sim, api_key="sk-right") as client:
        await plain(client, TEXT)
        with pytest.raises(anthropic.NotFoundError, match="model: claude-nope"):
            await client.messages.create(model="claude-nope", max_tokens=64, messages=user(TEXT))
    assert sim.stats()["by_status"] == {"401": 1, "200": 1, "404": 1}
    assert "sk-right" not in httpx.get(f"{sim.base_url}/_sim/stats").text


# --- Control endpoints and secrets ----------------------------------------------------------


@pytest.mark.asyncio
async def test_credentials_never_reach_stats(sim: SimulatorHandle) -> None:
    secret_key, secret_token = f"sk-ant-{uuid.uuid4().hex}", f"tok-{uuid.uuid4().hex}"
    async with claude(sim, api_key=secret_key) as client:
        await plain(client, TEXT)
    async with anthropic.AsyncAnthropic(
        base_url=sim.base_url, auth_token=secret_token, max_retries=0
    ) as bearer_client:
        await plain(bearer_client, TEXT)
    raw = httpx.get(f"{sim.base_url}/_sim/stats").text
    assert secret_key not in raw and secret_token not in raw
    records = orjson.loads(raw)["requests"]
    assert [r["api_key_hint"] for r in records] == [True, True]
    assert records[0]["text"] == TEXT[:80]


def test_control_endpoints(sim: SimulatorHandle) -> None:
    config = sim.configure(requests_per_minute=600, latency_ms=5)
    assert config == {
        **SimulatorConfig().model_dump(),
        "requests_per_minute": 600,
        "latency_ms": 5.0,
    }
    with pytest.raises(httpx.HTTPStatusError):
        sim.configure(requests_per_minut=1)
    with httpx.Client(base_url=sim.base_url) as http:
        health = http.get("/health")
        assert health.json() == {"status": "ok"}
        assert health.headers["request-id"].startswith("req_sim_")
        missing = http.get("/v1/nothing")
        assert missing.status_code == 404
        assert missing.json()["error"]["type"] == "not_found_error"
        broken = http.post("/v1/messages", content=b"{", headers={"x-api-key": "k"})
        assert broken.status_code == 400
        assert broken.json()["error"]["type"] == "invalid_request_error"
    stats = sim.stats()
    assert stats["by_status"] == {"400": 1}
    assert stats["requests"][0]["api_key_hint"] is True
    sim.reset()
    assert sim.stats() == {
        "requests": [],
        "by_status": {},
        "max_in_flight": 0,
        "in_flight": 0,
        "total_input_tokens_billed": 0,
        "total_output_tokens_billed": 0,
        "total_cache_creation_input_tokens_billed": 0,
        "total_cache_read_input_tokens_billed": 0,
        "batches_created": 0,
        "batch_not_found_answers": 0,
        "batch_items_billed": 0,
        "batch_input_tokens_billed": 0,
        "batch_output_tokens_billed": 0,
        "batch_cache_creation_input_tokens_billed": 0,
        "batch_cache_read_input_tokens_billed": 0,
        "batches": [],
    }


def test_run_simulator_serves_then_stops() -> None:
    with run_simulator(SimulatorConfig(requests_per_minute=7)) as handle:
        assert handle.base_url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{handle.base_url}/_sim/config").json()["requests_per_minute"] == 7
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{handle.base_url}/health")


# --- Pure generation and windows ------------------------------------------------------------


class Address(BaseModel):
    city: str = Field(min_length=3, max_length=10)
    postcode: str | None = None


class Person(BaseModel):
    id: uuid.UUID
    name: str
    role: Literal["admin", "member"]
    addresses: list[Address] = Field(min_length=2, max_length=3)
    manager: Person | None = None
    scores: list[list[int]]
    rating: int = Field(ge=1, le=5)
    confidence: float = Field(gt=0, lt=1)
    created: datetime
    key_points: list[str] = Field(min_length=1, max_length=2)
    title: str = Field(max_length=12)
    kind: Literal["person"] = "person"


@pytest.mark.parametrize("transform", [False, True], ids=["pydantic", "sdk-transformed"])
def test_fit_schema_satisfies_pydantic_schemas(transform: bool) -> None:
    schema = Person.model_json_schema()
    if transform:
        schema = anthropic.transform_schema(Person)  # what the SDK actually sends
    assert "$defs" in schema
    value = fit_schema(schema, TEXT)
    person = Person.model_validate(value)
    assert person == Person.model_validate(fit_schema(schema, TEXT))  # deterministic
    assert 2 <= len(person.addresses) <= 3 and 1 <= len(person.key_points) <= 2
    assert person.rating == 3 and 0 < person.confidence < 1
    assert person.manager is not None  # anyOf picks the first non-null branch...
    assert person.manager.manager is not None
    depth, node = 0, person
    while node.manager is not None:
        node, depth = node.manager, depth + 1
    assert depth < 10  # ...but recursion still ends


def test_fit_schema_keywords() -> None:
    schema = {
        "type": "object",
        "properties": {
            "const": {"const": 42},
            "nullable": {"type": ["string", "null"], "maxLength": 5},
            "flag": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
            "choice": {"oneOf": [{"type": "null"}, {"type": "integer", "minimum": 7}]},
            "email": {"type": "string", "format": "email"},
            "padded": {"type": "string", "minLength": 300},
        },
        "required": ["const"],
        "additionalProperties": False,
    }
    value = fit_schema(schema, TEXT)
    assert value["const"] == 42 and value["nullable"] == "The" and value["flag"] is False
    assert value["tags"] == ["firmware", "update"]
    assert value["choice"] == 7 and value["email"] == "sim@example.com"
    assert len(value["padded"]) >= 300


def test_text_helpers() -> None:
    first_sentence = "The firmware update broke the sync feature on my tablet."
    assert extractive_summary(TEXT, 60) == first_sentence
    assert extractive_summary("word " * 100, 20) == "word word word word"
    assert salient_words("Refund refund the REFUND, slow slow app", 2) == ["refund", "slow"]
    assert key_phrases("Alpha beta. Gamma delta. Gamma.", 3) == ["Gamma delta.", "Gamma.", "gamma"]
    assert pick_sentiment("I love it, excellent work", SENTIMENTS) == "positive"
    assert pick_sentiment("Broken again, I want a refund", SENTIMENTS) == "negative"
    assert pick_sentiment("The meeting is on Tuesday", SENTIMENTS) == "neutral"
    mixed = ("positive", "negative", "mixed")
    assert pick_sentiment("Great screen but broken hinge", mixed) == "mixed"
    assert pick_sentiment("Broken", ("POS", "NEG")) == "NEG"


def test_sliding_windows() -> None:
    window = Window()
    for t in (0.0, 10.0, 20.0):
        window.add(t, 1)
    assert window.used(30.0) == 3
    assert window.seconds_until_fits(30.0, 1, limit=3) == pytest.approx(30.0)
    assert window.seconds_until_fits(30.0, 2, limit=3) == pytest.approx(40.0)
    assert window.seconds_until_fits(30.0, 4, limit=3) == math.inf
    assert window.used(60.0) == 2  # the t=0 event has left the window
    assert max_in_window([0.0, 0.5, 0.9, 1.0, 5.0], 1.0) == 3
    assert max_in_window([], 1.0) == 0
