"""Billed tokens read from the SDK's usage object: every count, null-safe."""

from __future__ import annotations

import anthropic
import pytest

from stream_app.provider.usage import Usage


def sdk_usage(**fields: object) -> anthropic.types.Usage:
    # As the SDK builds it from a response body (no validation, so nulls stay nulls).
    return anthropic.types.Usage.construct(**fields)


def test_every_billed_count_is_read() -> None:
    usage = Usage.from_api(
        anthropic.types.Usage(
            input_tokens=100,
            output_tokens=20,
            cache_creation_input_tokens=1300,
            cache_read_input_tokens=2000,
            cache_creation=anthropic.types.CacheCreation(
                ephemeral_5m_input_tokens=1000, ephemeral_1h_input_tokens=300
            ),
        )
    )
    assert usage == Usage(100, 20, 1300, 2000, 300)
    assert usage.total == 100 + 20 + 1300 + 2000


def test_absent_and_null_counts_are_zero() -> None:
    assert Usage.from_api(sdk_usage(input_tokens=7, output_tokens=3)) == Usage(7, 3)
    nulls = sdk_usage(
        input_tokens=7,
        output_tokens=3,
        cache_creation_input_tokens=None,
        cache_read_input_tokens=None,
        cache_creation=None,
    )
    assert Usage.from_api(nulls) == Usage(7, 3)
    assert Usage.from_api(sdk_usage(input_tokens=None, output_tokens=None)) == Usage()


def test_a_breakdown_without_the_total_still_counts() -> None:
    breakdown = anthropic.types.CacheCreation(
        ephemeral_5m_input_tokens=40, ephemeral_1h_input_tokens=2
    )
    usage = Usage.from_api(sdk_usage(input_tokens=1, output_tokens=1, cache_creation=breakdown))
    assert (usage.cache_creation_input_tokens, usage.cache_creation_1h_input_tokens) == (42, 2)


@pytest.mark.parametrize("bad", ["lots", -5, 1.5, True])
def test_an_unreadable_count_raises(bad: object) -> None:
    with pytest.raises(ValueError, match="unreadable token count"):
        Usage.from_api(sdk_usage(input_tokens=bad, output_tokens=1))


def test_sums_and_wire_names() -> None:
    total = Usage(1, 2, 3, 4, 1) + Usage(10, 20, 30, 40, 5)
    assert total == Usage(11, 22, 33, 44, 6)
    assert total.fields() == {
        "input_tokens": 11,
        "output_tokens": 22,
        "cache_creation_input_tokens": 33,
        "cache_read_input_tokens": 44,
        "cache_creation_1h_input_tokens": 6,
    }
