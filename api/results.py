"""A job's results: pages in index order, and the whole set streamed as NDJSON or CSV.

Each request reads only what it returns (a page reads at most `limit` indices, or with
`failed=true` at most `SCAN_WINDOW`), and the downloads are streamed, so neither memory
nor the time to the first byte grows with the job.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from api.bodies import int_param
from api.errors import ApiError
from api.forwarding import FoundJob, find_job
from api.views import job_summary, result_view
from schemas.export import csv_columns, csv_row, task_fields

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# /status lists at most this many results unless `limit` says otherwise: a status call
# (polled, often) costs the same on a job of any size. Jobs up to this size get them all.
STATUS_DEFAULT_LIMIT = 1000
# With failed=true a page reads at most this many indices, then says where to go on.
SCAN_WINDOW = 10_000
_YIELD_EVERY = 200
STALE_HEADER = "x-insight-stream-stale"


def failed_param(request: Request) -> bool:
    raw = request.query_params.get("failed", "false").lower()
    if raw in ("true", "1", "yes"):
        return True
    if raw in ("false", "0", "no", ""):
        return False
    raise ApiError(400, "invalid_parameter", "failed must be true or false")


def _wanted(stored: dict[str, Any], failed_only: bool) -> bool:
    return not failed_only or not stored["success"]


async def job_status(request: Request) -> Response:
    """GET /api/v1/batch/{job_id}/status?offset=&limit=

    The job's summary (`job_summary`) and `results`: the outcomes from index `offset`
    (default 0) up to `offset + limit` (default 1000: STATUS_DEFAULT_LIMIT), in index
    order, records without an outcome left out. Asked of a worker that does not hold the
    job, it is relayed to the one that does; when that one does not answer, this worker
    answers from its standby replica with `"stale": true` and `as_of`. Errors: 400
    `invalid_parameter`, 401, 404 `job_not_found`, 503 `owner_unavailable` (the owner did
    not answer and this worker holds no replica of the job).
    """
    job_id = request.path_params["job_id"]
    offset = int_param(request, "offset", 0) or 0
    limit = int_param(request, "limit", STATUS_DEFAULT_LIMIT) or 0
    found = await find_job(request, job_id, stale_ok=True)
    if isinstance(found, Response):
        return found
    end = min(found.end, offset + limit)
    results = []
    for index in range(offset, end):
        stored = found.result(index)
        if stored is not None:
            results.append(result_view(stored))
    summary = job_summary(found.job, request.state.service, stale=found.stale)
    return JSONResponse({**summary, "results": results})


async def results_page(request: Request) -> Response:
    """GET /api/v1/batch/{job_id}/results?offset=&limit=&failed=

    Results in index order from index `offset` (default 0): up to `limit` (default 100,
    at most 1000) results; with `failed=true` only those with `success: false` (failed or
    skipped). Records without an outcome yet are left out. Body: `{"job_id", "status",
    "total_records", "offset", "limit", "next_offset", "results", "stale"}`; `next_offset`
    is the index to ask for next, null once the end is reached; `stale` as in /status (read
    from a standby replica while the owner does not answer). Errors: 400
    `invalid_parameter` (also `limit=0`), 401, 404 `job_not_found`, 503 `owner_unavailable`.
    """
    job_id = request.path_params["job_id"]
    offset = int_param(request, "offset", 0) or 0
    limit = min(int_param(request, "limit", DEFAULT_LIMIT) or 0, MAX_LIMIT)
    if limit == 0:
        # A page of nothing would answer next_offset == offset: a client would loop.
        raise ApiError(400, "invalid_parameter", f"limit must be 1 to {MAX_LIMIT}")
    failed_only = failed_param(request)
    found = await find_job(request, job_id, stale_ok=True)
    if isinstance(found, Response):
        return found
    end = found.end
    stop = min(end, offset + (max(limit, SCAN_WINDOW) if failed_only else limit))
    results: list[dict[str, Any]] = []
    index = offset
    while index < stop and len(results) < limit:
        stored = found.result(index)
        index += 1
        if stored is not None and _wanted(stored, failed_only):
            results.append(result_view(stored))
    body = {
        "job_id": job_id,
        "status": found.job.status,
        "total_records": found.job.total_records,
        "offset": offset,
        "limit": limit,
        "next_offset": index if index < end else None,
        "results": results,
        "stale": found.stale,
    }
    return JSONResponse(body)


def _each_result(found: FoundJob, failed_only: bool) -> Iterator[dict[str, Any]]:
    for index in range(found.end):
        stored = found.result(index)
        if stored is not None and _wanted(stored, failed_only):
            yield result_view(stored)


async def _paced(lines: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Give the event loop back now and then: the table reads are synchronous."""
    for count, line in enumerate(lines, 1):
        yield line
        if count % _YIELD_EVERY == 0:
            await asyncio.sleep(0)


async def results_ndjson(request: Request) -> Response:
    """GET /api/v1/batch/{job_id}/results.ndjson?failed=

    Every result there is, in index order, one JSON object per line (the shape of
    `results` in /status), streamed. Read from a standby replica (the owner did not
    answer), the response has the header `x-insight-stream-stale: <as_of>`. Errors as
    for /results.
    """
    failed_only = failed_param(request)
    found = await find_job(request, request.path_params["job_id"], stream=True, stale_ok=True)
    if isinstance(found, Response):
        return found
    lines = (orjson.dumps(view) + b"\n" for view in _each_result(found, failed_only))
    return StreamingResponse(
        _paced(lines), media_type="application/x-ndjson", headers=stale_headers(found)
    )


async def results_csv(request: Request) -> Response:
    """GET /api/v1/batch/{job_id}/results.csv?failed=

    Every result there is, in index order, as CSV with a header row, streamed;
    `x-insight-stream-stale` as for results.ndjson. Columns (schemas.export): index,
    record_id, success, skipped, the task's fields (the default task's summary, sentiment,
    topics, insights, lists joined with " | "; a custom task's own fields, nested values as
    JSON), error, tokens_used, input_tokens, output_tokens, attempts, model,
    input_metadata (the record's metadata as JSON). A job with its own task is read twice:
    once for its fields (in the order they first appear), once for the rows. Text cells
    that a spreadsheet would run as a formula start with a ' (OWASP CSV injection). Errors
    as for /results.
    """
    failed_only = failed_param(request)
    job_id = request.path_params["job_id"]
    found = await find_job(request, job_id, stream=True, stale_ok=True)
    if isinstance(found, Response):
        return found
    if found.job.task is None:
        columns = csv_columns()
    else:
        responses = (v["response"] for v in _each_result(found, failed_only) if "response" in v)
        columns = csv_columns(task_fields(responses))

    def rows() -> Iterator[bytes]:
        yield _csv_line(list(columns))
        for view in _each_result(found, failed_only):
            yield _csv_line(csv_row(view, columns))

    return StreamingResponse(
        _paced(rows()),
        media_type="text/csv; charset=utf-8",
        headers={
            "content-disposition": f'attachment; filename="{_safe(job_id)}.csv"',
            **stale_headers(found),
        },
    )


def stale_headers(found: FoundJob) -> dict[str, str]:
    """A download read from a standby replica says so in a header (its body has no room):
    `x-insight-stream-stale: <as_of>`, the job's last change the replica holds."""
    if not found.stale:
        return {}
    return {STALE_HEADER: job_summary(found.job, stale=True)["as_of"] or ""}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:100]


def _csv_line(cells: list[str]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerow(cells)
    return out.getvalue().encode()
