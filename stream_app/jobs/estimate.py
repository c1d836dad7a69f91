"""What a job will cost and how long it will take, before it runs: no model call per record.

Pure logic. Input tokens come from the provider's token-counting endpoint (free, not
billed) for the records themselves, or for a sample of them when the job is large
(`CountedPrompts`: the task's prefix counted once, the texts' tokens per character of the
sample applied to all the job's characters); where counting is not offered, from the
characters each call sends times a chars-per-token ratio (calibrated from what this worker
was billed for the same task, else 4 characters a token). Output tokens come from what
records of the same task were billed (mean of billed output tokens over every worker's
results on `batch.results`, which every worker reads from the beginning: the history
survives restarts and is the same on every worker), else from the output schema's shape,
never more than max_tokens. With a cacheable prefix, the first wave of calls (one per
concurrent slot) writes the prefix to the cache and later calls read it. The cost is a
point and a range (`cost_usd_low`, `cost_usd_high`): the output guess from the schema is the
widest part of it; a history narrows it to the spread of what records of the task billed.
The duration is the backlog ahead of the job plus its records, at the request budget's
pace or at the pace concurrency and the observed latency allow, whichever is slower.

A job on the batch lane (the provider's Message Batches API) is priced at the batch rates
(half of every price; its prefix is cached for an hour, so cache writes are priced as
1-hour writes) and takes the provider's time for a batch (most end within the hour),
whatever the live lane's budget and backlog.
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
    latency_ms: int = 0
    last_seen: float = 0.0


@dataclass
class _Outputs:
    records: int = 0
    tokens: int = 0
    squares: int = 0

    @property
    def mean(self) -> float:
        return self.tokens / self.records

    @property
    def spread(self) -> float:
        """Standard deviation of one record's output tokens."""
        variance = self.squares / self.records - self.mean**2
        return math.sqrt(max(0.0, variance))


class UsageHistory:
    """What records of each task (by fingerprint) were billed: output tokens from every
    worker's results (`observe_output`, fed from `batch.results`), and what only the
    worker that sent a call knows (its characters, latency) from this worker's own."""

    # Latencies of the most recent successful records (ms), for the duration estimate.
    RECENT = 50

    def __init__(self) -> None:
        self._tasks: dict[str, _Seen] = {}
        self._outputs: dict[str, _Outputs] = {}
        self._recent: deque[int] = deque(maxlen=self.RECENT)

    def observe(
        self, fingerprint: str, chars: int, usage: Usage, latency_ms: int, now: float = 0.0
    ) -> None:
        """One successful record of this worker: the characters its calls sent and the
        input they billed; `now` (Unix seconds) is when. Its output tokens are counted
        by `observe_output`, from `batch.results`, like every worker's."""
        seen = self._tasks.setdefault(fingerprint, _Seen())
        seen.last_seen = max(seen.last_seen, now)
        seen.records += 1
        seen.chars += chars
        seen.input_tokens += (
            usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens
        )
        seen.latency_ms += latency_ms
        self._recent.append(latency_ms)

    def observe_output(self, fingerprint: str, output_tokens: int) -> None:
        """One successful record of any worker: the output tokens its calls billed."""
        seen = self._outputs.setdefault(fingerprint, _Outputs())
        seen.records += 1
        seen.tokens += output_tokens
        seen.squares += output_tokens * output_tokens

    def records(self, fingerprint: str) -> int:
        """Successful records of this task seen on `batch.results`."""
        seen = self._outputs.get(fingerprint)
        return seen.records if seen else 0

    def output_tokens(self, fingerprint: str) -> float | None:
        """Mean billed output tokens of one record of this task, None without a history."""
        seen = self._outputs.get(fingerprint)
        return seen.mean if seen and seen.records else None

    def output_spread(self, fingerprint: str) -> float | None:
        """Standard deviation of one record's billed output tokens."""
        seen = self._outputs.get(fingerprint)
        return seen.spread if seen and seen.records else None

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
    # Where the output figure came from: "history of N" (records of this task) or "schema".
    output_basis: str
    # The range the cost should fall in (USD): the uncertainty of the output guess and,
    # for input tokens, of a sample's.
    cost_usd_low: Decimal = Decimal(0)
    cost_usd_high: Decimal = Decimal(0)
    # Where the input figure came from: "counted" (every record), "counted sample of N",
    # or "characters" (no token counting).
    input_basis: str = "characters"

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
            "cost_usd_low": float(round(self.cost_usd_low, 6)),
            "cost_usd_high": float(round(self.cost_usd_high, 6)),
            "input_basis": self.input_basis,
        }


@dataclass(frozen=True)
class Pace:
    """What bounds throughput: the cluster's request budget and its concurrent calls."""

    requests_per_minute: int
    concurrent_calls: int
    latency_seconds: float | None = None
    backlog_records: int = 0


@dataclass(frozen=True)
class CountedPrompts:
    """Prompt tokens the provider's token counting gave for some of a job's records.

    `prefix_tokens`: a call whose text is one character (the task's instructions, schema
    and framing); `tokens` and `chars`: the sampled records' prompt tokens and text
    characters, summed; `sampled`: how many records were counted."""

    prefix_tokens: int
    tokens: int
    chars: int
    sampled: int

    def total(self, records: int, text_chars: int) -> int:
        """Every prompt token of `records` records of `text_chars` characters in all:
        exact when every record was counted, else the sample's tokens per character of
        text applied to all the characters."""
        if self.sampled >= records:
            return self.tokens
        text_tokens = max(0, self.tokens - self.sampled * self.prefix_tokens)
        per_char = text_tokens / self.chars if self.chars else 1 / CHARS_PER_TOKEN
        return math.ceil(records * self.prefix_tokens + per_char * text_chars)


# Sampling error allowed for a counted sample's input tokens, and the range of an output
# guessed from the schema alone (what models write into a free string varies most).
_SAMPLE_MARGIN = 0.05
_SCHEMA_OUTPUT_RANGE = (0.6, 1.6)


def expected_output_tokens(
    task: PreparedTask,
    history: UsageHistory,
    text_chars: float | None = None,
    chars_per_token: float | None = None,
) -> tuple[float, str]:
    """(tokens per record, basis): the mean billed output of the task's records, else the
    schema's likely answer (`output_chars`, for texts of `text_chars` characters on average)
    at `chars_per_token` (the provider's tokenizer as token counting measured it, else
    3.5: JSON is denser than prose)."""
    seen = history.output_tokens(task.fingerprint)
    if seen is not None:
        return min(seen, task.max_tokens), f"history of {history.records(task.fingerprint)}"
    schema = task.output_format["schema"]
    per_token = chars_per_token or _OUTPUT_CHARS_PER_TOKEN
    guess = output_chars(schema, schema, text_chars=text_chars) / per_token
    return min(max(guess, 1.0), task.max_tokens), "schema"


# What a field of each kind likely holds, in characters: a model's answer restates the text
# (a summary or an observation is no longer than what it is about), names a few things
# (topics, tags: a word or two each), or picks from the schema's own values. Measured
# against billed outputs with bench/estimate_accuracy.py.
_SUMMARY_CHARS = 130
_WORD_CHARS = 12
_PHRASE_CHARS = 60
_SUMMARY_NAMES = ("summary", "abstract", "synopsis", "overview", "description", "explanation")
_WORD_LIST_NAMES = ("topic", "tag", "keyword", "entit", "label", "categor", "theme")
_OBJECT_ITEMS = 1


def output_chars(
    schema: Mapping[str, Any],
    root: Mapping[str, Any],
    depth: int = 0,
    *,
    name: str = "",
    text_chars: float | None = None,
) -> int:
    """A likely length of a JSON answer of `schema` for a text of `text_chars` characters
    (None: any length): free strings at most as long as the text (a summary 130
    characters, a list item 60, another string 100), lists of keywords 3 of 12, a list of
    objects one, the key names and punctuation."""
    if depth > 6:
        return 4
    cap = text_chars if text_chars is not None else float("inf")
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, Mapping) else {}
        return output_chars(target, root, depth + 1, name=name, text_chars=text_chars)
    if "const" in schema:
        return len(str(schema["const"])) + 2
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return sum(len(str(v)) + 2 for v in schema["enum"]) // len(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return max(
                output_chars(s, root, depth + 1, name=name, text_chars=text_chars)
                for s in schema[key]
            )
    if isinstance(schema.get("allOf"), list):
        return sum(
            output_chars(s, root, depth + 1, name=name, text_chars=text_chars)
            for s in schema["allOf"]
        )
    kind = schema.get("type")
    lowered = name.lower()
    if kind == "object":
        props = schema.get("properties", {})
        return 2 + sum(
            len(k) + 4 + output_chars(v, root, depth + 1, name=k, text_chars=text_chars)
            for k, v in props.items()
        )
    if kind == "array":
        items = schema.get("items", {})
        if items.get("type") == "object" or "$ref" in items:
            count, each = _OBJECT_ITEMS, output_chars(items, root, depth + 1, text_chars=text_chars)
        elif items.get("type") == "string" and any(w in lowered for w in _WORD_LIST_NAMES):
            count, each = _LIST_ITEMS, _WORD_CHARS + 2
        elif items.get("type") == "string" and not {"enum", "const", "format"} & items.keys():
            count, each = _LIST_ITEMS, int(min(cap, _PHRASE_CHARS)) + 2
        else:
            count = _LIST_ITEMS
            each = output_chars(items, root, depth + 1, name=name, text_chars=text_chars)
        return 2 + count * (each + 1)
    if kind == "string":
        if "format" in schema and schema["format"] != "text":
            return 22
        if any(n in lowered for n in _SUMMARY_NAMES):
            return int(min(cap, _SUMMARY_CHARS)) + 2
        return int(min(cap, _STRING_CHARS)) + 2
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
    counted: CountedPrompts | None = None,
    batch_seconds: float | None = None,
) -> Estimate:
    """The expected tokens, cost (USD) and duration (seconds) of `records` records whose
    texts hold `text_chars` characters in all; `now` in Unix seconds (a prefix this worker
    used within the cache's lifetime is assumed still cached: no writes). `counted`: the
    provider's token counts for the records or a sample of them (None: from characters).
    `batch_seconds`: the job runs on the batch lane, whose provider batches are expected to
    take this long (None: the live lane)."""
    if batch_seconds is not None:
        price = price.at_batch_rates()
    per_token = history.chars_per_token(task.fingerprint) or CHARS_PER_TOKEN
    if counted is not None and counted.sampled:
        prompt = counted.total(records, text_chars)
        prefix = counted.prefix_tokens
        exact = counted.sampled >= records
        input_basis = "counted" if exact else f"counted sample of {counted.sampled}"
        input_margin = 0.0 if exact else _SAMPLE_MARGIN
    else:
        prompt = math.ceil((task.prefix_chars * records + text_chars) / per_token)
        prefix = math.ceil(task.prefix_chars / per_token)
        input_basis = "characters"
        input_margin = 0.0 if history.chars_per_token(task.fingerprint) else 0.15
    measured_ratio = None
    if counted is not None and counted.chars and counted.sampled:
        text_tokens = counted.tokens - counted.sampled * counted.prefix_tokens
        measured_ratio = counted.chars / text_tokens if text_tokens > 0 else None
    output_each, basis = expected_output_tokens(
        task,
        history,
        text_chars=text_chars / records if records else None,
        chars_per_token=measured_ratio,
    )
    output = math.ceil(output_each * records)
    if basis == "schema":
        low_out, high_out = _SCHEMA_OUTPUT_RANGE
    else:
        # The mean of `records` records varies with the spread of one record's output
        # (the texts differ from those the history saw): two standard errors, at least 5%.
        spread = history.output_spread(task.fingerprint) or 0.0
        margin = max(0.05, 2 * spread / output_each / math.sqrt(max(records, 1)))
        margin = max(margin, 0.1 if history.records(task.fingerprint) < 50 else 0.05)
        low_out, high_out = 1 - margin, 1 + margin
    writes = reads = 0
    if task.cache_prefix and records:
        last = history.last_seen(task.fingerprint)
        warm = last is not None and now - last < CACHE_TTL_SECONDS
        writing_calls = 0 if warm else min(records, pace.concurrent_calls)
        writes = writing_calls * prefix
        reads = (records - writing_calls) * prefix
    # The batch lane caches its prefix for an hour: its writes are 1-hour writes.
    writes_1h = writes if batch_seconds is not None else 0
    cached = price.cost_of(
        Usage(
            input_tokens=prompt - writes - reads,
            output_tokens=output,
            cache_creation_input_tokens=writes,
            cache_read_input_tokens=reads,
            cache_creation_1h_input_tokens=writes_1h,
        )
    )
    uncached = price.cost_of(Usage(input_tokens=prompt, output_tokens=output))

    def cost_at(input_factor: float, output_factor: float) -> Decimal:
        fresh = max(0, math.ceil((prompt - writes - reads) * input_factor))
        return price.cost_of(
            Usage(
                input_tokens=fresh,
                output_tokens=math.ceil(output * output_factor),
                cache_creation_input_tokens=writes,
                cache_read_input_tokens=reads,
                cache_creation_1h_input_tokens=writes_1h,
            )
        )

    latency = pace.latency_seconds or _DEFAULT_LATENCY_SECONDS
    per_second = min(pace.requests_per_minute / 60, pace.concurrent_calls / latency)
    if not records:
        duration = 0.0
    elif batch_seconds is not None:
        duration = batch_seconds
    else:
        duration = (pace.backlog_records + records) / per_second
    return Estimate(
        records=records,
        input_tokens=prompt,
        output_tokens=output,
        cache_creation_input_tokens=writes,
        cache_read_input_tokens=reads,
        cost_usd=cached,
        cost_usd_without_caching=uncached,
        duration_seconds=duration,
        output_basis=basis,
        cost_usd_low=min(cached, cost_at(1 - input_margin, low_out)),
        cost_usd_high=max(cached, cost_at(1 + input_margin, high_out)),
        input_basis=input_basis,
    )
