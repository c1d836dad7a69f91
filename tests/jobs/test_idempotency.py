"""Idempotency-Key -> job, without Kafka."""

from __future__ import annotations

import pytest

from stream_app.jobs.idempotency import (
    BadIdempotencyKey,
    IdempotencyKeys,
    check_key,
    request_hash,
)

HOUR = 3600.0


def test_a_key_names_its_first_job_within_the_window_per_tenant() -> None:
    keys = IdempotencyKeys(24)
    keys.remember("acme", "k1", "job-a", "h1", 3, created_at=1000.0)
    keys.remember("acme", "k1", "job-b", "h2", 3, created_at=1001.0)  # a race: first wins
    use = keys.lookup("acme", "k1", now=1000.0 + 23 * HOUR)
    assert use is not None and (use.job_id, use.request_hash) == ("job-a", "h1")
    assert keys.lookup("other", "k1", now=1001.0) is None
    assert keys.lookup("acme", "k1", now=1000.0 + 25 * HOUR) is None
    # After the window, the key may name a new job.
    keys.remember("acme", "k1", "job-c", "h3", 1, created_at=1000.0 + 25 * HOUR)
    assert keys.lookup("acme", "k1", now=1000.0 + 26 * HOUR).job_id == "job-c"  # type: ignore[union-attr]
    assert keys.prune(now=1000.0 + 50 * HOUR) == 1 and len(keys) == 0


def test_a_deleted_job_frees_its_key() -> None:
    keys = IdempotencyKeys(24)
    keys.remember(None, "k", "job-a", "h", 1, created_at=5.0)
    keys.forget_job("job-a")
    assert keys.lookup(None, "k", now=6.0) is None
    keys.remember(None, "k", "job-c", "h", 1, created_at=7.0)
    assert keys.lookup(None, "k", now=8.0).job_id == "job-c"  # type: ignore[union-attr]


def test_the_hash_covers_the_records_and_the_options() -> None:
    base = request_hash([b'{"text":"a"}', b'{"text":"b"}'], {"priority": "normal"})
    assert base == request_hash([b'{"text":"a"}', b'{"text":"b"}'], {"priority": "normal"})
    assert base != request_hash([b'{"text":"a"}'], {"priority": "normal"})
    assert base != request_hash([b'{"text":"a"}', b'{"text":"b"}'], {"priority": "high"})


@pytest.mark.parametrize("raw", ["", " ", "has space", "x" * 201, "é"])
def test_bad_keys_are_refused(raw: str) -> None:
    with pytest.raises(BadIdempotencyKey):
        check_key(raw)


def test_a_uuid_is_a_good_key() -> None:
    assert check_key(" 0b7e2f0c-4f3a-4a8e-9a1e-6a3b8f1d2c4e ") == (
        "0b7e2f0c-4f3a-4a8e-9a1e-6a3b8f1d2c4e"
    )
