"""BATCH_RETENTION_DAYS: finished jobs that old are deleted, the same way as
DELETE /api/v1/batch/{job_id} (a `deleted` event on `batch.jobs`, reason `retention`).

Each worker sweeps the jobs of the job-status partitions it owns (Faust iterates a table's
active partitions only), so each job's deletion is published once, by its owner, on a
timer; a worker that takes the partition over later sweeps it from then on.
"""

from __future__ import annotations

import asyncio
import time

from stream_app.core.exceptions import BrokerUnavailable
from stream_app.core.logs import get_logger
from stream_app.jobs.deletion import DAY_SECONDS, retention_due
from stream_app.kafka.pipeline import Pipeline

log = get_logger(__name__)

# A sweep every tenth of the retention period, at least every second, at most hourly.
_MIN_INTERVAL_SECONDS = 1.0
_MAX_INTERVAL_SECONDS = 3600.0


def sweep_interval(retention_days: float) -> float:
    """Seconds between two sweeps for this retention period."""
    return min(max(retention_days * DAY_SECONDS / 10, _MIN_INTERVAL_SECONDS), _MAX_INTERVAL_SECONDS)


async def sweep_once(pipeline: Pipeline, retention_days: float, now: float | None = None) -> int:
    """Publish the deletion of every finished job this worker owns that is due; returns how
    many were published. A job already deleted (or whose deletion this worker sent and has
    not applied yet) is not published again."""
    now = time.time() if now is None else now
    owned = pipeline.owned_job_partitions()
    jobs = [job for job in pipeline.jobs() if pipeline.job_partition(job.job_id) in owned]
    published = 0
    for job_id in retention_due(jobs, now, retention_days):
        if job_id in pipeline.deleted:
            continue
        await pipeline.publish_delete(job_id, reason="retention")
        published += 1
    if published:
        log.info("jobs deleted by retention", jobs=published, retention_days=retention_days)
    return published


async def run_retention(pipeline: Pipeline, retention_days: float) -> None:
    """Sweep until cancelled; a broker that does not answer is tried again next time."""
    interval = sweep_interval(retention_days)
    while True:
        await asyncio.sleep(interval)
        try:
            await sweep_once(pipeline, retention_days)
        except BrokerUnavailable as exc:
            log.warning("retention sweep could not publish", reason=str(exc))
        except Exception:  # a table read during a rebalance; the next sweep tries again
            log.exception("retention sweep failed")
