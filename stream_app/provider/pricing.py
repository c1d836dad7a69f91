"""Exact cost from the billed token split, per model (decimal arithmetic, USD)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from stream_app.provider.usage import Usage

_PER_MTOK = Decimal(1000)  # list prices are per million tokens; we price per 1K

# Prompt caching, as multiples of the model's input price (Anthropic's pricing page,
# "Prompt caching"): a write to the 5-minute cache costs 1.25x, a write to the 1-hour
# cache 2x, a read from the cache 0.1x. They apply to a BATCH_COST_PER_1K_INPUT_TOKENS
# override too, since that override replaces the input price they multiply.
CACHE_WRITE_5M_MULTIPLIER = Decimal("1.25")
CACHE_WRITE_1H_MULTIPLIER = Decimal("2")
CACHE_READ_MULTIPLIER = Decimal("0.1")


@dataclass(frozen=True)
class Price:
    """USD per 1,000 tokens."""

    input_per_1k: Decimal
    output_per_1k: Decimal

    def cost(
        self,
        input_tokens: int,
        output_tokens: int,
        cache_creation_input_tokens: int = 0,
        cache_read_input_tokens: int = 0,
        cache_creation_1h_input_tokens: int = 0,
    ) -> Decimal:
        """USD for these counts; `cache_creation_input_tokens` counts every cache write,
        of which `cache_creation_1h_input_tokens` went to the 1-hour cache."""
        one_hour = min(cache_creation_1h_input_tokens, cache_creation_input_tokens)
        five_minutes = cache_creation_input_tokens - one_hour
        per_input = self.input_per_1k
        return (
            Decimal(input_tokens) * per_input
            + Decimal(output_tokens) * self.output_per_1k
            + Decimal(five_minutes) * per_input * CACHE_WRITE_5M_MULTIPLIER
            + Decimal(one_hour) * per_input * CACHE_WRITE_1H_MULTIPLIER
            + Decimal(cache_read_input_tokens) * per_input * CACHE_READ_MULTIPLIER
        ) / 1000

    def cost_of(self, usage: Usage) -> Decimal:
        return self.cost(**usage.fields())


def _per_mtok(input_usd: str, output_usd: str) -> Price:
    return Price(Decimal(input_usd) / _PER_MTOK, Decimal(output_usd) / _PER_MTOK)


# Anthropic list prices (USD per million tokens). Longest matching prefix wins, so dated
# model ids ("claude-sonnet-4-5-20250929") find their version, and versions released after
# this table was written fall back to their family's current list price (the bare
# "claude-opus" / "claude-sonnet" / "claude-haiku" rows); override with
# BATCH_COST_PER_1K_* when a new version is priced differently.
PRICE_TABLE: dict[str, Price] = {
    "claude-opus": _per_mtok("5", "25"),
    "claude-sonnet": _per_mtok("3", "15"),
    "claude-haiku": _per_mtok("1", "5"),
    "claude-opus-4-6": _per_mtok("5", "25"),
    "claude-opus-4-5": _per_mtok("5", "25"),
    "claude-opus-4-1": _per_mtok("15", "75"),
    "claude-opus-4": _per_mtok("15", "75"),
    "claude-sonnet-4-6": _per_mtok("3", "15"),
    "claude-sonnet-4-5": _per_mtok("3", "15"),
    "claude-sonnet-4": _per_mtok("3", "15"),
    "claude-3-7-sonnet": _per_mtok("3", "15"),
    "claude-haiku-4-5": _per_mtok("1", "5"),
    "claude-3-5-haiku": _per_mtok("0.80", "4"),
    "claude-3-haiku": _per_mtok("0.25", "1.25"),
}
# An unknown model is priced like Sonnet, the middle of the range, and said so in the log.
FALLBACK_PRICE = PRICE_TABLE["claude-sonnet"]


def price_for(
    model: str,
    input_per_1k: Decimal | None = None,
    output_per_1k: Decimal | None = None,
) -> Price:
    """The price for `model`, with either side overridden by configuration."""
    matches = [prefix for prefix in PRICE_TABLE if model.startswith(prefix)]
    base = PRICE_TABLE[max(matches, key=len)] if matches else FALLBACK_PRICE
    return Price(
        input_per_1k if input_per_1k is not None else base.input_per_1k,
        output_per_1k if output_per_1k is not None else base.output_per_1k,
    )


def is_known_model(model: str) -> bool:
    return any(model.startswith(prefix) for prefix in PRICE_TABLE)
