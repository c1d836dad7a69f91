"""What a request carries besides a stream of records: a JSON batch body (read with a size
limit, counted, validated) and integer query parameters. Errors are ApiError 4xx with the
field named (pydantic's messages, shortened by `describe`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request

from api.errors import ApiError
from api.records import record_json
from schemas import BatchRequest
from stream_app.core.settings import Settings


def int_param(request: Request, name: str, default: int | None) -> int | None:
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
        raise ApiError(422, "validation_error", describe(exc)) from None


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


def describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)
