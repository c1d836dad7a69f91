"""Exact cost from the billed token split, per model (decimal arithmetic, USD).

The prices come from `genai-prices` (Pydantic's maintained price data, pinned in
pyproject.toml), read from the data shipped in its wheel: never fetched at run time. For
Anthropic it records, per model, the input and output prices, the cache write (5-minute
and 1-hour) and cache read prices (not always the usual 1.25x / 2x / 0.1x of input: Sonnet
5.5 reads at 0.05x), the long-prompt tier (Haiku 5.5: every token of a call whose prompt
exceeds 100,000 tokens at 5x), and the Message Batches prices (50% of all of them).
Its source for Anthropic is https://www.anthropic.com/pricing#api and the pricing pages of
platform.claude.com it names per model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache

from genai_prices import types as price_types
from genai_prices.data_snapshot import get_snapshot

from stream_app.provider.usage import Usage

PRICE_SOURCE = "genai-prices (Anthropic's published prices, https://www.anthropic.com/pricing#api)"
_PROVIDER = "anthropic"
# A CLAUDE_MODEL genai-prices does not know is priced like this one (and the log says so):
# the default CLAUDE_MODEL, a current Sonnet.
FALLBACK_MODEL = "claude-sonnet-5-5"
_PER_1K = Decimal(1000)  # genai-prices gives USD per million tokens; we price per 1K

# Prompt caching, as multiples of the input price (Anthropic's pricing page, "Prompt
# caching"), used only where a price has no cache price of its own: an input price set by
# BATCH_COST_PER_1K_INPUT_TOKENS keeps the model's own ratios instead, when it has them.
CACHE_WRITE_5M_MULTIPLIER = Decimal("1.25")
CACHE_WRITE_1H_MULTIPLIER = Decimal("2")
CACHE_READ_MULTIPLIER = Decimal("0.1")
# The Message Batches API bills every kind of token at half the standard price (provider
# docs); used where genai-prices has no batch prices for a model.
BATCH_DISCOUNT = Decimal("0.5")


@dataclass(frozen=True)
class Price:
    """USD per 1,000 tokens of each billed kind for one call.

    `cache_write_per_1k` (5-minute cache), `cache_write_1h_per_1k` and `cache_read_per_1k`
    default to 1.25x, 2x and 0.1x of `input_per_1k`. `tiers` are (prompt tokens, Price):
    a call whose prompt (input, cache writes and reads together) exceeds that many tokens
    pays that tier's price for every token (the provider's long-context rule). `batch` is
    the price at Message Batches rates (None: half of this one)."""

    input_per_1k: Decimal
    output_per_1k: Decimal
    cache_write_per_1k: Decimal | None = None
    cache_write_1h_per_1k: Decimal | None = None
    cache_read_per_1k: Decimal | None = None
    tiers: tuple[tuple[int, Price], ...] = ()
    batch: Price | None = field(default=None, compare=False)

    @property
    def cache_write(self) -> Decimal:
        """USD per 1K tokens written to the 5-minute cache."""
        if self.cache_write_per_1k is not None:
            return self.cache_write_per_1k
        return self.input_per_1k * CACHE_WRITE_5M_MULTIPLIER

    @property
    def cache_write_1h(self) -> Decimal:
        """USD per 1K tokens written to the 1-hour cache."""
        if self.cache_write_1h_per_1k is not None:
            return self.cache_write_1h_per_1k
        return self.input_per_1k * CACHE_WRITE_1H_MULTIPLIER

    @property
    def cache_read(self) -> Decimal:
        """USD per 1K tokens read from the cache."""
        if self.cache_read_per_1k is not None:
            return self.cache_read_per_1k
        return self.input_per_1k * CACHE_READ_MULTIPLIER

    def for_prompt(self, prompt_tokens: int) -> Price:
        """The price a call with this many prompt tokens pays (its tier, if any)."""
        chosen = self
        for start, tier in self.tiers:
            if prompt_tokens > start:
                chosen = tier
        return chosen

    def at_batch_rates(self) -> Price:
        """This price for a request of a Message Batch (genai-prices' batch prices, else
        half of every price; tiers halved too)."""
        if self.batch is not None:
            return self.batch
        return self.scaled(BATCH_DISCOUNT)

    def scaled(self, factor: Decimal) -> Price:
        """Every price (and tier) times `factor`."""

        def times(value: Decimal | None) -> Decimal | None:
            return None if value is None else value * factor

        return Price(
            self.input_per_1k * factor,
            self.output_per_1k * factor,
            times(self.cache_write_per_1k),
            times(self.cache_write_1h_per_1k),
            times(self.cache_read_per_1k),
            tuple((start, tier.scaled(factor)) for start, tier in self.tiers),
        )

    def cost(
        self,
        input_tokens: int,
        output_tokens: int,
        cache_creation_input_tokens: int = 0,
        cache_read_input_tokens: int = 0,
        cache_creation_1h_input_tokens: int = 0,
    ) -> Decimal:
        """USD for these counts of one call (or of calls that share a tier); `input_tokens`
        excludes cache writes and reads, as in the API's usage;
        `cache_creation_input_tokens` counts every cache write, of which
        `cache_creation_1h_input_tokens` went to the 1-hour cache."""
        prompt = input_tokens + cache_creation_input_tokens + cache_read_input_tokens
        price = self.for_prompt(prompt)
        one_hour = min(cache_creation_1h_input_tokens, cache_creation_input_tokens)
        five_minutes = cache_creation_input_tokens - one_hour
        return (
            Decimal(input_tokens) * price.input_per_1k
            + Decimal(output_tokens) * price.output_per_1k
            + Decimal(five_minutes) * price.cache_write
            + Decimal(one_hour) * price.cache_write_1h
            + Decimal(cache_read_input_tokens) * price.cache_read
        ) / 1000

    def cost_of(self, usage: Usage) -> Decimal:
        """USD for `usage` (see `cost`)."""
        return self.cost(**usage.fields())


class UnknownPrice(LookupError):
    """genai-prices has no price for this model."""


def _per_1k(value: Decimal | price_types.TieredPrices | None) -> Decimal | None:
    if value is None:
        return None
    base = value.base if isinstance(value, price_types.TieredPrices) else value
    return base / _PER_1K


def _tier_starts(model_price: price_types.ModelPrice) -> list[int]:
    starts: set[int] = set()
    for value in vars(model_price).values():
        if isinstance(value, price_types.TieredPrices):
            starts.update(tier.start for tier in value.tiers)
    return sorted(starts)


def _at_tier(value: Decimal | price_types.TieredPrices | None, start: int) -> Decimal | None:
    """The price per 1K that a prompt just above `start` tokens pays."""
    if not isinstance(value, price_types.TieredPrices):
        return _per_1k(value)
    chosen = value.base
    for tier in value.tiers:
        if start >= tier.start:
            chosen = tier.price
    return chosen / _PER_1K


def _convert(model_price: price_types.ModelPrice) -> Price:
    def flat(start: int | None) -> Price:
        def pick(key: str) -> Decimal | None:
            value = getattr(model_price, key)
            return _per_1k(value) if start is None else _at_tier(value, start)

        return Price(
            pick("input_mtok") or Decimal(0),
            pick("output_mtok") or Decimal(0),
            pick("cache_write_mtok"),
            pick("cache_write_1h_mtok"),
            pick("cache_read_mtok"),
        )

    tiers = tuple((start, flat(start)) for start in _tier_starts(model_price))
    return replace(flat(None), tiers=tiers)


@lru_cache(maxsize=256)
def _listed(model: str, on: datetime | None) -> Price:
    """The price genai-prices lists for `model` on the day `on` (None: today)."""
    try:
        _, info = get_snapshot().find_provider_model(model, None, _PROVIDER, None)
    except LookupError as exc:
        raise UnknownPrice(f"no price for model {model!r} in genai-prices") from exc
    when = on or datetime.now(UTC)
    standard = _convert(info.get_prices(when))
    has_batch = any(
        variant.when.get("processing") == "batch"
        and (variant.constraint is None or variant.constraint.active(when))
        for variant in info.price_variants or ()
    )
    batch = _convert(info.get_prices(when, {"processing": "batch"})) if has_batch else None
    return replace(standard, batch=batch)


def _today() -> datetime:
    # Prices change by date (genai-prices keeps dated rows); a day's lookups are cached.
    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def listed_price(model: str) -> Price:
    """genai-prices' price for `model` today. Raises UnknownPrice."""
    return _listed(model, _today())


def is_known_model(model: str) -> bool:
    """Whether genai-prices has a price for `model` (an Anthropic model id, dated or not)."""
    try:
        listed_price(model)
    except UnknownPrice:
        return False
    return True


def price_for(
    model: str,
    input_per_1k: Decimal | None = None,
    output_per_1k: Decimal | None = None,
    *,
    fallback_model: str | None = None,
) -> Price:
    """The price for `model` from genai-prices, with either side overridden by
    configuration (BATCH_COST_PER_1K_INPUT_TOKENS / _OUTPUT_TOKENS, USD per 1K tokens).

    An overridden price is flat (no long-prompt tier): the cache prices keep the model's
    own ratios to its input price, and its batch price is half of it. A model genai-prices
    does not know is priced like `fallback_model` (the caller logs it); with neither known,
    raises UnknownPrice unless both sides are overridden."""
    try:
        base = listed_price(model)
    except UnknownPrice:
        if fallback_model is None or fallback_model == model:
            if input_per_1k is None or output_per_1k is None:
                raise
            return Price(input_per_1k, output_per_1k)
        base = listed_price(fallback_model)
    if input_per_1k is None and output_per_1k is None:
        return base
    new_input = base.input_per_1k if input_per_1k is None else input_per_1k
    ratio = new_input / base.input_per_1k if base.input_per_1k else Decimal(1)

    def cached(value: Decimal | None) -> Decimal | None:
        return None if value is None else value * ratio

    return Price(
        new_input,
        base.output_per_1k if output_per_1k is None else output_per_1k,
        cached(base.cache_write_per_1k),
        cached(base.cache_write_1h_per_1k),
        cached(base.cache_read_per_1k),
    )


def known_models() -> list[str]:
    """The Anthropic model ids genai-prices has prices for (its own ids; dated and dotted
    spellings of them are known too)."""
    provider = get_snapshot().find_provider(None, _PROVIDER, None)
    return sorted(model.id for model in provider.models)
