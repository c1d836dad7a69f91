"""Finding a job for a request: here, at the worker that owns it, or in the SQLite mirror.

A job's status and results live on the worker that owns its partition; any other worker
forwards the request there (once: a forwarded request is never forwarded again) and
relays the answer, streamed for downloads and event streams.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from api.app import _FORWARDED, _caller, _forward_headers, _visible
from api.errors import ApiError
from stream_app.aggregation import JobStatus
from stream_app.service import Service

# An event stream may be quiet for long; the stream's own pings keep it alive.
_STREAM_TIMEOUT = httpx.Timeout(10.0, read=None)
_PASSED_HEADERS = ("last-event-id", "content-type", "accept")


@dataclass
class FoundJob:
    """A job this worker can answer for, and how to read its stored results."""

    job: JobStatus
    result: Callable[[int], dict[str, Any] | None]
    # False for a job known only to the SQLite mirror (its broker state is gone).
    live: bool

    @property
    def end(self) -> int:
        """One past the highest index that may have a result."""
        job = self.job
        return job.total_records if job.total_records is not None else job.highest_index + 1


async def find_job(request: Request, job_id: str, *, stream: bool = False) -> FoundJob | Response:
    """The job if this worker holds it, else the owner's answer (a Response), else the
    mirror's copy. Raises ApiError 401 (no valid key), 404 (unknown or another client's
    job), 503 (the owner did not answer)."""
    caller = _caller(request)
    service: Service = request.state.service
    job = service.pipeline.job(job_id)
    if job is not None:
        pipeline = service.pipeline

        def live_result(index: int) -> dict[str, Any] | None:
            return pipeline.result(job_id, index)

        found = FoundJob(job, live_result, live=True)
    else:
        forwarded = await forward_to_owner(request, service, job_id, stream=stream)
        if forwarded is not None:
            return forwarded
        archived = service.archived(job_id)
        if archived is None:
            raise ApiError(404, "job_not_found", f"no job {job_id!r}")
        found = FoundJob(archived[0], archived[1].get, live=False)
    if not _visible(found.job, caller):
        raise ApiError(404, "job_not_found", f"no job {job_id!r}")
    return found


async def forward_to_owner(
    request: Request, service: Service, job_id: str, *, stream: bool
) -> Response | None:
    """Relay the request to the worker owning the job; None when that is this worker (or
    the request was forwarded already)."""
    if request.headers.get(_FORWARDED):
        return None
    owner = service.owner_url(job_id)
    if service.is_local(owner):
        return None
    http: httpx.AsyncClient = request.state.http
    headers = _forward_headers(request)
    for name in _PASSED_HEADERS:
        if name in request.headers:
            headers[name] = request.headers[name]
    body = await request.body() if request.method == "POST" else None
    upstream = http.build_request(
        request.method,
        f"{owner}{request.url.path}",
        params=dict(request.query_params),
        headers=headers,
        content=body,
        timeout=_STREAM_TIMEOUT if stream else None,
    )
    try:
        reply = await http.send(upstream, stream=stream)
    except httpx.HTTPError:
        raise ApiError(
            503, "owner_unavailable", "the worker holding this job did not answer; retry"
        ) from None
    media_type = reply.headers.get("content-type", "application/json")
    if not stream:
        return Response(reply.content, status_code=reply.status_code, media_type=media_type)
    return StreamingResponse(
        reply.aiter_raw(),
        status_code=reply.status_code,
        media_type=media_type,
        headers={"cache-control": "no-cache"},
        background=BackgroundTask(reply.aclose),
    )
