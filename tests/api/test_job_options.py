"""A job's lane options as the API resolves them into the `created` event (no service)."""

from __future__ import annotations

import time

import pytest

from api.errors import ApiError
from api.job_options import job_options
from schemas import BatchRequest, JobCreated
from stream_app.core.settings import Settings
from stream_app.jobs.lanes import LivePace

SETTINGS = Settings(_env_file=None)  # type: ignore[call-arg]


def created(records: int, **options: object) -> JobCreated:
    return job_options(None, None, SETTINGS, **options).created(  # type: ignore[arg-type]
        "j", records, time.time(), None
    )


def test_default_lane_is_auto_and_resolved_by_size() -> None:
    small, big = created(100), created(5_000)
    assert (small.lane, big.lane) == ("live", "batch")
    assert big.lane_reason is not None and "exceeds BATCH_LANE_AUTO_MINUTES (30 min)" in (
        big.lane_reason
    )
    assert created(100, pace=LivePace(50, backlog_records=2_000)).lane == "batch"
    live_default = Settings(_env_file=None, batch_default_lane="live")  # type: ignore[call-arg]
    job = job_options(None, None, live_default).created("j", 5_000, time.time(), None)
    assert (job.lane, job.lane_reason) == ("live", "asked for the live lane")


def test_deadline_picks_the_cheapest_lane_that_makes_it() -> None:
    def iso(seconds_ahead: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds_ahead))

    four_hours = iso(4 * 3600)
    far = created(10, deadline=four_hours)
    assert (far.lane, far.deadline) == ("batch", four_hours)
    assert created(10, deadline=iso(600)).lane == "live"
    with pytest.raises(ApiError) as past:
        created(10, deadline=iso(-60))
    assert (past.value.status, past.value.code) == (422, "validation_error")


def test_the_created_event_round_trips_the_lane() -> None:
    event = created(10, lane="batch")
    again = JobCreated.model_validate_json(event.model_dump_json(exclude_none=True))
    assert (again.lane, again.lane_reason) == ("batch", "asked for the batch lane")
    assert BatchRequest.model_validate({"records": [{"text": "a"}], "lane": "auto"}).lane == "auto"


def test_query_options_apply_to_a_json_body_and_never_silently() -> None:
    """`?lane=batch` on a JSON body (the web page sends a .json file's lane that way) is
    the job's lane; a bad value or one that differs from the body's is a 422."""
    from api.job_options import with_query_options

    plain = BatchRequest.model_validate({"records": [{"text": "a"}]})
    merged = with_query_options(plain, {"lane": "batch", "priority": "low"})
    assert (merged.lane, merged.priority) == ("batch", "low")
    assert with_query_options(plain, {}) is plain
    with pytest.raises(ApiError) as bad:
        with_query_options(plain, {"lane": "zzz"})
    assert (bad.value.status, bad.value.code) == (422, "validation_error")
    assert bad.value.message.startswith("query: lane")
    high = BatchRequest.model_validate({"records": [{"text": "a"}], "priority": "high"})
    assert with_query_options(high, {"priority": "high"}).priority == "high"
    with pytest.raises(ApiError) as conflict:
        with_query_options(high, {"priority": "low"})
    assert "differs from the body's priority" in conflict.value.message
    # One value written two ways is the same value: a number, an instant.
    both = BatchRequest.model_validate(
        {"records": [{"text": "a"}], "max_cost_usd": 5, "deadline": "2099-01-01T00:00:00Z"}
    )
    same = {"max_cost_usd": "5.0", "deadline": "2099-01-01T01:00:00+01:00"}
    assert with_query_options(both, same) is both
    with pytest.raises(ApiError):
        with_query_options(both, {"max_cost_usd": "6"})


def test_a_query_option_given_twice_is_refused() -> None:
    from starlette.datastructures import QueryParams

    from api.job_options import query_options

    assert query_options(QueryParams("lane=batch&priority=high")) == {
        "lane": "batch",
        "priority": "high",
    }
    with pytest.raises(ApiError) as twice:
        query_options(QueryParams("lane=batch&lane=live"))
    assert twice.value.status == 422 and "lane is given more than once" in twice.value.message
