"""A submitted record as the pipeline publishes it: its JSON object (`text`, `id` when set,
`metadata`), as `BatchRecord.model_dump_json(exclude_none=True)` writes it.

Most records are plain (a dict with a non-blank string `text`, maybe a string `id` and an
object `metadata`): `record_json` checks that shape and encodes it with orjson, without a
pydantic model per record. Validating and dumping a `BatchRecord` cost about 17 us a record
(1.7 s of a 100,000-record submit, issue 9; the `text` validator runs in Python); the check
costs about 1 us. Anything else (a missing or blank text, an unknown field, a number where a
string belongs) is left to `BatchRecord`, which accepts it the same way as before or names
what is wrong, so the rules and the error messages are BatchRecord's alone.
"""

from __future__ import annotations

from typing import Any

import orjson

from schemas import BatchRecord

_FIELDS = frozenset(("text", "id", "metadata"))


def record_json(data: Any) -> bytes | None:
    """`data` (parsed JSON) as the record's published JSON when it is a plain record that
    BatchRecord takes unchanged; None when it needs BatchRecord's validation (which may
    still accept it, or raise pydantic's ValidationError)."""
    if type(data) is not dict or not data.keys() <= _FIELDS:
        return None
    text = data.get("text")
    # BatchRecord's rule: a string with something other than whitespace.
    if type(text) is not str or not text.strip():
        return None
    record_id = data.get("id")
    if type(record_id) is int:
        # A whole number (database exports): kept as its decimal string, as BatchRecord does.
        record_id = str(record_id)
    elif record_id is not None and type(record_id) is not str:
        return None
    metadata = data.get("metadata", {})
    if type(metadata) is not dict:
        return None
    out: dict[str, Any] = {"text": text}
    if record_id is not None:
        out["id"] = record_id
    out["metadata"] = metadata
    return orjson.dumps(out)


def validated_json(data: Any) -> tuple[bytes, str]:
    """The record's published JSON and its text: the plain shape directly (`record_json`),
    anything else through BatchRecord. Raises pydantic's ValidationError."""
    encoded = record_json(data)
    if encoded is not None:
        return encoded, data["text"]
    record = BatchRecord.model_validate(data)
    return record.model_dump_json(exclude_none=True).encode(), record.text
