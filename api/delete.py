"""DELETE /api/v1/batch/{job_id}."""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.errors import ApiError
from api.forwarding import find_job
from stream_app.running.service import Service

_APPLIED_WITHIN_SECONDS = 10.0


async def delete_job(request: Request) -> Response:
    """Delete a job everywhere the service keeps it.

    A pending or running job is cancelled first (a `cancelled` event, as
    POST .../cancel sends), then a `deleted` event goes to `batch.jobs`: every worker
    removes the job's status and results (tombstones in the tables and so in their
    compacted changelogs), its processed-records entries, and its SQLite mirror rows. The
    job then answers 404 on every instance, also after restarts. The job's records and
    results already on `batch.records` / `batch.results` stay until those topics'
    retention (docs/lifecycle.md). Answers 200 `{"job_id", "status": "deleted"}` once this
    worker (the job's owner) has applied the deletion.
    Errors: 401 `unauthorized`, 404 `job_not_found` (unknown, already deleted, or another
    client's job), 503 `owner_unavailable`, `broker_unavailable`, `delete_pending`.
    """
    job_id = request.path_params["job_id"]
    found = await find_job(request, job_id)
    if isinstance(found, Response):
        return found
    service: Service = request.state.service
    pipeline = service.pipeline
    if found.live and found.job.status in ("pending", "running"):
        await pipeline.publish_cancel(job_id)
    await pipeline.publish_delete(job_id)
    deadline = time.monotonic() + _APPLIED_WITHIN_SECONDS
    while time.monotonic() < deadline:
        if job_id in pipeline.deleted and pipeline.ledger.job(job_id) is None:
            return JSONResponse({"job_id": job_id, "status": "deleted"})
        await asyncio.sleep(0.005)
    raise ApiError(503, "delete_pending", "the deletion was sent but not applied yet; retry")
