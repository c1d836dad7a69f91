"""What a job will cost and how long it will take, before it runs: no model call per record.

Pure logic. Input tokens come from the characters each call sends (the task's prefix plus
the record's text) times a chars-per-token ratio (calibrated from what this worker was
billed for the same task, else 4 characters a token); output tokens from what recent
records of the same task produced (mean of billed output tokens), else from the output
schema's shape, never more than max_tokens. With a cacheable prefix, the first wave of
calls (one per concurrent slot) writes the prefix to the cache and later calls read it.
The duration is the backlog ahead of the job plus its records, at the request budget's
pace or at the pace concurrency and the observed latency allow, whichever is slower.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from stream_app.provider.pricing import Price
from stream_app.provider.request import CHARS_PER_TOKEN, PreparedTask
from stream_app.provider.usage import Usage

# JSON answers are denser than prose: fewer characters per token.
_OUTPUT_CHARS_PER_TOKEN = 3.5
_STRING_CHARS = 100
_LIST_ITEMS = 3
_DEFAULT_LATENCY_SECONDS = 2.0
# The prompt cache's default lifetime (5 minutes, refreshed by each read).
CACHE_TTL_SECONDS = 300.0


@dataclass
class _Seen:
    records: int = 0
    chars: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    latency_ms: int = 0
    last_seen: float = 0.0


class UsageHistory:
    """What records of each task (by fingerprint) were billed on this worker."""

    # Latencies of the most recent successful records (ms), for the duration estimate.
    RECENT = 50

    def __init__(self) -> None:
        self._tasks: dict[str, _Seen] = {}
        self._recent: deque[int] = deque(maxlen=self.RECENT)

    def observe(
        self, fingerprint: str, chars: int, usage: Usage, latency_ms: int, now: float = 0.0
    ) -> None:
        """One successful record: the characters its calls sent and what they billed;
        `now` (Unix seconds) is when."""
        seen = self._tasks.setdefault(fingerprint, _Seen())
        seen.last_seen = max(seen.last_seen, now)
        seen.records += 1
        seen.chars += chars
        seen.input_tokens += (
            usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens
        )
        seen.output_tokens += usage.output_tokens
        seen.latency_ms += latency_ms
        self._recent.append(latency_ms)

    def records(self, fingerprint: str) -> int:
        seen = self._tasks.get(fingerprint)
        return seen.records if seen else 0

    def output_tokens(self, fingerprint: str) -> float | None:
        seen = self._tasks.get(fingerprint)
        return seen.output_tokens / seen.records if seen and seen.records else None

    def chars_per_token(self, fingerprint: str) -> float | None:
        seen = self._tasks.get(fingerprint)
        return seen.chars / seen.input_tokens if seen and seen.input_tokens else None

    def last_seen(self, fingerprint: str) -> float | None:
        seen = self._tasks.get(fingerprint)
        return seen.last_seen if seen and seen.last_seen else None

    def latency_seconds(self) -> float | None:
        """The median latency of the last RECENT records: recent, so that the pace of an
        hour ago does not count, and a median, so that a few records held through an
        outage or a configuration stop do not multiply the estimate."""
        return statistics.median(self._recent) / 1000 if self._recent else None


@dataclass(frozen=True)
class Estimate:
    records: int
    # Every prompt token (uncached, cache writes and cache reads), and the split.
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    cost_usd: Decimal
    cost_usd_without_caching: Decimal
    duration_seconds: float
    # Where the output figure came from: "history" (N records of this task) or "schema".
    output_basis: str

    def as_json(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cost_usd": float(round(self.cost_usd, 6)),
            "cost_usd_without_caching": float(round(self.cost_usd_without_caching, 6)),
            "duration_seconds": round(self.duration_seconds, 1),
            "output_basis": self.output_basis,
        }


@dataclass(frozen=True)
class Pace:
    """What bounds throughput: the cluster's request budget and its concurrent calls."""

    requests_per_minute: int
    concurrent_calls: int
    latency_seconds: float | None = None
    backlog_records: int = 0


def expected_output_tokens(task: PreparedTask, history: UsageHistory) -> tuple[float, str]:
    """(tokens per record, basis)."""
    seen = history.output_tokens(task.fingerprint)
    if seen is not None:
        return min(seen, task.max_tokens), f"history of {history.records(task.fingerprint)}"
    schema = task.output_format["schema"]
    guess = output_chars(schema, schema) / _OUTPUT_CHARS_PER_TOKEN
    return min(max(guess, 1.0), task.max_tokens), "schema"


def output_chars(schema: Mapping[str, Any], root: Mapping[str, Any], depth: int = 0) -> int:
    """A rough length of a JSON answer of `schema`: a sentence per free string, a few items
    per list, the key names and punctuation."""
    if depth > 6:
        return 4
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, Mapping) else {}
        return output_chars(target, root, depth + 1)
    if "const" in schema:
        return len(str(schema["const"])) + 2
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return sum(len(str(v)) + 2 for v in schema["enum"]) // len(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return max(output_chars(s, root, depth + 1) for s in schema[key])
    if isinstance(schema.get("allOf"), list):
        return sum(output_chars(s, root, depth + 1) for s in schema["allOf"])
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return 2 + sum(len(k) + 4 + output_chars(v, root, depth + 1) for k, v in props.items())
    if kind == "array":
        return 2 + _LIST_ITEMS * (output_chars(schema.get("items", {}), root, depth + 1) + 1)
    if kind == "string":
        return 22 if "format" in schema and schema["format"] != "text" else _STRING_CHARS
    if kind in ("integer", "number"):
        return 3
    if kind == "boolean":
        return 5
    return 4


def estimate_job(
    task: PreparedTask,
    *,
    records: int,
    text_chars: int,
    price: Price,
    history: UsageHistory,
    pace: Pace,
    now: float = 0.0,
) -> Estimate:
    """The expected tokens, cost (USD) and duration (seconds) of `records` records whose
    texts hold `text_chars` characters in all; `now` in Unix seconds (a prefix this worker
    used within the cache's lifetime is assumed still cached: no writes)."""
    per_token = history.chars_per_token(task.fingerprint) or CHARS_PER_TOKEN
    prompt = math.ceil((task.prefix_chars * records + text_chars) / per_token)
    output_each, basis = expected_output_tokens(task, history)
    output = math.ceil(output_each * records)
    writes = reads = 0
    if task.cache_prefix and records:
        prefix = math.ceil(task.prefix_chars / per_token)
        last = history.last_seen(task.fingerprint)
        warm = last is not None and now - last < CACHE_TTL_SECONDS
        writing_calls = 0 if warm else min(records, pace.concurrent_calls)
        writes = writing_calls * prefix
        reads = (records - writing_calls) * prefix
    cached = price.cost_of(
        Usage(
            input_tokens=prompt - writes - reads,
            output_tokens=output,
            cache_creation_input_tokens=writes,
            cache_read_input_tokens=reads,
        )
    )
    uncached = price.cost_of(Usage(input_tokens=prompt, output_tokens=output))
    latency = pace.latency_seconds or _DEFAULT_LATENCY_SECONDS
    per_second = min(pace.requests_per_minute / 60, pace.concurrent_calls / latency)
    return Estimate(
        records=records,
        input_tokens=prompt,
        output_tokens=output,
        cache_creation_input_tokens=writes,
        cache_read_input_tokens=reads,
        cost_usd=cached,
        cost_usd_without_caching=uncached,
        duration_seconds=(pace.backlog_records + records) / per_second if records else 0.0,
        output_basis=basis,
    )
