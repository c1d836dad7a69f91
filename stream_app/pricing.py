"""Exact cost from the input/output token split, per model."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

_PER_MTOK = Decimal(1000)  # list prices are per million tokens; we price per 1K


@dataclass(frozen=True)
class Price:
    input_per_1k: Decimal
    output_per_1k: Decimal

    def cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        return (
            Decimal(input_tokens) * self.input_per_1k + Decimal(output_tokens) * self.output_per_1k
        ) / 1000


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
