"""What each provider answer means, without Kafka: errors as the SDK raises them from an
HTTP response, and delivered replies with every stop reason the SDK knows."""

from __future__ import annotations

import typing
from typing import Any

import anthropic
import httpx2
import orjson
import pytest

from stream_app.provider.answers import (
    STOP_REASONS,
    ConfigurationFault,
    ContentFault,
    ProviderFault,
    RateLimited,
    RecordFault,
    Succeeded,
    Truncated,
    classify_error,
    read_reply,
    redact,
    request_parameter,
)
from stream_app.provider.client import Reply
from stream_app.provider.usage import Usage

NOW = 1_800_000_000.0
VALID = orjson.dumps(
    {"summary": "s", "insights": ["i"], "sentiment": "neutral", "topics": ["t"]}
).decode()
_CLIENT = anthropic.Anthropic(api_key="sk-unit", base_url="http://127.0.0.1:9")


def status_error(
    status: int, message: str, kind: str = "error", headers: dict[str, str] | None = None
) -> anthropic.APIStatusError:
    """The exception the SDK raises for this HTTP answer (same code path as a real call)."""
    request = httpx2.Request("POST", "http://127.0.0.1:9/v1/messages")
    body = {"type": "error", "error": {"type": kind, "message": message}}
    response = httpx2.Response(status, json=body, headers=headers or {}, request=request)
    return _CLIENT._make_status_error_from_response(response)


def classify(exc: Any) -> Any:
    return classify_error(exc, now=NOW, cap_seconds=300.0)


@pytest.mark.parametrize(
    ("status", "kind", "message", "family"),
    [
        (500, "api_error", "Internal server error", ProviderFault),
        (502, "api_error", "Bad gateway", ProviderFault),
        (503, "api_error", "Service unavailable", ProviderFault),
        (529, "overloaded_error", "Overloaded", ProviderFault),
        (408, "timeout_error", "Request timeout", ProviderFault),
        (409, "conflict", "Conflict", ProviderFault),
        (429, "rate_limit_error", "Rate limited", RateLimited),
        (401, "authentication_error", "invalid x-api-key", ConfigurationFault),
        (402, "billing_error", "Payment required", ConfigurationFault),
        (403, "permission_error", "Not allowed to use this model", ConfigurationFault),
        (404, "not_found_error", "model: claude-nope", ConfigurationFault),
        (400, "invalid_request_error", "max_tokens: 100000 > 64000 maximum", ConfigurationFault),
        (400, "invalid_request_error", "output_config.format.schema: bad", ConfigurationFault),
        (400, "invalid_request_error", "tools.0.input_schema: bad", ConfigurationFault),
        (400, "invalid_request_error", "Your credit balance is too low", ConfigurationFault),
        (400, "invalid_request_error", "prompt is too long: 210000 > 200000", ContentFault),
        (400, "invalid_request_error", "messages.0.content: invalid image", ContentFault),
        (400, "invalid_request_error", "Simulated invalid request", ContentFault),
        (413, "request_too_large", "Request exceeds the maximum size", ContentFault),
        (422, "invalid_request_error", "Unprocessable", ContentFault),
    ],
)
def test_status_answers_fall_in_their_family(
    status: int, kind: str, message: str, family: type
) -> None:
    answer = classify(status_error(status, message, kind))
    assert type(answer) is family
    assert answer.message == f"HTTP {status} {kind}: {message}"


def test_configuration_faults_say_whether_they_could_be_the_records() -> None:
    schema = classify(status_error(400, "output_config.format.schema: bad"))
    assert isinstance(schema, ConfigurationFault)
    assert schema.could_be_the_records and schema.parameter == "output_config"
    key = classify(status_error(401, "invalid x-api-key", "authentication_error"))
    assert isinstance(key, ConfigurationFault) and not key.could_be_the_records


def test_request_parameter_needs_the_parameter_shape() -> None:
    assert request_parameter("max_tokens: 100000 > 64000") == "max_tokens"
    assert request_parameter("tool_choice.name: unknown") == "tool_choice"
    assert request_parameter("model: claude-x") == "model"
    assert request_parameter("messages.0.content: bad") is None
    assert request_parameter("system overloaded, try again") is None
    assert request_parameter("prompt is too long") is None


def test_timeouts_and_connection_errors_are_the_providers_trouble() -> None:
    request = httpx2.Request("POST", "http://127.0.0.1:9/v1/messages")
    timeout = classify(anthropic.APITimeoutError(request))
    lost = classify(anthropic.APIConnectionError(request=request))
    assert isinstance(timeout, ProviderFault) and timeout.message.startswith("timeout")
    # A call given up on may have been served and billed: the record's error says so.
    assert "may still have done and billed the work" in timeout.message
    assert isinstance(lost, ProviderFault) and lost.message.startswith("connection error")


def test_provider_waits_come_with_the_fault() -> None:
    overloaded = classify(status_error(529, "Overloaded", headers={"retry-after": "7"}))
    assert isinstance(overloaded, ProviderFault)
    assert overloaded.wait is not None and overloaded.wait.seconds == 7.0
    garbage = classify(status_error(429, "slow down", headers={"retry-after": "soon"}))
    assert isinstance(garbage, RateLimited)
    assert garbage.wait is None and garbage.reading.ignored == (("retry-after", "soon"),)


def test_a_429_naming_the_input_token_limit() -> None:
    headers = {
        "retry-after": "1",
        "anthropic-ratelimit-input-tokens-remaining": "0",
        "anthropic-ratelimit-input-tokens-reset": "2027-01-15T08:00:09Z",
        "anthropic-ratelimit-requests-remaining": "40",
    }
    answer = classify(status_error(429, "input tokens per minute", headers=headers))
    assert isinstance(answer, RateLimited)
    assert answer.token_limits == ("input-tokens",)
    assert answer.tokens_reset_at == NOW + 9
    assert answer.wait is not None and answer.wait.seconds == 1.0


def test_a_429_states_the_providers_request_limit() -> None:
    headers = {"retry-after": "1", "anthropic-ratelimit-requests-limit": "3000"}
    answer = classify(status_error(429, "requests per minute", headers=headers))
    assert isinstance(answer, RateLimited)
    assert answer.requests_limit == 3000
    bare = classify(status_error(429, "requests per minute", headers={"retry-after": "1"}))
    assert bare.requests_limit is None
    odd = {"anthropic-ratelimit-requests-limit": "lots"}
    assert classify(status_error(429, "requests per minute", headers=odd)).requests_limit is None


def test_secrets_in_provider_messages_are_redacted() -> None:
    answer = classify(
        status_error(401, "invalid x-api-key sk-ant-api03-abcdefSECRET", "authentication_error")
    )
    assert "abcdefSECRET" not in answer.message and "sk-ant[redacted]" in answer.message
    assert redact("key sk-test-secret-do-not-log here") == "key sk-tes[redacted] here"


def reply(text: str, stop: str | None, output_tokens: int = 40, max_tokens: int = 512) -> Reply:
    return Reply(text, stop, Usage(100, output_tokens), {}, max_tokens)


def test_every_stop_reason_the_sdk_knows_is_handled_on_purpose() -> None:
    assert set(STOP_REASONS) == set(typing.get_args(anthropic.types.StopReason))


@pytest.mark.parametrize(
    ("text", "stop", "expected"),
    [
        (VALID, "end_turn", Succeeded),
        (VALID, "stop_sequence", Succeeded),
        (VALID, "max_tokens", Succeeded),  # complete after all: used
        (VALID, "model_context_window_exceeded", Succeeded),
        (VALID[:20], "end_turn", RecordFault),
        (VALID[:20], "stop_sequence", RecordFault),
        (VALID[:20], "tool_use", RecordFault),
        (VALID[:20], "max_tokens", Truncated),
        ("", "max_tokens", Truncated),
        (VALID, "refusal", ContentFault),  # declined, whatever came with it
        ("", "refusal", ContentFault),
        (VALID[:20], "model_context_window_exceeded", ContentFault),
        ("", "pause_turn", RecordFault),
        ("", "end_turn", RecordFault),
        (VALID[:20], None, RecordFault),
        (VALID[:20], "some_future_reason", RecordFault),
    ],
)
def test_replies_by_stop_reason(text: str, stop: str | None, expected: type) -> None:
    assert type(read_reply(reply(text, stop))) is expected


def test_named_outcomes_say_what_happened() -> None:
    truncated = read_reply(reply(VALID[:20], "max_tokens", output_tokens=512))
    assert isinstance(truncated, Truncated)
    assert truncated.message.startswith("output truncated at 512 tokens")
    messages = {
        stop: read_reply(reply("", stop)).message  # type: ignore[union-attr]
        for stop in ("refusal", "end_turn", "pause_turn", "model_context_window_exceeded")
    }
    assert messages == {
        "refusal": "the model declined to answer this record (stop_reason refusal)",
        "end_turn": "the model returned no content (stop_reason end_turn)",
        "pause_turn": "the model paused its turn before answering (stop_reason pause_turn)",
        "model_context_window_exceeded": "the record does not fit the model's context window "
        "(stop_reason model_context_window_exceeded)",
    }
    invalid = read_reply(reply("{not json", "end_turn"))
    assert isinstance(invalid, RecordFault)
    assert invalid.message.startswith("structured output did not validate:")
    odd = read_reply(reply("{", "some_future_reason"))
    assert isinstance(odd, RecordFault) and "unexpected stop_reason 'some_future_reason'" in (
        odd.message
    )


def test_a_calls_timeout_grows_with_its_max_tokens() -> None:
    from stream_app.provider.client import call_timeout_seconds

    # The SDK's pace: 128,000 output tokens an hour.
    assert call_timeout_seconds(0, 60) == 60
    assert call_timeout_seconds(1024, 60) == pytest.approx(60 + 28.8)
    assert call_timeout_seconds(4096, 3) == pytest.approx(3 + 115.2)
