"""Failure injection steered by ``[[sim:...]]`` markers in the user text.

Markers let a test make one specific record misbehave while its neighbours succeed.
"-once"/"-twice" faults are remembered per exact user text, so a retry of the same
request (same text) succeeds after the first one or two attempts.

Errors and their repetition:
- ``fail-400``, ``fail-500-always``: 400 invalid_request_error / 500 api_error, every time.
- ``fail-500-once/-twice``, ``overloaded-once/-twice``: 500 / 529 the first one or two times;
  ``fail-408-...`` / ``fail-409-...`` likewise with 408 / 409.
- ``bad-json-once/-twice``: structured output that does not validate, then valid.
- ``prompt-too-long``, ``413``: 400 "prompt is too long: ..." / 413 request_too_large.
- ``unreadable``, ``unreadable-once``: 200 with a text/plain body that is not a message.

Rate limits (each a 429 the first time only, except ``429-twice``):
- ``429-once/-twice``: ``retry-after: 1``.
- ``retry-after=V``: ``retry-after`` is V verbatim (``soon``, ``-5``, ``1.5``...);
  ``date+N`` is an HTTP-date N s ahead.
- ``retry-after-ms=V``: ``retry-after-ms: V`` and no ``retry-after``.
- ``reset-after=N``: no retry-after; requests-remaining 0, requests-reset N s ahead (RFC 3339).
- ``429-input-tokens=N``, ``429-output-tokens=N``: names that token limit (remaining 0,
  reset N s ahead), with ``retry-after: 1``.

Replies (HTTP 200, billed):
- ``max-tokens``: cut off at max_tokens every time (stop_reason max_tokens, invalid output).
- ``needs-tokens=N``: the output needs N tokens: cut off below that max_tokens, else N
  output tokens billed.
- ``refusal`` (no content), ``empty`` (end_turn, no content), ``pause-turn`` (no content),
  ``context-window`` (model_context_window_exceeded, output cut).
- ``cache-write=N``, ``cache-write-1h=N``, ``cache-read=N``: usage with those cache tokens.
- ``usage-nulls``: usage with null cache counts and no cache_creation breakdown.
- ``slow=MS``: extra latency.

Message batches (simulator/batches.py): ``batch-expired`` makes the request ``expired`` in a
batch (a live call ignores it); the error markers above make it ``errored``.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from enum import Enum

from simulator.protocol import InvalidRequest

_MARKER = re.compile(r"\[\[sim:([^\]]*)\]\]")
_REPEATS = {"once": 1, "twice": 2}
_REPEATABLE = ("fail-500", "overloaded", "bad-json", "429", "unreadable", "fail-408", "fail-409")
_FLAGS = ("fail-400", "fail-500-always", "usage-nulls", "unreadable", "batch-expired")
_STOPS = ("max-tokens", "refusal", "empty", "pause-turn", "context-window")
_ERRORS = ("prompt-too-long", "413")
# Valued markers that shape a one-time 429.
_THROTTLES = (
    "retry-after",
    "retry-after-ms",
    "reset-after",
    "429-input-tokens",
    "429-output-tokens",
)
_COUNTS = ("needs-tokens", "cache-write", "cache-write-1h", "cache-read")


class Fault(Enum):
    """What an admitted request should suffer instead of (or, for BAD_JSON, within) a reply."""

    BAD_REQUEST = 400
    REQUEST_TIMEOUT = 408
    CONFLICT = 409
    API_ERROR = 500
    OVERLOADED = 529
    BAD_JSON = 200
    PROMPT_TOO_LONG = 4001
    TOO_LARGE = 413
    UNREADABLE = 2001


@dataclass(frozen=True)
class Markers:
    fail_400: bool = False
    fail_500_always: bool = False
    # How many of the first requests with this text get the fault (0 = never).
    fail_500: int = 0
    overloaded: int = 0
    bad_json: int = 0
    rate_limited: int = 0
    unreadable: int = 0  # -1: always
    slow_ms: float = 0.0
    # A one-time 429 of a particular shape: (marker name, value).
    throttle: tuple[str, str] | None = None
    stop: str | None = None
    needs_tokens: int | None = None
    error: str | None = None
    cache_write: int = 0
    cache_write_1h: int = 0
    cache_read: int = 0
    usage_nulls: bool = False
    fail_408: int = 0
    fail_409: int = 0
    batch_expired: bool = False


def parse_markers(text: str) -> Markers:
    """Markers found in ``text``; an unknown marker is an error so typos don't pass silently."""
    flags: set[str] = set()
    repeats: dict[str, int] = {}
    counts: dict[str, int] = {}
    slow_ms = 0.0
    throttle: tuple[str, str] | None = None
    stop: str | None = None
    error: str | None = None
    for marker in _MARKER.findall(text):
        name, eq, value = marker.partition("=")
        base, _, times = marker.rpartition("-")
        if eq and name == "slow" and _is_number(value):
            slow_ms = float(value)
        elif eq and name in _THROTTLES and value.strip():
            throttle = (name, value)
        elif eq and name in _COUNTS and value.isdigit():
            counts[name] = int(value)
        elif not eq and marker in _FLAGS:
            flags.add(marker)
        elif not eq and marker in _STOPS:
            stop = marker
        elif not eq and marker in _ERRORS:
            error = marker
        elif not eq and base in _REPEATABLE and times in _REPEATS:
            repeats[base] = _REPEATS[times]
        else:
            raise InvalidRequest(f"unknown simulator marker [[sim:{marker}]]")
    return Markers(
        fail_400="fail-400" in flags,
        fail_500_always="fail-500-always" in flags,
        fail_500=repeats.get("fail-500", 0),
        overloaded=repeats.get("overloaded", 0),
        bad_json=repeats.get("bad-json", 0),
        rate_limited=repeats.get("429", 0) or (1 if throttle else 0),
        unreadable=-1 if "unreadable" in flags else repeats.get("unreadable", 0),
        slow_ms=slow_ms,
        throttle=throttle,
        stop=stop,
        needs_tokens=counts.get("needs-tokens"),
        error=error,
        cache_write=counts.get("cache-write", 0),
        cache_write_1h=counts.get("cache-write-1h", 0),
        cache_read=counts.get("cache-read", 0),
        usage_nulls="usage-nulls" in flags,
        fail_408=repeats.get("fail-408", 0),
        fail_409=repeats.get("fail-409", 0),
        batch_expired="batch-expired" in flags,
    )


def _is_number(raw: str) -> bool:
    try:
        return float(raw) >= 0
    except ValueError:
        return False


def pick_fault(markers: Markers, attempt: int) -> Fault | None:
    """The fault for the ``attempt``-th admitted request (1-based) carrying these markers."""
    if markers.fail_400:
        return Fault.BAD_REQUEST
    if markers.error == "prompt-too-long":
        return Fault.PROMPT_TOO_LONG
    if markers.error == "413":
        return Fault.TOO_LARGE
    if markers.fail_500_always or attempt <= markers.fail_500:
        return Fault.API_ERROR
    if attempt <= markers.overloaded:
        return Fault.OVERLOADED
    if attempt <= markers.bad_json:
        return Fault.BAD_JSON
    if attempt <= markers.fail_408:
        return Fault.REQUEST_TIMEOUT
    if attempt <= markers.fail_409:
        return Fault.CONFLICT
    if markers.unreadable < 0 or attempt <= markers.unreadable:
        return Fault.UNREADABLE
    return None


class MarkerMemory:
    """Per-exact-user-text attempt counters behind the "-once"/"-twice" markers."""

    def __init__(self) -> None:
        self._arrivals: Counter[str] = Counter()
        self._admissions: Counter[str] = Counter()

    def rate_limit_now(self, text: str, markers: Markers) -> bool:
        """Whether this arrival gets the marker's 429; counted before the real limiter runs."""
        if not markers.rate_limited:
            return False
        self._arrivals[text] += 1
        return self._arrivals[text] <= markers.rate_limited

    def attempt(self, text: str, markers: Markers) -> int:
        """Record an admitted request and return its 1-based attempt number for this text.

        Only texts with repeat-limited faults are remembered, so a long-running simulator
        serving ordinary traffic does not accumulate every prompt it has seen.
        """
        if not (
            markers.fail_500
            or markers.overloaded
            or markers.bad_json
            or markers.fail_408
            or markers.fail_409
            or markers.unreadable
        ):
            return 1
        self._admissions[text] += 1
        return self._admissions[text]
