"""A stream of records as a submit or an estimate sends it: `application/x-ndjson` or
`text/csv`.

The body is read line by line, never whole: each record is validated and written to a
spool file on disk, one published JSON record a line. A bad line rejects the whole
request (422 naming the line), before anything is published.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import AsyncIterator
from typing import IO, Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request

from api.bodies import CSV, BodyType, check_record_size, describe, record_limit
from api.errors import ApiError
from api.job_options import JobOptions, query_options, request_options, with_query_options
from api.records import validated_json
from schemas import BatchRequest
from stream_app.core.settings import Settings
from stream_app.running.service import Service

# Room for a record's JSON around its text (id, metadata, escapes).
_LINE_OVERHEAD = 65_536
# The csv module refuses a cell over 131,072 characters ("field larger than field limit");
# lines are bounded here (`_max_line`), so cells need no bound of their own.
csv.field_size_limit(max(csv.field_size_limit(), 2**30))


async def spool_records(
    request: Request, spool: IO[bytes], service: Service, kind: BodyType
) -> tuple[int, JobOptions]:
    """Validate the streamed records into `spool` (one JSON record a line); returns how
    many and the job's options (query parameters, and an NDJSON body's `{"job": ...}` line:
    both apply, a value given in both that differs is a 422). Raises ApiError (413, 422) at
    the first bad line."""
    options = _validated_options(query_options(request.query_params), 0, service)
    if kind.media_type == CSV:
        count = await _spool_csv(request, spool, service, kind)
    else:
        count, from_line = await _spool_ndjson(request, spool, service, kind)
        options = from_line or options
    if count == 0:
        raise ApiError(422, "validation_error", "records: the body holds no record")
    return count, options


def _line_too_long(number: int, max_line: int, settings: Settings) -> ApiError:
    return ApiError(
        413,
        "record_too_large",
        f"line {number}: longer than {max_line:,} characters; a record may hold at most "
        f"{settings.batch_max_text_chars:,} characters of text (BATCH_MAX_TEXT_CHARS) and "
        f"{record_limit(settings):,} bytes as JSON (BATCH_MAX_RECORD_BYTES): shorten it or "
        "split it",
    )


def _max_line(settings: Settings, per_char: int) -> int:
    """The longest line read: room for the largest text (`per_char` characters a text
    character: JSON escapes, CSV quotes) or the largest record, whichever is more."""
    return max(settings.batch_max_text_chars * per_char, record_limit(settings)) + _LINE_OVERHEAD


async def _lines(
    request: Request, max_line: int, settings: Settings, kind: BodyType
) -> AsyncIterator[tuple[int, str]]:
    """(line number from 1, text without the line break), decoded as UTF-8 (the charset
    parameter of the content type is checked in `spool_records`); a leading byte-order
    mark (Excel's "CSV UTF-8" starts with one) is dropped, as RFC 8259 allows. Raises
    ApiError 422 naming the line of a byte that is not UTF-8, 413 `record_too_large` for a
    line over `max_line` characters."""
    decoder = codecs.getincrementaldecoder("utf-8-sig" if kind.utf8 else kind.charset)()
    pending = ""
    number = 0
    async for chunk in request.stream():
        try:
            pending += decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            # The lines before the bad byte are whole: count them to name its line.
            good = chunk[: exc.start].decode("utf-8", errors="replace")
            bad_line = number + pending.count("\n") + good.count("\n") + 1
            raise ApiError(
                422,
                "validation_error",
                f"line {bad_line}: not {kind.charset} text"
                + (
                    " (bodies are read as UTF-8 unless the content type names a charset)"
                    if kind.utf8
                    else " (the content type's charset)"
                ),
            ) from None
        *complete, pending = pending.split("\n")
        for line in complete:
            number += 1
            if len(line) > max_line:
                raise _line_too_long(number, max_line, settings)
            yield number, line.removesuffix("\r")
        if len(pending) > max_line:
            raise _line_too_long(number + 1, max_line, settings)
    pending += decoder.decode(b"", final=True)
    if pending:
        yield number + 1, pending.removesuffix("\r")


def _spool_record(spool: IO[bytes], data: Any, line: int, settings: Settings) -> None:
    """Validate one record (api.records: plain records without a pydantic model) and
    write its published JSON as a line of the spool. Raises ApiError 422, 413
    `record_too_large`."""
    try:
        encoded, text = validated_json(data)
    except ValidationError as exc:
        raise ApiError(422, "validation_error", f"line {line}: {describe(exc)}") from None
    max_chars = settings.batch_max_text_chars
    if len(text) > max_chars:
        raise ApiError(
            422,
            "validation_error",
            f"line {line}: text: {len(text):,} characters, at most {max_chars:,} are allowed "
            "(BATCH_MAX_TEXT_CHARS); shorten or split it",
        )
    check_record_size(encoded, f"line {line}", settings)
    spool.write(encoded)
    spool.write(b"\n")


def _too_many(limit: int) -> ApiError:
    return ApiError(413, "too_many_records", f"at most {limit} records per request")


async def _spool_ndjson(
    request: Request, spool: IO[bytes], service: Service, kind: BodyType
) -> tuple[int, JobOptions | None]:
    settings = service.settings
    count = 0
    first = True
    options = None
    async for number, line in _lines(request, _max_line(settings, 6), settings, kind):
        if not line.strip():
            continue
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ApiError(422, "validation_error", f"line {number}: not JSON: {exc}") from None
        if first and isinstance(data, dict) and set(data) == {"job"}:
            options = _check_job_options(data["job"], number, service, request.query_params)
            first = False
            continue
        first = False
        _spool_record(spool, data, number, settings)
        count += 1
        if count > settings.batch_max_records_per_request:
            raise _too_many(settings.batch_max_records_per_request)
    return count, options


def _check_job_options(options: Any, line: int, service: Service, params: Any) -> JobOptions:
    """A first line `{"job": {...}}` carries the options the JSON body would (validated
    the same way: unknown options are refused), with the query's added as to a JSON body
    (`with_query_options`: one that differs from the line's is a 422)."""
    if not isinstance(options, dict):
        raise ApiError(422, "validation_error", f"line {line}: job: must be an object")
    return _validated_options(options, line, service, params)


def _validated_options(
    options: dict[str, Any], line: int, service: Service, params: Any = None
) -> JobOptions:
    where = f"line {line}: job." if line else "query: "
    try:
        batch = BatchRequest.model_validate({**options, "records": [{"text": "-"}]})
    except ValidationError as exc:
        raise ApiError(422, "validation_error", f"{where}{describe(exc)}") from None
    if params is not None:
        batch = with_query_options(batch, params)
    try:
        return request_options(batch, service)
    except ApiError as exc:
        raise ApiError(exc.status, exc.code, f"{where}{exc.message}") from None


async def _spool_csv(request: Request, spool: IO[bytes], service: Service, kind: BodyType) -> int:
    """A header row; the text in column `text_column` (default `text`), the id in
    `id_column` (default `id`, when there is one); other columns go to metadata."""
    settings = service.settings
    text_column = request.query_params.get("text_column", "text")
    id_column = request.query_params.get("id_column")
    header: list[str] | None = None
    count = 0
    async for start, row in _csv_rows(_lines(request, _max_line(settings, 2), settings, kind)):
        if header is None:
            header = row
            twice = sorted({name for name in header if header.count(name) > 1})
            if twice:
                raise ApiError(
                    422,
                    "validation_error",
                    f"line {start}: the header names column {twice[0]!r} more than once "
                    "(columns: " + ", ".join(header) + "); give each column its own name",
                )
            if text_column not in header:
                raise ApiError(
                    422,
                    "validation_error",
                    f"line {start}: no column {text_column!r} (columns: {', '.join(header)}); "
                    "name the text's column with ?text_column=",
                )
            if id_column is not None and id_column not in header:
                raise ApiError(422, "validation_error", f"line {start}: no column {id_column!r}")
            if id_column is None and "id" in header:
                id_column = "id"
            continue
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise ApiError(
                422,
                "validation_error",
                f"line {start}: {len(row)} cells, the header has {len(header)}",
            )
        cells = dict(zip(header, row, strict=True))
        metadata = {k: v for k, v in cells.items() if k not in (text_column, id_column)}
        record = {
            "text": cells[text_column],
            "id": (cells[id_column] or None) if id_column else None,
            "metadata": metadata,
        }
        _spool_record(spool, record, start, settings)
        count += 1
        if count > settings.batch_max_records_per_request:
            raise _too_many(settings.batch_max_records_per_request)
    return count


async def _csv_rows(lines: AsyncIterator[tuple[int, str]]) -> AsyncIterator[tuple[int, list[str]]]:
    """CSV rows with the line each starts on. A quoted cell may hold line breaks: physical
    lines are joined until the quotes balance (escaped quotes come in pairs)."""
    logical: list[str] = []
    start = 0
    quotes = 0
    async for number, line in lines:
        if not logical:
            start = number
        logical.append(line)
        quotes += line.count('"')
        if quotes % 2:
            continue
        try:
            row = next(csv.reader(["\n".join(logical)], strict=True), [])
        except csv.Error as exc:
            raise ApiError(422, "validation_error", f"line {start}: {exc}") from None
        logical, quotes = [], 0
        yield start, row
    if logical:
        raise ApiError(422, "validation_error", f"line {start}: a quoted cell is not closed")
