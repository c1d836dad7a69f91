"""The in-process feed of job changes that event streams read (no Kafka)."""

from __future__ import annotations

from stream_app.jobs.aggregation import JobStatus
from stream_app.kafka.job_feed import JobFeed


async def test_subscribers_get_their_jobs_changes_in_order() -> None:
    feed = JobFeed()
    job = JobStatus(job_id="j")
    with feed.subscribe("j") as mine, feed.subscribe("j") as also:
        assert feed.watching("j") and not feed.watching("k")
        feed.publish(job, {"index": 0})
        feed.publish(JobStatus(job_id="k"))
        feed.publish(job, {"index": 1})
        assert [c.result for c in await mine.changes(timeout=1)] == [{"index": 0}, {"index": 1}]
        assert len(await also.changes(timeout=1)) == 2
        assert await mine.changes(timeout=0.01) == []
    assert not feed.watching("j")


async def test_a_reader_too_far_behind_is_dropped() -> None:
    feed = JobFeed(limit=2)
    job = JobStatus(job_id="j")
    with feed.subscribe("j") as slow:
        for _ in range(3):
            feed.publish(job)
        assert slow.overflowed
        assert len(await slow.changes(timeout=0.01)) == 2
