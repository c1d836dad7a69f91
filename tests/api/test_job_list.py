"""The job list merged across workers (api.jobs.merge_job_lists): pure, no Kafka."""

from __future__ import annotations

from typing import Any

from api.jobs import merge_job_lists


def summary(job_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "created_at": fields.pop("created_at", "2026-11-29T10:00:00+00:00"),
        "updated_at": fields.pop("updated_at", "2026-11-29T10:00:00+00:00"),
        "completed_count": fields.pop("completed_count", 0),
        "failed_count": 0,
        "skipped_count": 0,
        "stale": fields.pop("stale", False),
        **fields,
    }


def test_one_summary_per_job_oldest_first() -> None:
    a = summary("a", created_at="2026-11-29T10:00:02+00:00")
    b = summary("b", created_at="2026-11-29T10:00:01+00:00")
    c = summary("c", created_at=None)
    merged = merge_job_lists([[a, b], [b, c], []])
    assert [s["job_id"] for s in merged] == ["c", "b", "a"]


def test_the_owner_wins_over_a_replica_even_when_the_replica_looks_newer() -> None:
    owner = summary("a", completed_count=3, updated_at="2026-11-29T10:00:03+00:00")
    replica = summary("a", completed_count=5, updated_at="2026-11-29T10:00:09+00:00", stale=True)
    assert merge_job_lists([[replica], [owner]]) == [owner]
    assert merge_job_lists([[owner], [replica]]) == [owner]


def test_among_replicas_the_latest_change_then_the_most_outcomes() -> None:
    older = summary("a", completed_count=2, updated_at="2026-11-29T10:00:01+00:00", stale=True)
    newer = summary("a", completed_count=4, updated_at="2026-11-29T10:00:02+00:00", stale=True)
    same_time_more = summary(
        "a", completed_count=5, updated_at="2026-11-29T10:00:02+00:00", stale=True
    )
    assert merge_job_lists([[older], [newer]]) == [newer]
    assert merge_job_lists([[same_time_more], [newer]]) == [same_time_more]
