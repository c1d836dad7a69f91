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
from collections.abc import Awaitable, Callable, Iterator
from typing import IO

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.access import caller_of
from api.bodies import STREAMED_TYPES, BodyType, body_type, parse_submission, read_json_body
from api.errors import ApiError
from api.forwarding import forward_headers
from api.job_options import request_options, with_query_options
from api.streams import spool_records
from schemas import BatchAccepted, JobCreated
from stream_app.core.logs import get_logger
from stream_app.jobs.idempotency import BadIdempotencyKey, check_key, request_hash
from stream_app.running.service import Service

log = get_logger(__name__)

_VISIBLE_WITHIN_SECONDS = 5.0


async def submit_batch(request: Request) -> Response:
    """POST /api/v1/batch: a JSON batch body, or a stream (`submit_stream`). 202 `{"job_id",
    "status", "total_records"}`; 400 `invalid_json`, `invalid_idempotency_key`; 401; 402
    `tenant_budget_exhausted`; 409 `idempotency_key_reused`; 413 `body_too_large`,
    `too_many_records`, `record_too_large`; 415 `unsupported_media_type`; 422. With an
    `Idempotency-Key` header, the same key and the same request within
    BATCH_IDEMPOTENCY_HOURS answer the first job (202, same `job_id`, header
    `Idempotent-Replayed: true`) instead of creating another; see `_submit_once`."""
    kind = body_type(request)
    if kind.media_type in STREAMED_TYPES:
        return await submit_stream(request, kind)
    owner = caller_of(request)
    key = idempotency_key(request)
    service: Service = request.state.service
    refuse_exhausted_tenant(service, owner)
    began = time.monotonic()
    body = await read_json_body(request, service.settings)
    batch, records = parse_submission(body, service.settings, kind)
    del body
    options = request_options(with_query_options(batch, request.query_params), service)
    created = options.created(uuid.uuid4().hex, len(records), time.time(), owner)
    read = time.monotonic()

    async def publish(created: JobCreated) -> str:
        return await service.submit(records, owner=owner, created=created)

    if key is not None:
        digest = request_hash(records, _hashed_options(created))
        return await _submit_once(
            request, service, created, key, digest, publish, began=began, read=read
        )
    job_id = await publish(created)
    return await accepted(request, service, job_id, len(records), began, read)


def idempotency_key(request: Request) -> str | None:
    """The request's Idempotency-Key header, checked; None without one. Raises ApiError
    400 `invalid_idempotency_key`."""
    raw = request.headers.get("idempotency-key")
    if raw is None:
        return None
    try:
        return check_key(raw)
    except BadIdempotencyKey as exc:
        raise ApiError(400, "invalid_idempotency_key", str(exc)) from None


def _hashed_options(created: JobCreated) -> dict[str, object]:
    return created.model_dump(
        mode="json", include={"task", "task_name", "max_cost_usd", "priority"}
    )


async def _submit_once(
    request: Request,
    service: Service,
    created: JobCreated,
    key: str,
    digest: str,
    publish: Callable[[JobCreated], Awaitable[str]],
    *,
    began: float,
    read: float,
) -> Response:
    """Create the job unless the tenant's `key` already names one within
    BATCH_IDEMPOTENCY_HOURS: then answer that job when `digest` (the request's hash)
    matches, else 409 `idempotency_key_reused`. Before looking, this instance's batch.jobs
    reader catches up with the topic's end, so a job another instance (or this one before
    a restart) created with the key is found. Raises ApiError 503 `idempotency_unavailable`
    when the reader cannot catch up within 5 s (the broker is slow or away; retry)."""
    keys = service.idempotency
    owner = created.owner
    lock = keys.lock(owner, key)
    try:
        async with lock:
            reader = service.jobs_reader
            if reader is None or not await reader.read_to_end():
                raise ApiError(
                    503,
                    "idempotency_unavailable",
                    "could not check the Idempotency-Key against batch.jobs in time; retry",
                )
            hours = service.settings.batch_idempotency_hours
            use = keys.lookup(owner, key, time.time())
            if use is not None:
                if use.request_hash != digest:
                    raise ApiError(
                        409,
                        "idempotency_key_reused",
                        f"this Idempotency-Key was used within {hours:g} h for another "
                        "request; use a new key for a new job",
                    )
                log.info("idempotent submit answered with its first job", job_id=use.job_id)
                await _await_visible(request, service, use.job_id)
                body = BatchAccepted(
                    job_id=use.job_id, status="pending", total_records=use.total_records
                )
                return JSONResponse(
                    body.model_dump(), status_code=202, headers={"idempotent-replayed": "true"}
                )
            created = created.model_copy(update={"idempotency_key": key, "request_hash": digest})
            job_id = await publish(created)
            keys.remember(owner, key, job_id, digest, created.total_records, time.time())
    finally:
        keys.unlock(owner, key)
    return await accepted(request, service, job_id, created.total_records, began, read)


async def submit_stream(request: Request, kind: BodyType) -> Response:
    """Read, validate and spool the records, then publish the job. 202 `{"job_id",
    "status", "total_records"}`; 401; 413 `too_many_records`; 422 `validation_error`
    (`line N: why`)."""
    owner = caller_of(request)
    key = idempotency_key(request)
    service: Service = request.state.service
    refuse_exhausted_tenant(service, owner)
    settings = service.settings
    spool_dir = settings.batch_job_storage_path
    spool_dir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    with tempfile.TemporaryFile(dir=spool_dir, prefix="intake-") as spool:
        count, options = await spool_records(request, spool, service, kind)
        read = time.monotonic()
        created = options.created(uuid.uuid4().hex, count, time.time(), owner)

        async def publish(created: JobCreated) -> str:
            return await _publish(service, spool, created)

        if key is not None:
            spool.seek(0)
            digest = request_hash(_spooled(spool), _hashed_options(created))
            return await _submit_once(
                request, service, created, key, digest, publish, began=began, read=read
            )
        job_id = await publish(created)
    return await accepted(request, service, job_id, count, began, read)


def _spooled(spool: IO[bytes]) -> Iterator[bytes]:
    return (line.rstrip(b"\n") for line in spool)


def refuse_exhausted_tenant(service: Service, owner: str | None) -> None:
    """402 `tenant_budget_exhausted` when the caller's monthly budget (TENANT_BUDGETS) is
    spent: a new job would only be skipped record by record."""
    if service.rules.tenant_exhausted(owner):
        budget = service.rules.tenant_budgets[owner or ""]
        raise ApiError(
            402,
            "tenant_budget_exhausted",
            f"the monthly budget of {owner!r} (${budget}, TENANT_BUDGETS) is spent for this "
            "calendar month (UTC); new jobs are refused until the next one",
        )


async def _publish(service: Service, spool: IO[bytes], created: JobCreated) -> str:
    spool.seek(0)
    await service.pipeline.publish_job(created, _spooled(spool))
    return created.job_id


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
    await _await_visible(request, service, job_id)
    body = BatchAccepted(job_id=job_id, status="pending", total_records=records)
    return JSONResponse(body.model_dump(), status_code=202)


async def _await_visible(request: Request, service: Service, job_id: str) -> None:
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
