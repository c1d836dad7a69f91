"""Routes of /api/v1. The lifespan owns the running service and the HTTP client."""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any, TypedDict

import httpx
import orjson
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.errors import EXCEPTION_HANDLERS, ApiError
from api.job_options import job_options
from api.records import record_json
from schemas import BatchAccepted, BatchRequest
from stream_app.aggregation import JobStatus
from stream_app.logs import get_logger
from stream_app.service import Service, running_service
from stream_app.settings import Settings

log = get_logger(__name__)

_FORWARDED = "x-insight-stream-forwarded"
_VISIBLE_WITHIN_SECONDS = 5.0


class State(TypedDict):
    service: Service
    http: httpx.AsyncClient
    api_keys: dict[str, str]


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC).isoformat()


def job_summary(
    job: JobStatus, service: Service | None = None, *, stale: bool = False
) -> dict[str, Any]:
    """A job's summary as the API shows it (status, list, events). `stale`: read from a
    standby replica because the owner did not answer; `as_of` then says up to when the
    replica holds the job's changes (its last change, ISO 8601 UTC)."""
    summary: dict[str, Any] = {
        "job_id": job.job_id,
        "status": job.status,
        "total_records": job.total_records,
        "completed_count": job.completed_count,
        "failed_count": job.failed_count,
        "skipped_count": job.skipped_count,
        "total_tokens_used": job.total_tokens_used,
        "input_tokens": job.input_tokens,
        "output_tokens": job.output_tokens,
        "cache_creation_input_tokens": job.cache_creation_input_tokens,
        "cache_read_input_tokens": job.cache_read_input_tokens,
        # The float is rounded to 8 decimals for JSON clients; the string is exact.
        "estimated_cost": float(round(job.estimated_cost, 8)),
        "estimated_cost_usd": format(job.estimated_cost, "f"),
        "created_at": _iso(job.created_at),
        "updated_at": _iso(job.updated_at),
        "cancelled_at": _iso(job.cancelled_at),
        "task": job.task,
        "model": job.model,
        "max_cost_usd": float(job.max_cost_usd) if job.max_cost_usd is not None else None,
        "priority": job.priority or "normal",
        "stale": stale,
    }
    if stale:
        summary["as_of"] = _iso(job.updated_at if job.updated_at is not None else job.created_at)
    if service is not None and job.status in ("pending", "running"):
        # What this worker's calls to Claude meet now, and whether the job moves at all.
        summary["provider"] = service.breaker.report()
        summary["stalled"] = job.stalled(time.time(), service.settings.batch_stall_after_seconds)
    return summary


def _tokens_used(stored: dict[str, Any]) -> int:
    return sum(
        stored.get(name, 0)
        for name in (
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        )
    )


def result_view(stored: dict[str, Any]) -> dict[str, Any]:
    view: dict[str, Any] = {"index": stored["index"], "success": stored["success"]}
    if "response" in stored:
        view["response"] = stored["response"]
    if "error" in stored:
        view["error"] = stored["error"]
    if stored.get("skipped"):
        view["skipped"] = True
        if stored.get("skip_reason"):
            view["skip_reason"] = stored["skip_reason"]
    if stored.get("record_id") is not None:
        view["record_id"] = stored["record_id"]
    view["tokens_used"] = _tokens_used(stored)
    view["attempts"] = stored.get("attempts", 0)
    return view


def _caller(request: Request) -> str | None:
    """The client name of a valid bearer token; None when the API is open."""
    keys: dict[str, str] = request.state.api_keys
    if not keys:
        return None
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token:
        for secret, name in keys.items():
            if hmac.compare_digest(secret.encode(), token.strip().encode()):
                return name
    raise ApiError(401, "unauthorized", "a valid 'Authorization: Bearer <key>' header is required")


def _visible(job: JobStatus, caller: str | None) -> bool:
    return caller is None or job.owner == caller


def _int_param(request: Request, name: str, default: int | None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    # ASCII digits only: str.isdigit() also takes "²" and "٣" (int() refuses the first).
    if not (raw.isascii() and raw.isdigit()):
        raise ApiError(400, "invalid_parameter", f"{name} must be a non-negative integer")
    return int(raw)


def parse_batch(body: bytes, settings: Settings) -> BatchRequest:
    """A JSON batch body, checked as POST /api/v1/batch checks it. Raises ApiError 400
    `invalid_json`, 413 `too_many_records` (more than BATCH_MAX_RECORDS_PER_REQUEST, before
    the records are validated), 422 `validation_error` (a text over BATCH_MAX_TEXT_CHARS)."""
    batch = _validated_batch(_counted_payload(body, settings))
    _check_texts((record.text for record in batch.records), settings)
    return batch


def parse_submission(body: bytes, settings: Settings) -> tuple[BatchRequest, list[bytes]]:
    """A JSON batch body as POST /api/v1/batch takes it: checked as `parse_batch` checks it
    (same errors, same order), returned as the request's options and each record's
    published JSON (api.records). The returned request's own `records` are not the job's:
    plain records are not turned into pydantic models (issue 9: 1.7 s of a 100,000-record
    submit), so it holds only the first one."""
    payload = _counted_payload(body, settings)
    records = payload.get("records") if isinstance(payload, dict) else None
    if isinstance(records, list) and records:
        encoded = []
        for record in records:
            plain = record_json(record)
            if plain is None:
                break
            encoded.append(plain)
        else:
            # Every record is plain: validate the options with one stand-in record.
            options = _validated_batch({**payload, "records": records[:1]})
            _check_texts((record["text"] for record in records), settings)
            return options, encoded
    batch = _validated_batch(payload)
    _check_texts((record.text for record in batch.records), settings)
    return batch, [r.model_dump_json(exclude_none=True).encode() for r in batch.records]


def _counted_payload(body: bytes, settings: Settings) -> Any:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(400, "invalid_json", "the request body is not valid JSON") from None
    limit = settings.batch_max_records_per_request
    if isinstance(payload, dict) and isinstance(payload.get("records"), list):
        if len(payload["records"]) > limit:
            raise ApiError(413, "too_many_records", f"at most {limit} records per request")
    return payload


def _validated_batch(payload: Any) -> BatchRequest:
    try:
        return BatchRequest.model_validate(payload)
    except ValidationError as exc:
        raise ApiError(422, "validation_error", _describe(exc)) from None


def _check_texts(texts: Iterable[str], settings: Settings) -> None:
    max_chars = settings.batch_max_text_chars
    for index, text in enumerate(texts):
        if len(text) > max_chars:
            raise ApiError(
                422, "validation_error", f"records.{index}.text: longer than {max_chars} characters"
            )


async def read_json_body(request: Request, settings: Settings) -> bytes:
    """The whole body of a JSON request, refused with 413 `body_too_large` as soon as it
    exceeds BATCH_MAX_JSON_BODY_BYTES (by its Content-Length, or while it is read), so a JSON
    body never holds more than that in memory. Streams (NDJSON, CSV) have no such limit."""
    limit = settings.batch_max_json_body_bytes
    too_large = ApiError(
        413,
        "body_too_large",
        f"a JSON body may hold at most {limit} bytes (BATCH_MAX_JSON_BODY_BYTES); send larger "
        "jobs as application/x-ndjson (a record a line), which is read as a stream",
    )
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def submit_batch(request: Request) -> Response:
    # Streams of records (NDJSON, CSV) are read line by line (api.intake).
    from api import intake

    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type in intake.STREAMED_TYPES:
        return await intake.submit_stream(request, media_type)
    caller = _caller(request)
    service: Service = request.state.service
    began = time.monotonic()
    body = await read_json_body(request, service.settings)
    batch, records = parse_submission(body, service.settings)
    del body
    options = job_options(batch.task, batch.max_cost_usd, service.settings, batch.priority)
    created = options.created(uuid.uuid4().hex, len(records), time.time(), caller)
    read = time.monotonic()
    job_id = await service.submit(records, owner=caller, created=created)
    return await accepted(request, service, job_id, len(records), began, read)


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
                    headers=_forward_headers(request),
                )
                if reply.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        await asyncio.sleep(0.02)


def _forward_headers(request: Request) -> dict[str, str]:
    headers = {_FORWARDED: "1"}
    if "authorization" in request.headers:
        headers["authorization"] = request.headers["authorization"]
    return headers


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


async def health(request: Request) -> Response:
    """Liveness: 200 `{"status": "ok"}`, or 503 with the reason when the worker crashed or
    gave up (it is then stopping, exit code 1, to be restarted)."""
    service: Service = request.state.service
    alive = service.liveness()
    if alive != "ok":
        return JSONResponse({"status": "failing", "reason": alive}, status_code=503)
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    service: Service = request.state.service
    readiness = await service.readiness()
    body = {
        "ready": readiness.ready,
        "checks": readiness.checks,
        "partitions": service.owned_partitions(),
        # Not a readiness check: the worker stays ready (status can be read) while the
        # provider is unavailable or refuses the configuration; this says which and since when.
        "provider": service.breaker.report(),
    }
    return JSONResponse(body, status_code=200 if readiness.ready else 503)


def create_api(settings: Settings) -> Starlette:
    # Imported here because they use the helpers above (app.py is split by resource later).
    from api import cancel, estimate, events, jobs, metrics, results, web

    api_keys = settings.api_key_table()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        async with running_service(settings) as service:
            # At the stop signal, before uvicorn's graceful HTTP phase: no record starts.
            app.state.on_signal.append(service.stop_intake)
            service.on_fatal = lambda reason: setattr(app.state, "fatal", reason)
            metrics.install(service)
            async with httpx.AsyncClient(timeout=10.0) as http:
                yield {"service": service, "http": http, "api_keys": api_keys}

    routes = [
        Route("/api/v1/batch", submit_batch, methods=["POST"]),
        Route("/api/v1/batch/jobs", jobs.list_jobs, methods=["GET"]),
        Route("/api/v1/batch/estimate", estimate.estimate_batch, methods=["POST"]),
        Route("/api/v1/tasks", estimate.list_tasks, methods=["GET"]),
        Route("/api/v1/batch/{job_id}/status", results.job_status, methods=["GET"]),
        Route("/api/v1/batch/{job_id}/cancel", cancel.cancel_job, methods=["POST"]),
        Route("/api/v1/batch/{job_id}/results", results.results_page, methods=["GET"]),
        Route("/api/v1/batch/{job_id}/results.ndjson", results.results_ndjson, methods=["GET"]),
        Route("/api/v1/batch/{job_id}/results.csv", results.results_csv, methods=["GET"]),
        Route("/api/v1/batch/{job_id}/events", events.job_events, methods=["GET"]),
        Route("/api/v1/health", health, methods=["GET"]),
        Route("/api/v1/ready", ready, methods=["GET"]),
        Route("/metrics", metrics.metrics, methods=["GET"]),
        *web.routes(),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
    )
    # Hooks the server calls at SIGTERM/SIGINT (stream_app.server), and the reason the
    # worker gave up, if it did (the process then exits non-zero).
    app.state.on_signal = []
    app.state.fatal = None
    return app
