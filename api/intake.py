"""POST /api/v1/batch: a job taken in, published, and answered once it is visible.

A JSON body is read whole (up to BATCH_MAX_JSON_BODY_BYTES, api.bodies); a stream of
records (NDJSON, CSV) is read line by line into a spool file first (api.streams). Either
way nothing is published until every record is valid; then the job's `created` event and
its records go to Kafka, and the 202 waits until any worker can find the job.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from typing import IO

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.access import caller_of
from api.bodies import parse_submission, read_json_body
from api.forwarding import forward_headers
from api.job_options import JobOptions, request_options
from api.streams import STREAMED_TYPES, spool_records
from schemas import BatchAccepted
from stream_app.core.logs import get_logger
from stream_app.running.service import Service

log = get_logger(__name__)

_VISIBLE_WITHIN_SECONDS = 5.0


async def submit_batch(request: Request) -> Response:
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type in STREAMED_TYPES:
        return await submit_stream(request, media_type)
    owner = caller_of(request)
    service: Service = request.state.service
    began = time.monotonic()
    body = await read_json_body(request, service.settings)
    batch, records = parse_submission(body, service.settings)
    del body
    options = request_options(batch, service)
    created = options.created(uuid.uuid4().hex, len(records), time.time(), owner)
    read = time.monotonic()
    job_id = await service.submit(records, owner=owner, created=created)
    return await accepted(request, service, job_id, len(records), began, read)


async def submit_stream(request: Request, media_type: str) -> Response:
    """Read, validate and spool the records, then publish the job. 202 `{"job_id",
    "status", "total_records"}`; 401; 413 `too_many_records`; 422 `validation_error`
    (`line N: why`)."""
    owner = caller_of(request)
    service: Service = request.state.service
    settings = service.settings
    spool_dir = settings.batch_job_storage_path
    spool_dir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    with tempfile.TemporaryFile(dir=spool_dir, prefix="intake-") as spool:
        count, options = await spool_records(request, spool, service, media_type)
        read = time.monotonic()
        job_id = await _publish(service, spool, count, owner, options)
    return await accepted(request, service, job_id, count, began, read)


async def _publish(
    service: Service, spool: IO[bytes], count: int, owner: str | None, options: JobOptions
) -> str:
    job_id = uuid.uuid4().hex
    created = options.created(job_id, count, time.time(), owner)
    spool.seek(0)
    await service.pipeline.publish_job(created, (line.rstrip(b"\n") for line in spool))
    return job_id


async def accepted(
    request: Request, service: Service, job_id: str, records: int, began: float, read: float
) -> Response:
    """The 202 `{"job_id", "status": "pending", "total_records"}` of a published job, once
    the job is visible (`_await_visible`); logs `job accepted` with the seconds spent reading
    the body (`began` to `read`, monotonic) and publishing it (`read` to now)."""
    log.info(
        "job accepted",
        job_id=job_id,
        records=records,
        read_seconds=round(read - began, 2),
        publish_seconds=round(time.monotonic() - read, 2),
    )
    await _awaitvisible(request, service, job_id)
    body = BatchAccepted(job_id=job_id, status="pending", total_records=records)
    return JSONResponse(body.model_dump(), status_code=202)


async def _awaitvisible(request: Request, service: Service, job_id: str) -> None:
    """Read-your-writes: after the 202, a status request to any worker finds the job.
    Waits (briefly) until the worker owning the job has seen its "created" event."""
    http: httpx.AsyncClient = request.state.http
    owner = service.owner_url(job_id)
    deadline = time.monotonic() + _VISIBLE_WITHIN_SECONDS
    while time.monotonic() < deadline:
        if service.is_local(owner):
            if service.pipeline.job(job_id) is not None:
                return
        else:
            try:
                reply = await http.get(
                    f"{owner}/api/v1/batch/{job_id}/status",
                    params={"limit": "0"},
                    headers=forward_headers(request),
                )
                if reply.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        await asyncio.sleep(0.02)
