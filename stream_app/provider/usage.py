"""Billed tokens: every count the provider bills for a call, read null-safe from its answer.

Anthropic bills input tokens, output tokens, and with prompt caching two more kinds of
input: tokens written to the cache (`cache_creation_input_tokens`, split by lifetime in
`usage.cache_creation`) and tokens read from it (`cache_read_input_tokens`). `input_tokens`
excludes both, so the total billed is the sum of the four counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Usage:
    """Tokens billed for one call, or summed over several (`a + b`)."""

    input_tokens: int = 0
    output_tokens: int = 0
    # Every cache write, 5-minute and 1-hour ones together (the API's own total).
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    # The part of the cache writes that went to the 1-hour cache (priced higher).
    cache_creation_1h_input_tokens: int = 0

    @property
    def total(self) -> int:
        """Every billed token: input, output, cache writes and cache reads."""
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
        )

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_creation_input_tokens + other.cache_creation_input_tokens,
            self.cache_read_input_tokens + other.cache_read_input_tokens,
            self.cache_creation_1h_input_tokens + other.cache_creation_1h_input_tokens,
        )

    @classmethod
    def from_api(cls, usage: Any) -> Usage:
        """From a message's `usage`: the SDK's model, or the JSON object of the answer's
        body (a dict). Absent or null counts are 0 (older models and some gateways omit the
        cache fields); a count that is not a whole number >= 0 is an unreadable answer and
        raises ValueError."""
        breakdown = _field(usage, "cache_creation")
        one_hour = _count(_field(breakdown, "ephemeral_1h_input_tokens"))
        five_minutes = _count(_field(breakdown, "ephemeral_5m_input_tokens"))
        creation_raw = _field(usage, "cache_creation_input_tokens")
        creation = _count(creation_raw) if creation_raw is not None else one_hour + five_minutes
        return cls(
            input_tokens=_count(_field(usage, "input_tokens")),
            output_tokens=_count(_field(usage, "output_tokens")),
            cache_creation_input_tokens=creation,
            cache_read_input_tokens=_count(_field(usage, "cache_read_input_tokens")),
            cache_creation_1h_input_tokens=min(one_hour, creation),
        )

    @classmethod
    def of(cls, counts: Any) -> Usage:
        """From anything carrying the same field names (a result event, a job status)."""
        return cls(
            input_tokens=counts.input_tokens,
            output_tokens=counts.output_tokens,
            cache_creation_input_tokens=counts.cache_creation_input_tokens,
            cache_read_input_tokens=counts.cache_read_input_tokens,
            cache_creation_1h_input_tokens=counts.cache_creation_1h_input_tokens,
        )

    def fields(self) -> dict[str, int]:
        """The counts under their wire names (result events, job status)."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation_1h_input_tokens": self.cache_creation_1h_input_tokens,
        }


def _count(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"unreadable token count in the provider's usage: {value!r}")
    return value


def _field(holder: Any, name: str) -> Any:
    """`holder`'s `name`: a key of a dict (an answer read as JSON), else an attribute (the
    SDK's models); None when absent."""
    if isinstance(holder, dict):
        return holder.get(name)
    return getattr(holder, name, None)
