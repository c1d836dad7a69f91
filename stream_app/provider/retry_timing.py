"""How long the provider asks us to wait, read from every form it uses; never raises.

Forms, first readable one wins:
1. `retry-after-ms`: milliseconds (a de facto extension the anthropic SDK honours too).
2. `retry-after`: delay-seconds or an HTTP-date (RFC 9110, section 10.2.3); decimal
   seconds ("1.5") are accepted as well, as the SDK does.
3. Neither present: the `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-reset`
   headers (RFC 3339 times, Anthropic's rate-limit documentation) of the limits whose
   `-remaining` is 0; when none says 0, the earliest reset still ahead.

Garbage (`soon`), negative, NaN and infinite values are ignored (reported back so the caller
can log them), never an exception and never a wait of years: a value above the cap is cut
to the cap (`BATCH_RETRY_AFTER_CAP_SECONDS`) and reported as capped. A date in the past
means "now" (0 s).

A 429 that names a token limit (`anthropic-ratelimit-{input-tokens,output-tokens,tokens}-
remaining: 0`) tells which budget is spent and, through its `-reset`, until when.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import math
from collections.abc import Mapping
from dataclasses import dataclass

_LIMITS = ("requests", "tokens", "input-tokens", "output-tokens")
TOKEN_LIMITS = ("tokens", "input-tokens", "output-tokens")


@dataclass(frozen=True)
class ProviderWait:
    """A wait the provider asked for: `seconds` from now, after capping."""

    seconds: float
    source: str  # the header it came from
    asked: float  # what the provider asked, before the cap

    @property
    def capped(self) -> bool:
        return self.asked > self.seconds


@dataclass(frozen=True)
class WaitReading:
    wait: ProviderWait | None
    # (header, raw value) pairs that were present but unreadable, for the log.
    ignored: tuple[tuple[str, str], ...] = ()


def read_wait(headers: Mapping[str, str], now: float, cap_seconds: float) -> WaitReading:
    """The wait the provider asks for in `headers`, `now` being the Unix time it arrived."""
    ignored: list[tuple[str, str]] = []
    for name, parse in (("retry-after-ms", _milliseconds), ("retry-after", _seconds_or_date)):
        raw = headers.get(name)
        if raw is None:
            continue
        seconds = parse(raw, now)
        if seconds is None:
            ignored.append((name, raw))
            continue
        return WaitReading(_capped(seconds, name, cap_seconds), tuple(ignored))
    reset = _reset_wait(headers, now, ignored)
    if reset is not None:
        return WaitReading(_capped(reset[1], reset[0], cap_seconds), tuple(ignored))
    return WaitReading(None, tuple(ignored))


def exhausted_token_limits(headers: Mapping[str, str]) -> tuple[str, ...]:
    """The token limits this answer says are spent (`...-remaining: 0`)."""
    return tuple(
        name
        for name in TOKEN_LIMITS
        if headers.get(f"anthropic-ratelimit-{name}-remaining", "").strip() == "0"
    )


def reset_at(headers: Mapping[str, str], limits: tuple[str, ...]) -> float | None:
    """The latest Unix time at which the named limits reset; None when none is readable."""
    times = [
        t
        for name in limits
        if (t := _rfc3339(headers.get(f"anthropic-ratelimit-{name}-reset", ""))) is not None
    ]
    return max(times) if times else None


def _capped(seconds: float, source: str, cap_seconds: float) -> ProviderWait:
    return ProviderWait(min(seconds, cap_seconds), source, seconds)


def _number(raw: str) -> float | None:
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _milliseconds(raw: str, now: float) -> float | None:
    value = _number(raw)
    return value / 1000 if value is not None else None


def _seconds_or_date(raw: str, now: float) -> float | None:
    value = _number(raw)
    if value is not None:
        return value
    if _looks_numeric(raw):
        return None  # a negative or non-finite number, not a date
    try:
        when = email.utils.parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)  # HTTP-dates are always GMT
    return max(0.0, when.timestamp() - now)


def _looks_numeric(raw: str) -> bool:
    try:
        float(raw.strip())
    except ValueError:
        return False
    return True


def _rfc3339(raw: str) -> float | None:
    if not raw.strip():
        return None
    try:
        when = dt.datetime.fromisoformat(raw.strip())
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    try:
        return when.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


def _reset_wait(
    headers: Mapping[str, str], now: float, ignored: list[tuple[str, str]]
) -> tuple[str, float] | None:
    resets: dict[str, float] = {}
    for name in _LIMITS:
        header = f"anthropic-ratelimit-{name}-reset"
        raw = headers.get(header)
        if raw is None:
            continue
        at = _rfc3339(raw)
        if at is None:
            ignored.append((header, raw))
        else:
            resets[header] = at
    if not resets:
        return None
    spent = {
        header: at
        for header, at in resets.items()
        if headers.get(header.replace("-reset", "-remaining"), "").strip() == "0"
    }
    if spent:
        header = max(spent, key=lambda h: spent[h])
        return header, max(0.0, spent[header] - now)
    ahead = {header: at for header, at in resets.items() if at > now}
    if not ahead:
        return None
    header = min(ahead, key=lambda h: ahead[h])
    return header, ahead[header] - now
