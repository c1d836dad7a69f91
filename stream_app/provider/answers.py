"""What an answer from Claude means: whose fault it is, and so what happens next.

Every answer is one of these (issue 8), and the record processor treats each its way:
- Succeeded: valid structured output; the record's result.
- RecordFault: output that does not validate, empty content, `pause_turn`, an unknown
  stop reason. Retried `BATCH_RECORD_RETRY_COUNT` times, then the record fails.
- Truncated: `stop_reason: max_tokens` with invalid output. Retried once with
  `CLAUDE_MAX_TOKENS_CEILING`, then the record fails ("output truncated at N tokens").
- ContentFault: `refusal`, `model_context_window_exceeded`, 400 "prompt is too long", 413,
  any other 4xx not listed below. The record fails at once with the provider's message.
- ProviderFault: 5xx, 529, 408, 409, timeouts, connection errors. The provider's trouble:
  retried, and it uses up the record's retries only when the record alone fails.
- RateLimited: 429. The worker pauses (`retry-after`) and slows; never uses up a retry.
- ConfigurationFault: 401, 402, 403, 404, a 400 naming a request parameter or the account.
  Stops the line: no record is failed; the worker probes until the provider accepts again.

Provider messages are passed on with anything that looks like an API key removed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anthropic

from stream_app.provider.client import Reply, parse_insight
from stream_app.provider.retry_timing import (
    ProviderWait,
    WaitReading,
    exhausted_token_limits,
    read_wait,
    reset_at,
)


@dataclass(frozen=True)
class Succeeded:
    # The answer's fields, valid for the record's task.
    fields: dict[str, Any]


@dataclass(frozen=True)
class RecordFault:
    """The answer was unusable for this record, and another try may do better."""

    message: str


@dataclass(frozen=True)
class Truncated:
    """The output was cut off at `max_tokens` before it was complete."""

    output_tokens: int
    max_tokens: int

    @property
    def message(self) -> str:
        return (
            f"output truncated at {self.output_tokens} tokens "
            f"(stop_reason max_tokens, max_tokens {self.max_tokens})"
        )


@dataclass(frozen=True)
class ContentFault:
    """This record cannot be served as it is: no retry will change that."""

    message: str


@dataclass(frozen=True)
class ProviderFault:
    """The provider did not serve the call; not the record's doing."""

    message: str
    reading: WaitReading

    @property
    def wait(self) -> ProviderWait | None:
        return self.reading.wait


@dataclass(frozen=True)
class RateLimited:
    message: str
    reading: WaitReading
    # Token limits the answer says are spent, and when the latest of them resets.
    token_limits: tuple[str, ...] = ()
    tokens_reset_at: float | None = None
    # The provider's request limit as this answer states it (`anthropic-ratelimit-requests-
    # limit`): equal to ours, the request only arrived early.
    requests_limit: int | None = None

    @property
    def wait(self) -> ProviderWait | None:
        return self.reading.wait


@dataclass(frozen=True)
class ConfigurationFault:
    """The request itself is refused (key, permission, model, a parameter): every record
    would get the same answer."""

    message: str
    status: int
    # The request parameter a 400 names ("max_tokens", "output_config", ...), if any.
    parameter: str | None = None

    @property
    def could_be_the_records(self) -> bool:
        """A 400 is read from its message; 401/403/404 are never about one record."""
        return self.status == 400


Answer = (
    Succeeded | RecordFault | Truncated | ContentFault | ProviderFault | RateLimited
) | ConfigurationFault

# Every stop_reason of `anthropic.types.StopReason`, and what an invalid output with it
# means (a valid output is used whatever the stop reason, except a refusal).
STOP_REASONS: dict[str, str] = {
    "end_turn": "record fault: the output did not validate",
    "stop_sequence": "record fault: the output did not validate (no stop sequences are sent)",
    "tool_use": "record fault: the output did not validate (no tools are sent)",
    "max_tokens": "truncated: one retry with CLAUDE_MAX_TOKENS_CEILING",
    "pause_turn": "record fault: the model paused its turn (no server tools are sent)",
    "refusal": "content fault: the model declined (even with output)",
    "model_context_window_exceeded": "content fault: the record does not fit the context window",
}


def read_reply(
    reply: Reply, parse: Callable[[str], dict[str, Any] | str] = parse_insight
) -> Answer:
    """What a delivered (HTTP 200, billed) answer means, from its stop reason and content.
    `parse` reads the text for the record's task (fields, or why it is not valid)."""
    stop = reply.stop_reason
    if stop == "refusal":
        return ContentFault("the model declined to answer this record (stop_reason refusal)")
    if not reply.text.strip():
        if stop == "max_tokens":
            return Truncated(reply.usage.output_tokens, reply.max_tokens)
        return _unusable(stop, f"the model returned no content (stop_reason {stop})")
    parsed = parse(reply.text)
    if isinstance(parsed, dict):
        return Succeeded(parsed)
    if stop == "max_tokens":
        return Truncated(reply.usage.output_tokens, reply.max_tokens)
    if stop in ("end_turn", "stop_sequence", "tool_use"):
        return RecordFault(f"structured output did not validate: {parsed}")
    return _unusable(stop, f"structured output did not validate (stop_reason {stop}): {parsed}")


def _unusable(stop: str | None, message: str) -> Answer:
    if stop == "model_context_window_exceeded":
        return ContentFault(
            "the record does not fit the model's context window "
            "(stop_reason model_context_window_exceeded)"
        )
    if stop == "pause_turn":
        return RecordFault("the model paused its turn before answering (stop_reason pause_turn)")
    if stop is None or stop not in STOP_REASONS:
        return RecordFault(f"unexpected stop_reason {stop!r}: {message}")
    return RecordFault(message)


# Top-level request parameters this service sends or the API may reject: a 400 whose
# message starts with one of them ("max_tokens: 100000 > 64000 ...", "output_config.format
# .schema: ...") is about the request's shape, which every record shares. `messages` is
# not among them: that is the record's own content.
REQUEST_PARAMETERS = frozenset(
    {
        "model",
        "max_tokens",
        "system",
        "output_config",
        "output_format",
        "tools",
        "tool_choice",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "metadata",
        "thinking",
        "stream",
        "service_tier",
        "container",
        "mcp_servers",
        "context_management",
        "anthropic-beta",
        "anthropic-version",
    }
)
_PARAMETER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_-]*)\s*[.:\[]")
# 400s about the account, not the request or the record (Anthropic's billing message).
_ACCOUNT_PHRASES = ("credit balance", "organization has been disabled", "billing")
_PROMPT_TOO_LONG = "prompt is too long"
# A call given up on may still have been served: the provider bills work it finished
# after the client left, and no usage comes back to count it.
TIMEOUT_MESSAGE = (
    "timeout: no answer within the call's timeout (CLAUDE_TIMEOUT_SECONDS plus the time its "
    "max_tokens can take); the provider may still have done and billed the work, which is "
    "not in this record's tokens"
)
_KEY_LIKE = re.compile(r"\b(sk-[A-Za-z0-9_-]{3})[A-Za-z0-9_-]+")


def classify_error(
    exc: anthropic.APIStatusError | anthropic.APIConnectionError, *, now: float, cap_seconds: float
) -> Answer:
    """What a refused or lost call means. `now` is the Unix time of the answer."""
    if isinstance(exc, anthropic.APITimeoutError):
        return ProviderFault(TIMEOUT_MESSAGE, WaitReading(None))
    if isinstance(exc, anthropic.APIConnectionError):
        return ProviderFault(f"connection error: {redact(str(exc))}", WaitReading(None))
    status = exc.status_code
    kind, message = _detail(exc)
    described = f"HTTP {status} {kind}: {message}"
    headers = exc.response.headers
    if status == 429:
        spent = exhausted_token_limits(headers)
        return RateLimited(
            described,
            read_wait(headers, now, cap_seconds),
            spent,
            reset_at(headers, spent) if spent else None,
            _requests_limit(headers),
        )
    if status in (401, 402, 403, 404):
        return ConfigurationFault(described, status)
    if status == 413:
        return ContentFault(described)
    if status == 400:
        lowered = message.lower()
        if _PROMPT_TOO_LONG in lowered:
            return ContentFault(described)
        parameter = request_parameter(message)
        if parameter is not None or any(p in lowered for p in _ACCOUNT_PHRASES):
            return ConfigurationFault(described, status, parameter)
        return ContentFault(described)
    if status in (408, 409) or status >= 500:
        return ProviderFault(described, read_wait(headers, now, cap_seconds))
    return ContentFault(described)


def request_parameter(message: str) -> str | None:
    """The request parameter a 400 message starts with, if it names one."""
    match = _PARAMETER.match(message)
    if match is None:
        return None
    name = match.group(1)
    return name if name in REQUEST_PARAMETERS else None


def _detail(exc: anthropic.APIStatusError) -> tuple[str, str]:
    """The error type and message the provider gave (`HTTP 400 invalid_request_error:
    <message>` is built from them), with no secret in the message."""
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error")
    detail: dict[str, Any] = error if isinstance(error, dict) else {}
    kind = detail.get("type") or type(exc).__name__
    message = detail.get("message") or exc.message
    return str(kind), redact(str(message))


def redact(text: str) -> str:
    """Text with anything shaped like an API key (`sk-...`) cut to its first characters."""
    return _KEY_LIKE.sub(r"\1[redacted]", text)


def _requests_limit(headers: Mapping[str, str]) -> int | None:
    raw = headers.get("anthropic-ratelimit-requests-limit", "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else None
