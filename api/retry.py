"""POST /api/v1/batch/{job_id}/retry."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.bodies import describe
from api.errors import ApiError
from api.forwarding import FoundJob, find_job
from schemas import RetryAccepted, RetryRequest
from stream_app.core.logs import get_logger
from stream_app.jobs.cancellation import is_finished
from stream_app.running.service import Service

log = get_logger(__name__)

_APPLIED_WITHIN_SECONDS = 10.0
_MAX_BODY_BYTES = 4096


async def retry_job(request: Request) -> Response:
    """Send a finished job's failed records (`"failed": true`, the default) and, with
    `"skipped": true`, those skipped because its spending cap was reached, again: under
    the same job and index, as retry round N (1, 2, ...). Each new outcome replaces the
    record's old one in the status and results; the tokens and cost of every round add up
    (the old round's stay billed). The records are read back from `batch.records`.

    Body (JSON, optional): `{"failed": true, "skipped": false}`. Answers 202
    `{"job_id", "status": "running", "retry": N, "records": n}` once this worker (the job's
    owner) shows the job running again; `records` 0 (and nothing sent) when none matched.
    Errors: 400 `invalid_json`; 401; 404 `job_not_found`; 409 `job_not_finished` (still
    running: retry when it has ended), `job_cancelled` (its records would be skipped
    again), `records_unavailable` (the outcomes do not say where their records are: the
    job ran before retries existed, or is known only to the SQLite mirror); 410
    `records_expired` (batch.records no longer holds some records: its retention passed);
    422 `validation_error`; 503 as elsewhere."""
    job_id = request.path_params["job_id"]
    wanted = await _read_body(request)
    found = await find_job(request, job_id)
    if isinstance(found, Response):
        return found
    job = found.job
    if job.status == "cancelled":
        raise ApiError(409, "job_cancelled", f"job {job_id!r} was cancelled; submit it again")
    if not is_finished(job):
        raise ApiError(409, "job_not_finished", f"job {job_id!r} is still {job.status}")
    if not found.live:
        raise ApiError(409, "records_unavailable", f"job {job_id!r} is known only to the mirror")
    chosen = _chosen(found, wanted)
    service: Service = request.state.service
    round_ = job.retries + 1
    if not chosen:
        body = RetryAccepted(job_id=job_id, status=job.status, retry=job.retries, records=0)
        return JSONResponse(body.model_dump(), status_code=202)
    if any(partition is None or offset is None for _, partition, offset in chosen):
        raise ApiError(409, "records_unavailable", "some outcomes do not say where their record is")
    began = time.monotonic()
    records = await service.pipeline.read_job_records(
        job_id,
        {index: (int(p), int(o)) for index, p, o in chosen},  # type: ignore[arg-type]
    )
    log.info(
        "retry: records read back from the records topic",
        job_id=job_id,
        records=len(records),
        seconds=round(time.monotonic() - began, 3),
    )
    missing = [index for index, _, _ in chosen if index not in records]
    if missing:
        raise ApiError(
            410,
            "records_expired",
            f"{len(missing)} records are no longer on the records topic (its retention "
            f"passed), e.g. index {missing[0]}",
        )
    await service.pipeline.publish_retry(
        job_id, round_, [(index, records[index]) for index, _, _ in chosen]
    )
    deadline = time.monotonic() + _APPLIED_WITHIN_SECONDS
    while time.monotonic() < deadline:
        current = service.pipeline.job(job_id)
        if current is not None and current.retries >= round_:
            body = RetryAccepted(
                job_id=job_id, status=current.status, retry=round_, records=len(chosen)
            )
            return JSONResponse(body.model_dump(), status_code=202)
        await asyncio.sleep(0.005)
    raise ApiError(503, "retry_pending", "the retry was sent but not applied yet; check status")


async def _read_body(request: Request) -> RetryRequest:
    raw = await request.body()
    if len(raw) > _MAX_BODY_BYTES:
        raise ApiError(413, "body_too_large", f"a retry body holds at most {_MAX_BODY_BYTES} bytes")
    if not raw.strip():
        return RetryRequest()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "invalid_json", "the body is not JSON") from None
    try:
        return RetryRequest.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "validation_error", describe(exc)) from None


def _chosen(found: FoundJob, wanted: RetryRequest) -> list[tuple[int, int | None, int | None]]:
    """(index, record partition, record offset) of every stored result the retry sends."""
    chosen = []
    for result in _results(found):
        if result.get("success"):
            continue
        skipped = bool(result.get("skipped"))
        take = (
            wanted.skipped and result.get("skip_reason") == "budget_exhausted"
            if skipped
            else wanted.failed
        )
        if take:
            chosen.append(
                (int(result["index"]), result.get("record_partition"), result.get("record_offset"))
            )
    return sorted(chosen)


def _results(found: FoundJob) -> list[dict[str, Any]]:
    chunks = found.stored() if found.stored is not None else None
    if chunks is not None:
        return [orjson.loads(raw) for chunk in chunks for raw in chunk]
    return [r for r in (found.result(i) for i in range(found.end)) if r is not None]
