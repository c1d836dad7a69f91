"""POST /api/v1/batch/{job_id}/cancel."""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.errors import ApiError
from api.forwarding import find_job
from api.views import job_summary
from stream_app.jobs.aggregation import JobStatus
from stream_app.jobs.cancellation import can_cancel
from stream_app.running.service import Service

_APPLIED_WITHIN_SECONDS = 10.0


async def cancel_job(request: Request) -> Response:
    """Cancel a pending or running job.

    Every worker stops starting calls for the job: records that have not started are
    skipped (their outcomes reach `batch.results` with `"skipped": true`, nothing billed),
    calls in flight finish and their results are kept. Answers 200 with the job's summary
    (as in `/status`, without results) once the job's status is `cancelled` and this
    worker skips its records; `skipped_count` and the other counts keep changing until
    every record has its outcome. Idempotent: cancelling a cancelled job answers the same.
    Errors: 401 `unauthorized`, 404 `job_not_found`, 409 `job_finished` (the job
    completed, or failed, before the cancel), 503 `owner_unavailable`.
    """
    job_id = request.path_params["job_id"]
    found = await find_job(request, job_id)
    if isinstance(found, Response):
        return found
    job = found.job
    if not found.live or not can_cancel(job):
        raise ApiError(409, "job_finished", f"job {job_id!r} is already {job.status}")
    service: Service = request.state.service
    if job.status != "cancelled":
        await service.pipeline.publish_cancel(job_id)
    job = await _until_applied(service, job_id, job)
    if job.status != "cancelled":
        raise ApiError(409, "job_finished", f"job {job_id!r} is already {job.status}")
    return JSONResponse(job_summary(job))


async def _until_applied(service: Service, job_id: str, job: JobStatus) -> JobStatus:
    """Read-your-writes: wait until this worker (the job's owner) has applied the cancel to
    the job's status, and skips its records."""
    deadline = time.monotonic() + _APPLIED_WITHIN_SECONDS
    while time.monotonic() < deadline:
        current = service.pipeline.job(job_id) or job
        if current.status != "pending" and current.status != "running":
            if current.status != "cancelled" or job_id in service.pipeline.cancelled:
                return current
        await asyncio.sleep(0.005)
    raise ApiError(503, "cancel_pending", "the cancel was sent but not applied yet; retry")
