from decimal import Decimal

from stream_app.provider.pricing import FALLBACK_PRICE, is_known_model, price_for
from stream_app.provider.usage import Usage


def test_dated_model_ids_find_their_family() -> None:
    price = price_for("claude-sonnet-4-5-20250929")
    assert price.input_per_1k == Decimal("0.003")
    assert price.output_per_1k == Decimal("0.015")
    assert price_for("claude-haiku-4-5").output_per_1k == Decimal("0.005")
    assert price_for("claude-opus-4-1-20250805").input_per_1k == Decimal("0.015")


def test_cost_uses_the_split_exactly() -> None:
    price = price_for("claude-sonnet-4-6")
    # 1234 in at $3/MTok + 567 out at $15/MTok, not a 50/50 blend.
    assert price.cost(1234, 567) == Decimal("0.003702") + Decimal("0.008505")


def test_overrides_replace_either_side() -> None:
    price = price_for("claude-sonnet-4-6", input_per_1k=Decimal("0.01"))
    assert price.input_per_1k == Decimal("0.01")
    assert price.output_per_1k == Decimal("0.015")
    assert price_for("x", None, Decimal("1")).output_per_1k == Decimal("1")


def test_unknown_model_falls_back_to_sonnet() -> None:
    assert not is_known_model("my-finetune")
    assert price_for("my-finetune") == FALLBACK_PRICE


def test_newer_versions_fall_back_to_their_family() -> None:
    assert is_known_model("claude-opus-5-5")
    assert price_for("claude-opus-5-5").output_per_1k == Decimal("0.025")
    assert price_for("claude-haiku-5-5").input_per_1k == Decimal("0.001")
    # A listed older version keeps its own, higher price.
    assert price_for("claude-opus-4-1").input_per_1k == Decimal("0.015")


def test_cache_writes_and_reads_are_priced_by_multiples_of_input() -> None:
    price = price_for("claude-sonnet-4-6")  # $3 in, $15 out per MTok
    # 1000 5-minute writes at 1.25 x $3, 300 1-hour writes at 2 x $3, 2000 reads at 0.1 x $3.
    cost = price.cost(
        100,
        20,
        cache_creation_input_tokens=1300,
        cache_read_input_tokens=2000,
        cache_creation_1h_input_tokens=300,
    )
    assert cost == (
        Decimal("0.0003")  # 100 input
        + Decimal("0.0003")  # 20 output
        + Decimal("0.00375")  # 1000 x $3.75/MTok
        + Decimal("0.0018")  # 300 x $6/MTok
        + Decimal("0.0006")  # 2000 x $0.30/MTok
    )
    assert price.cost_of(Usage(100, 20, 1300, 2000, 300)) == cost


def test_the_multipliers_apply_to_an_input_price_override() -> None:
    price = price_for("claude-sonnet-4-6", input_per_1k=Decimal("0.01"))
    assert price.cost(0, 0, cache_creation_input_tokens=1000) == Decimal("0.0125")
    assert price.cost(0, 0, 1000, 0, cache_creation_1h_input_tokens=1000) == Decimal("0.02")
    assert price.cost(0, 0, cache_read_input_tokens=1000) == Decimal("0.001")


def test_haiku_cache_reads_stay_exact() -> None:
    price = price_for("claude-3-haiku")  # $0.25/MTok: a read is $0.025/MTok
    assert price.cost(0, 0, cache_read_input_tokens=1) == Decimal("0.000000025")
