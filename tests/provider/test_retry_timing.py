"""Every form of "wait this long" the provider may send, read without a clock or sleeping."""

from __future__ import annotations

import datetime as dt
import email.utils

import pytest

from stream_app.provider.retry_timing import (
    ProviderWait,
    exhausted_token_limits,
    read_wait,
    reset_at,
)

NOW = 1_800_000_000.0  # a fixed "now" (2027-01-15)
CAP = 300.0


def rfc3339(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def http_date(at: float) -> str:
    return email.utils.formatdate(at, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "seconds", "source"),
    [
        ({"retry-after": "2"}, 2.0, "retry-after"),
        ({"retry-after": " 1.5 "}, 1.5, "retry-after"),
        ({"retry-after": "0"}, 0.0, "retry-after"),
        ({"retry-after": http_date(NOW + 7)}, 7.0, "retry-after"),
        ({"retry-after": http_date(NOW - 60)}, 0.0, "retry-after"),  # a past date: now
        ({"retry-after-ms": "1500"}, 1.5, "retry-after-ms"),
        # retry-after-ms wins over retry-after, as in the SDK.
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25, "retry-after-ms"),
        (
            {
                "anthropic-ratelimit-requests-remaining": "0",
                "anthropic-ratelimit-requests-reset": rfc3339(NOW + 4.5),
            },
            4.5,
            "anthropic-ratelimit-requests-reset",
        ),
        (
            # The spent limit decides, not the earliest reset.
            {
                "anthropic-ratelimit-requests-remaining": "3",
                "anthropic-ratelimit-requests-reset": rfc3339(NOW + 1),
                "anthropic-ratelimit-input-tokens-remaining": "0",
                "anthropic-ratelimit-input-tokens-reset": rfc3339(NOW + 6),
            },
            6.0,
            "anthropic-ratelimit-input-tokens-reset",
        ),
        (
            # Nothing says 0: the earliest reset still ahead.
            {
                "anthropic-ratelimit-requests-reset": rfc3339(NOW + 3),
                "anthropic-ratelimit-tokens-reset": "2027-01-15T08:00:02Z",
            },
            2.0,
            "anthropic-ratelimit-tokens-reset",
        ),
    ],
)
def test_every_readable_form(headers: dict[str, str], seconds: float, source: str) -> None:
    reading = read_wait(headers, NOW, CAP)
    assert reading.wait == ProviderWait(seconds, source, seconds)
    assert reading.ignored == ()
    assert not reading.wait.capped


@pytest.mark.parametrize(
    "raw", ["soon", "-5", "-0.5", "nan", "inf", "-inf", "", "Mon, 99 Foo 2026 99:99:99 GMT", "1 2"]
)
def test_garbage_and_negative_values_are_ignored_never_raised(raw: str) -> None:
    reading = read_wait({"retry-after": raw}, NOW, CAP)
    assert reading.wait is None
    assert reading.ignored == (("retry-after", raw),)


def test_an_unreadable_form_falls_through_to_the_next() -> None:
    headers = {
        "retry-after-ms": "later",
        "retry-after": "3",
        "anthropic-ratelimit-requests-reset": "never",
    }
    reading = read_wait(headers, NOW, CAP)
    assert reading.wait == ProviderWait(3.0, "retry-after", 3.0)
    assert reading.ignored == (("retry-after-ms", "later"),)
    headers = {"anthropic-ratelimit-requests-reset": "never", "retry-after": "x"}
    reading = read_wait(headers, NOW, CAP)
    assert reading.wait is None
    assert reading.ignored == (
        ("retry-after", "x"),
        ("anthropic-ratelimit-requests-reset", "never"),
    )


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after": "1e12"},
        {"retry-after": "99999999"},
        {"retry-after-ms": "86400000"},
        {"retry-after": http_date(NOW + 10 * 365 * 86400)},
        {
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": "2999-01-01T00:00:00Z",
        },
    ],
)
def test_absurd_values_are_capped_and_say_so(headers: dict[str, str]) -> None:
    wait = read_wait(headers, NOW, CAP).wait
    assert wait is not None
    assert wait.seconds == CAP and wait.capped and wait.asked > CAP


def test_no_wait_headers_means_no_wait() -> None:
    assert read_wait({}, NOW, CAP).wait is None
    past = {"anthropic-ratelimit-requests-reset": rfc3339(NOW - 5)}
    assert read_wait(past, NOW, CAP).wait is None


def test_a_429_naming_a_token_limit() -> None:
    headers = {
        "anthropic-ratelimit-requests-remaining": "12",
        "anthropic-ratelimit-input-tokens-remaining": "0",
        "anthropic-ratelimit-input-tokens-reset": rfc3339(NOW + 20),
        "anthropic-ratelimit-output-tokens-remaining": " 0",
        "anthropic-ratelimit-output-tokens-reset": rfc3339(NOW + 30),
        "anthropic-ratelimit-tokens-remaining": "100",
    }
    spent = exhausted_token_limits(headers)
    assert spent == ("input-tokens", "output-tokens")
    assert reset_at(headers, spent) == NOW + 30
    assert exhausted_token_limits({"anthropic-ratelimit-requests-remaining": "0"}) == ()
    assert reset_at({"anthropic-ratelimit-tokens-reset": "garbage"}, ("tokens",)) is None
