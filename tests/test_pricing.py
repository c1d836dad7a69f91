from decimal import Decimal

from stream_app.pricing import FALLBACK_PRICE, is_known_model, price_for


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
