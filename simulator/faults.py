"""Failure injection steered by ``[[sim:...]]`` markers in the user text.

Markers let a test make one specific record misbehave while its neighbours succeed.
"-once"/"-twice" faults are remembered per exact user text, so a retry of the same
request (same text) succeeds after the first one or two attempts.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from enum import Enum

from simulator.protocol import InvalidRequest

_MARKER = re.compile(r"\[\[sim:([^\]]*)\]\]")
_REPEATS = {"once": 1, "twice": 2}
_REPEATABLE = ("fail-500", "overloaded", "bad-json", "429", "fail-408", "fail-409")


class Fault(Enum):
    """What an admitted request should suffer instead of (or, for BAD_JSON, within) a reply."""

    BAD_REQUEST = 400
    REQUEST_TIMEOUT = 408
    CONFLICT = 409
    API_ERROR = 500
    OVERLOADED = 529
    BAD_JSON = 200


@dataclass(frozen=True)
class Markers:
    fail_400: bool = False
    fail_500_always: bool = False
    # How many of the first requests with this text get the fault (0 = never).
    fail_500: int = 0
    overloaded: int = 0
    bad_json: int = 0
    rate_limited: int = 0
    slow_ms: float = 0.0
    fail_408: int = 0
    fail_409: int = 0


def parse_markers(text: str) -> Markers:
    """Markers found in ``text``; an unknown marker is an error so typos don't pass silently."""
    flags: set[str] = set()
    repeats: dict[str, int] = {}
    slow_ms = 0.0
    for marker in _MARKER.findall(text):
        name, _, times = marker.rpartition("-")
        if marker in ("fail-400", "fail-500-always"):
            flags.add(marker)
        elif name in _REPEATABLE and times in _REPEATS:
            repeats[name] = _REPEATS[times]
        elif marker.startswith("slow=") and _is_number(marker.removeprefix("slow=")):
            slow_ms = float(marker.removeprefix("slow="))
        else:
            raise InvalidRequest(f"unknown simulator marker [[sim:{marker}]]")
    return Markers(
        fail_400="fail-400" in flags,
        fail_500_always="fail-500-always" in flags,
        fail_500=repeats.get("fail-500", 0),
        overloaded=repeats.get("overloaded", 0),
        bad_json=repeats.get("bad-json", 0),
        rate_limited=repeats.get("429", 0),
        slow_ms=slow_ms,
        fail_408=repeats.get("fail-408", 0),
        fail_409=repeats.get("fail-409", 0),
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
        ):
            return 1
        self._admissions[text] += 1
        return self._admissions[text]
