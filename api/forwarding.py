"""Finding a job for a request: here, at the worker that owns it, in this worker's standby
replica, or in the SQLite mirror.

A job's status and results live on the worker that owns its partition; any other worker
forwards the request there (once: a forwarded request is never forwarded again) and
relays the answer, streamed for downloads and event streams. When the owner does not
answer (it died and the consumer group has not rebalanced yet), reads are answered from
the standby replica this worker keeps of the job's partition (TABLE_STANDBY_REPLICAS),
marked stale; see README "Reads during a failover".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from api.access import caller_of, visible
from api.errors import ApiError
from stream_app.jobs.aggregation import JobStatus
from stream_app.running.service import Service

# Set on a request one worker forwards to another: a forwarded request is never forwarded again.
FORWARDED = "x-insight-stream-forwarded"

# An event stream may be quiet for long; the stream's own pings keep it alive.
_STREAM_TIMEOUT = httpx.Timeout(10.0, connect=1.0, read=None)
# A worker that does not accept a connection within a second, or answer a read within
# five, is taken as down: reads are answered from the standby replica instead.
FORWARD_TIMEOUT = httpx.Timeout(5.0, connect=1.0)
_UNAVAILABLE = (
    "the worker holding this job did not answer, and this one has no replica of it; retry"
)
_PASSED_HEADERS = ("last-event-id", "content-type", "accept")


@dataclass
class FoundJob:
    """A job this worker can answer for, and how to read its stored results."""

    job: JobStatus
    result: Callable[[int], dict[str, Any] | None]
    # False for a job known only to the SQLite mirror (its broker state is gone).
    live: bool
    # True when read from this worker's standby replica because the job's owner did not
    # answer (or no worker owns its partition during a rebalance): possibly behind the
    # owner by the changes the replica had not applied yet.
    stale: bool = False
    # Every stored result (as stored: JSON) in chunks, reading only those that exist; None
    # (or returning None): look each index up with `result`.
    stored: Callable[[], Iterator[list[bytes]] | None] | None = None

    @property
    def end(self) -> int:
        """One past the highest index that may have a result."""
        job = self.job
        return job.total_records if job.total_records is not None else job.highest_index + 1


class OwnerUnavailable(Exception):
    """The worker owning the job did not answer (refused, timed out, or a 5xx)."""


async def find_job(
    request: Request, job_id: str, *, stream: bool = False, stale_ok: bool = False
) -> FoundJob | Response:
    """The job if this worker owns its partition, else the owner's answer (a Response),
    else (`stale_ok`, for reads) this worker's standby replica of it marked `stale`, else
    the mirror's copy. Raises ApiError 401 (no valid key), 404 (unknown or another
    client's job), 503 `owner_unavailable` (the owner did not answer and this worker holds
    no replica of the job, or the request is not a read)."""
    caller = caller_of(request)
    service: Service = request.state.service
    pipeline = service.pipeline

    def stored_result(index: int) -> dict[str, Any] | None:
        return pipeline.result(job_id, index)

    def stored_results() -> Iterator[list[bytes]] | None:
        return pipeline.stored_results(job_id)

    job = pipeline.job(job_id)
    if job is not None and pipeline.owns_job(job_id):
        found = FoundJob(job, stored_result, live=True, stored=stored_results)
    else:
        owner = service.owner_url(job_id)
        unavailable = False
        if not request.headers.get(FORWARDED) and not service.is_local(owner):
            try:
                return await forward_to_owner(request, service, owner, stream=stream)
            except OwnerUnavailable:
                unavailable = True
            # Read again: the replica may have applied more while the owner was asked.
            job = pipeline.job(job_id)
        if unavailable and not stale_ok:
            raise ApiError(503, "owner_unavailable", _UNAVAILABLE)
        if job is not None:
            # A standby replica (or, during a rebalance, a partition not assigned yet).
            found = FoundJob(job, stored_result, live=True, stale=True, stored=stored_results)
        elif (archived := service.archived(job_id)) is not None:
            found = FoundJob(archived[0], archived[1].get, live=False)
        elif unavailable:
            raise ApiError(503, "owner_unavailable", _UNAVAILABLE)
        else:
            raise ApiError(404, "job_not_found", f"no job {job_id!r}")
    if not visible(found.job, caller):
        raise ApiError(404, "job_not_found", f"no job {job_id!r}")
    return found


async def forward_to_owner(
    request: Request, service: Service, owner: str | None, *, stream: bool
) -> Response:
    """Relay the request to the worker at `owner` and return its answer. Raises
    OwnerUnavailable when it refuses the connection, does not answer within
    FORWARD_TIMEOUT, or answers with a 5xx (it is stopping or broken)."""
    http: httpx.AsyncClient = request.state.http
    headers = forward_headers(request)
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
        timeout=_STREAM_TIMEOUT if stream else FORWARD_TIMEOUT,
    )
    try:
        reply = await http.send(upstream, stream=stream)
    except httpx.HTTPError:
        raise OwnerUnavailable(owner) from None
    if reply.status_code >= 500:
        await reply.aclose()
        raise OwnerUnavailable(owner)
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


def forward_headers(request: Request) -> dict[str, str]:
    """Headers of a request forwarded to another worker: the forwarded mark and the
    caller's Authorization, so the owner checks the same key."""
    headers = {FORWARDED: "1"}
    if "authorization" in request.headers:
        headers["authorization"] = request.headers["authorization"]
    return headers
