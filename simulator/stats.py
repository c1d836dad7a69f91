"""What the simulator observed on /v1/messages, exposed as JSON on GET /_sim/stats."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

TEXT_PREVIEW_CHARS = 80


@dataclass(frozen=True)
class RequestRecord:
    t: float
    t_done: float
    status: int
    # Billed usage: zero unless the request succeeded.
    input_tokens: int
    output_tokens: int
    text: str
    # Only whether a credential was sent; the value itself is never stored.
    api_key_hint: bool
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    # The 1-hour part of the cache writes.
    cache_creation_1h_input_tokens: int = 0
    # What the request asked for and how the reply stopped (None when there was no reply).
    max_tokens: int | None = None
    stop_reason: str | None = None


class Stats:
    def __init__(self) -> None:
        self.records: list[RequestRecord] = []
        self.in_flight = 0
        self.max_in_flight = 0

    def enter(self) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self, record: RequestRecord) -> None:
        self.in_flight -= 1
        self.records.append(record)

    def reset(self) -> None:
        """Forget history; requests still running keep counting as in flight."""
        self.records = []
        self.max_in_flight = self.in_flight

    def snapshot(self) -> dict[str, Any]:
        ok = [r for r in self.records if r.status == 200]
        return {
            "requests": [asdict(r) for r in self.records],
            "by_status": {
                str(s): n for s, n in sorted(Counter(r.status for r in self.records).items())
            },
            "max_in_flight": self.max_in_flight,
            "in_flight": self.in_flight,
            "total_input_tokens_billed": sum(r.input_tokens for r in ok),
            "total_output_tokens_billed": sum(r.output_tokens for r in ok),
            "total_cache_creation_input_tokens_billed": sum(
                r.cache_creation_input_tokens for r in ok
            ),
            "total_cache_read_input_tokens_billed": sum(r.cache_read_input_tokens for r in ok),
        }
