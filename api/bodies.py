"""What a request carries besides a stream of records: a JSON batch body (read with a size
limit, counted, validated) and integer query parameters. Errors are ApiError 4xx with the
field named (pydantic's messages, shortened by `describe`)."""

from __future__ import annotations

import codecs
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request

from api.errors import ApiError, describe
from api.records import record_json
from schemas import BatchRequest
from stream_app.core.settings import Settings

NDJSON = "application/x-ndjson"
CSV = "text/csv"
JSON = "application/json"
STREAMED_TYPES = (NDJSON, "application/jsonl", "application/jsonlines", CSV)
ACCEPTED_TYPES = (JSON, *STREAMED_TYPES)


@dataclass(frozen=True)
class BodyType:
    """A request body's content type: `media_type` lower-case without parameters ("" when
    the request names none: read as JSON), `charset` a Python codec name ("utf-8" unless
    the content type's charset parameter names another)."""

    media_type: str
    charset: str = "utf-8"

    @property
    def utf8(self) -> bool:
        return self.charset == "utf-8"


def body_type(request: Request) -> BodyType:
    """The submit's (or estimate's) content type. Raises ApiError 415
    `unsupported_media_type` for a type other than ACCEPTED_TYPES (RFC 9110 15.5.16) or a
    charset Python does not know, listing what is taken."""
    raw = request.headers.get("content-type", "")
    media_type, _, parameters = raw.partition(";")
    media_type = media_type.strip().lower()
    if media_type and media_type not in ACCEPTED_TYPES:
        raise unsupported_media_type(f"content-type {media_type!r} is not taken")
    charset = "utf-8"
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip(' "'):
            try:
                charset = codecs.lookup(value.strip(' "')).name
            except LookupError:
                raise unsupported_media_type(f"unknown charset {value.strip()!r}") from None
    return BodyType(media_type, charset)


def unsupported_media_type(why: str) -> ApiError:
    return ApiError(
        415,
        "unsupported_media_type",
        f"{why}: send {JSON} (a batch body), {NDJSON} (a record a line; also "
        "application/jsonl, application/jsonlines) or text/csv (a header row); bodies are "
        "read as UTF-8 unless the content type names a charset",
    )


def int_param(request: Request, name: str, default: int | None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    # ASCII digits only: str.isdigit() also takes "²" and "٣" (int() refuses the first).
    if not (raw.isascii() and raw.isdigit()):
        raise ApiError(400, "invalid_parameter", f"{name} must be a non-negative integer")
    return int(raw)


def parse_batch(body: bytes, settings: Settings, kind: BodyType | None = None) -> BatchRequest:
    """A JSON batch body, checked as POST /api/v1/batch checks it. Raises ApiError 400
    `invalid_json`, 413 `too_many_records` (more than BATCH_MAX_RECORDS_PER_REQUEST, before
    the records are validated), 422 `validation_error` (a text over BATCH_MAX_TEXT_CHARS),
    413 `record_too_large` (a record over `record_limit`)."""
    batch = _validated_batch(_counted_payload(body, settings, kind))
    _check_texts((record.text for record in batch.records), settings)
    for index, record in enumerate(batch.records):
        check_record_size(
            record.model_dump_json(exclude_none=True).encode(), f"records.{index}", settings
        )
    return batch


def parse_submission(
    body: bytes, settings: Settings, kind: BodyType | None = None
) -> tuple[BatchRequest, list[bytes]]:
    """A JSON batch body as POST /api/v1/batch takes it: checked as `parse_batch` checks it
    (same errors, same order), returned as the request's options and each record's
    published JSON (api.records). The returned request's own `records` are not the job's:
    plain records are not turned into pydantic models (issue 9: 1.7 s of a 100,000-record
    submit), so it holds only the first one."""
    payload = _counted_payload(body, settings, kind)
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
            _check_sizes(encoded, settings)
            return options, encoded
    batch = _validated_batch(payload)
    _check_texts((record.text for record in batch.records), settings)
    encoded = [r.model_dump_json(exclude_none=True).encode() for r in batch.records]
    _check_sizes(encoded, settings)
    return batch, encoded


# Room in a batch.records message around the record's JSON: job_id, index, owner,
# priority, created_follows (about 150 bytes; the rest is margin).
ENVELOPE_BYTES = 4096


def record_limit(settings: Settings) -> int:
    """The largest record, in bytes of its published JSON: BATCH_MAX_RECORD_BYTES, and never
    more than a Kafka message may carry (KAFKA_MAX_REQUEST_BYTES less ENVELOPE_BYTES)."""
    return min(settings.batch_max_record_bytes, settings.kafka_max_request_bytes - ENVELOPE_BYTES)


def check_record_size(encoded: bytes, where: str, settings: Settings) -> None:
    """Raises ApiError 413 `record_too_large` naming the record (`where`: `records.3`,
    `line 4`), its size and the limit, when `encoded` (the record's published JSON) is over
    `record_limit`: such a record cannot travel as one Kafka message."""
    limit = record_limit(settings)
    if len(encoded) > limit:
        raise ApiError(
            413,
            "record_too_large",
            f"{where}: the record is {len(encoded):,} bytes as JSON, at most {limit:,} are "
            "allowed (BATCH_MAX_RECORD_BYTES: a record travels as one Kafka message); "
            "shorten its text or metadata, or split it",
        )


def _check_sizes(encoded: list[bytes], settings: Settings) -> None:
    for index, record in enumerate(encoded):
        check_record_size(record, f"records.{index}", settings)


def _counted_payload(body: bytes, settings: Settings, kind: BodyType | None) -> Any:
    kind = kind or BodyType(JSON)
    if not kind.utf8:
        try:
            body = body.decode(kind.charset).encode()
        except UnicodeDecodeError as exc:
            line = body[: exc.start].count(b"\n") + 1
            raise ApiError(
                422,
                "validation_error",
                f"line {line}: not {kind.charset} text (the content type's charset)",
            ) from None
    try:
        payload = orjson.loads(body.removeprefix(b"\xef\xbb\xbf"))
    except orjson.JSONDecodeError as exc:
        if not kind.media_type:
            # No content type and not JSON: say what the service takes.
            raise unsupported_media_type("the request names no content-type") from None
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON ({exc})") from None
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
                422,
                "validation_error",
                f"records.{index}.text: {len(text):,} characters, at most {max_chars:,} are "
                "allowed (BATCH_MAX_TEXT_CHARS); shorten or split it",
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
