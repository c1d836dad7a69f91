"""Prices of current Claude models against Anthropic's published prices.

The expected dollar figures are written out here from Anthropic's price list
(https://www.anthropic.com/pricing#api and platform.claude.com's pricing page, "Model
pricing", "Long context pricing", "Prompt caching", "Batch processing") as genai-prices
0.2.3 records it, so these checks do not reuse the code they check. USD per million tokens:

| model | input | output | 5-min cache write | 1-h cache write | cache read |
|---|---|---|---|---|---|
| claude-sonnet-5-5 | 2 | 10 | 2.50 | 4 | 0.10 (0.05x) |
| claude-opus-5-5 | 4 | 20 | 5 | 8 | 0.20 (0.05x) |
| claude-haiku-5-5, prompt <= 100k | 0.10 | 0.50 | 0.125 | 0.20 | 0.01 |
| claude-haiku-5-5, prompt > 100k | 0.50 | 2.50 | 0.625 | 1 | 0.05 |

Message Batches: 50% of each.
"""

from decimal import Decimal

import pytest
from genai_prices import Usage as ListedUsage
from genai_prices import calc_price

from stream_app.core.settings import Settings
from stream_app.provider.pricing import (
    FALLBACK_MODEL,
    UnknownPrice,
    is_known_model,
    known_models,
    price_for,
)
from stream_app.provider.usage import Usage


def test_a_current_sonnet_with_cache_tokens() -> None:
    price = price_for("claude-sonnet-5-5")
    # 1,000 in x $2 + 500 out x $10 + 1,500 5-min writes x $2.50 + 500 1-h writes x $4
    # + 10,000 reads x $0.10 = $13,750 per million.
    usage = Usage(1000, 500, 2000, 10_000, 500)
    assert price.cost_of(usage) == Decimal("0.01375")
    # The same at Message Batches rates: half.
    assert price.at_batch_rates().cost_of(usage) == Decimal("0.006875")


def test_a_current_opus_with_cache_tokens() -> None:
    price = price_for("claude-opus-5-5-20261001")  # a dated id finds its model
    # 2,000 x $4 + 1,000 x $20 + 4,000 5-min writes x $5 + 20,000 reads x $0.20.
    assert price.cost_of(Usage(2000, 1000, 4000, 20_000)) == Decimal("0.052")
    assert price.at_batch_rates().cost_of(Usage(2000, 1000, 4000, 20_000)) == Decimal("0.026")


def test_a_current_haiku_in_both_tiers() -> None:
    price = price_for("claude-haiku-5-5")
    # Prompt of exactly 100,000 tokens (50,000 in + 10,000 written + 40,000 read): base tier.
    # 50,000 x $0.10 + 1,000 x $0.50 + 10,000 x $0.125 + 40,000 x $0.01 = $7,150 per million.
    assert price.cost_of(Usage(50_000, 1000, 10_000, 40_000)) == Decimal("0.00715")
    # One more prompt token: every token of the call at the higher tier.
    # 50,001 x $0.50 + 1,000 x $2.50 + 10,000 x $0.625 + 40,000 x $0.05 = $35,750.50.
    assert price.cost_of(Usage(50_001, 1000, 10_000, 40_000)) == Decimal("0.0357505")
    # A 1-hour write above the threshold: 100,001 x $0.50 + 1,000 x $1.
    assert price.cost_of(Usage(100_001, 0, 1000, 0, 1000)) == Decimal("0.0510005")
    # Batch rates keep the tier, halved.
    assert price.at_batch_rates().cost_of(Usage(50_001, 1000, 10_000, 40_000)) == Decimal(
        "0.01787525"
    )


def test_prices_agree_with_genai_prices_own_calculation_for_every_claude_model() -> None:
    usages = [Usage(1234, 567, 3000, 9000, 1000), Usage(150_000, 2000, 30_000, 70_000, 0)]
    # Claude 1 and 2 had no prompt caching (genai-prices lists no cache price for them).
    cached_models = [m for m in known_models() if price_for(m).cache_read_per_1k is not None]
    assert len(cached_models) >= 20
    for model in cached_models:
        for usage in usages:
            listed = calc_price(
                ListedUsage(
                    input_tokens=usage.input_tokens
                    + usage.cache_creation_input_tokens
                    + usage.cache_read_input_tokens,
                    output_tokens=usage.output_tokens,
                    cache_write_tokens=usage.cache_creation_input_tokens,
                    cache_write_1h_tokens=usage.cache_creation_1h_input_tokens,
                    cache_read_tokens=usage.cache_read_input_tokens,
                ),
                model,
                provider_id="anthropic",
            )
            assert price_for(model).cost_of(usage) == listed.total_price, model


def test_older_models_keep_their_own_price() -> None:
    price = price_for("claude-sonnet-4-5-20250929")
    assert (price.input_per_1k, price.output_per_1k) == (Decimal("0.003"), Decimal("0.015"))
    assert price_for("claude-opus-4-1-20250805").input_per_1k == Decimal("0.015")
    # 1234 in at $3/MTok + 567 out at $15/MTok, not a 50/50 blend.
    assert price_for("claude-sonnet-4-6").cost(1234, 567) == Decimal("0.012207")


def test_overrides_replace_either_side_and_cache_prices_keep_the_models_ratios() -> None:
    price = price_for("claude-sonnet-5-5", input_per_1k=Decimal("0.01"))
    assert (price.input_per_1k, price.output_per_1k) == (Decimal("0.01"), Decimal("0.01"))
    # Sonnet 5.5 writes at 1.25x, 1-h writes at 2x, reads at 0.05x of input.
    assert price.cost(0, 0, cache_creation_input_tokens=1000) == Decimal("0.0125")
    assert price.cost(0, 0, 1000, 0, cache_creation_1h_input_tokens=1000) == Decimal("0.02")
    assert price.cost(0, 0, cache_read_input_tokens=1000) == Decimal("0.0005")
    # An overridden price is flat (no tier) and its batch price is half.
    assert price_for("claude-haiku-5-5", Decimal("0.001"), Decimal("0.002")).cost(
        200_000, 1000
    ) == Decimal("0.202")
    assert price.at_batch_rates().input_per_1k == Decimal("0.005")


def test_unknown_models() -> None:
    assert not is_known_model("my-finetune")
    assert not is_known_model("claude-sonnet-9-9")
    with pytest.raises(UnknownPrice):
        price_for("my-finetune")
    assert price_for("my-finetune", fallback_model=FALLBACK_MODEL) == price_for(FALLBACK_MODEL)
    both = price_for("my-finetune", Decimal("1"), Decimal("2"))
    assert (both.input_per_1k, both.output_per_1k) == (Decimal("1"), Decimal("2"))


def test_the_default_model_is_current_and_priced() -> None:
    default = Settings.model_fields["claude_model"].default
    assert default == FALLBACK_MODEL
    assert is_known_model(default)
    assert price_for(default).at_batch_rates() == price_for(default).scaled(Decimal("0.5"))
