"""Reading records from a file, one at a time (the file is never loaded whole): JSONL, CSV
with a header row, or plain text with one record per line; and JSON, the API's own body
(`{"records": [...], "task"?, ...}` or a list of records), which is loaded whole."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from schemas import BatchRecord

Format = Literal["jsonl", "json", "csv", "text"]
_SUFFIXES: dict[str, Format] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
}
# Job options a JSON body may carry besides its records (POST /api/v1/batch).
_BODY_OPTIONS = ("task", "priority", "max_cost_usd")
# Cells may be as long as a record's text (the csv module's default limit is 131,072).
csv.field_size_limit(max(csv.field_size_limit(), 2**30))


class BadInput(Exception):
    """A line of the input file cannot become a record."""

    def __init__(self, path: Path, line: int | None, why: str) -> None:
        where = f"{path} line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {why}")


def detect_format(path: Path, given: Format | None) -> Format:
    """The format named, else the one the file's suffix says (plain text otherwise)."""
    return given or _SUFFIXES.get(path.suffix.lower(), "text")


def read_records(
    path: Path, fmt: Format, *, text_column: str = "text", id_column: str | None = None
) -> Iterator[dict[str, Any]]:
    """Each record as the API takes it (`{"text", "id"?, "metadata"?}`), validated with the
    API's own model. Raises BadInput naming the line and why; OSError for the file."""
    if fmt == "jsonl":
        yield from _jsonl(path)
    elif fmt == "json":
        records, _ = _json_body(path)
        for number, data in enumerate(records):
            yield _valid(path, None, data, f"records.{number}")
    elif fmt == "csv":
        yield from _csv(path, text_column, id_column)
    else:
        yield from _text(path)


def file_options(path: Path, fmt: Format) -> dict[str, Any]:
    """The job options a JSON body file carries (`task`, `priority`, `max_cost_usd`); none
    for the other formats. The command line's options win over these."""
    if fmt != "json":
        return {}
    _, options = _json_body(path)
    return options


# Python's JSON reader gives up on values nested this deep (about 1,000 levels); the
# service refuses such a record too (422).
TOO_DEEP = "JSON nested too deeply to read (more than about 1,000 levels)"


def _strict_json(text: str | bytes) -> Any:
    """json.loads as the service reads JSON (RFC 8259): NaN, Infinity and numbers too big
    for a float (1e400) are refused (json.JSONDecodeError) instead of read."""

    def no_constant(name: str) -> float:
        raise ValueError(f"{name} is not JSON (RFC 8259 has no NaN or Infinity)")

    def finite(number: str) -> float:
        value = float(number)
        if math.isinf(value):
            raise ValueError(f"the number {number[:20]} is too large for JSON readers")
        return value

    try:
        return json.loads(text, parse_constant=no_constant, parse_float=finite)
    except ValueError as exc:
        if isinstance(exc, json.JSONDecodeError):
            raise
        raise json.JSONDecodeError(str(exc), text if isinstance(text, str) else "", 0) from None


def _json_body(path: Path) -> tuple[list[Any], dict[str, Any]]:
    """A `.json` file: the API's body `{"records": [...], ...options}`, or a bare list of
    records; a file of one JSON object a line (JSONL named .json) is read as JSONL."""
    try:
        data = _strict_json(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise BadInput(path, None, "not UTF-8 text") from None
    except RecursionError:
        raise BadInput(path, None, TOO_DEEP) from None
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # several objects: JSONL
            return [record for record in _jsonl(path)], {}
        raise BadInput(path, exc.lineno, f"not valid JSON ({exc.msg})") from None
    if isinstance(data, list):
        return data, {}
    if isinstance(data, dict) and isinstance(data.get("records"), list):
        unknown = sorted(set(data) - {"records", *_BODY_OPTIONS})
        if unknown:
            raise BadInput(
                path,
                None,
                f"unknown field {unknown[0]!r} (a body has records, {', '.join(_BODY_OPTIONS)})",
            )
        return data["records"], {k: data[k] for k in _BODY_OPTIONS if k in data}
    if isinstance(data, dict) and "text" in data:
        return [data], {}
    raise BadInput(
        path,
        None,
        'expected the API\'s body {"records": [{"text": ...}, ...]} or a list of records',
    )


def _valid(path: Path, line: int | None, data: Any, where: str = "") -> dict[str, Any]:
    try:
        record = BatchRecord.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"]) or "record"
        prefix = f"{where}." if where and error["loc"] else where
        message = str(error["msg"]).removeprefix("Value error, ")  # pydantic's, not ours
        raise BadInput(path, line, f"{prefix}{field}: {message}") from None
    return record.model_dump(exclude_none=True, exclude_defaults=True) | {"text": record.text}


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as lines:
        for number, line in enumerate(_decoded(path, lines), 1):
            if not line.strip():
                continue
            try:
                data = _strict_json(line)
            except json.JSONDecodeError as exc:
                raise BadInput(path, number, f"not valid JSON ({exc.msg})") from None
            except RecursionError:
                raise BadInput(path, number, TOO_DEEP) from None
            if not isinstance(data, dict):
                raise BadInput(path, number, "expected a JSON object with a 'text' field")
            yield _valid(path, number, data)


def _text(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as lines:
        for number, line in enumerate(_decoded(path, lines), 1):
            text = line.rstrip("\r\n")
            if text.strip():
                yield _valid(path, number, {"text": text})


def _csv(path: Path, text_column: str, id_column: str | None) -> Iterator[dict[str, Any]]:
    with path.open("rb") as handle:
        reader = csv.reader(_decoded(path, handle), strict=True)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise BadInput(path, 1, f"not valid CSV ({exc})") from None
        twice = sorted({name for name in header if header.count(name) > 1})
        if twice:
            raise BadInput(
                path,
                1,
                f"the header names column {twice[0]!r} more than once; give each "
                "column its own name",
            )
        if text_column not in header:
            columns = ", ".join(header)
            raise BadInput(
                path, 1, f"no column {text_column!r} (columns: {columns}); use --text-column"
            )
        if id_column is not None and id_column not in header:
            raise BadInput(path, 1, f"no column {id_column!r}; check --id-column")
        if id_column is None and "id" in header:
            id_column = "id"
        end = reader.line_num
        while True:
            start = end + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise BadInput(path, start, f"not valid CSV ({exc})") from None
            end = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise BadInput(path, start, f"{len(row)} cells, the header has {len(header)}")
            cells = dict(zip(header, row, strict=True))
            record: dict[str, Any] = {"text": cells[text_column]}
            if id_column and cells[id_column]:
                record["id"] = cells[id_column]
            metadata = {k: v for k, v in cells.items() if k not in (text_column, id_column)}
            if metadata:
                record["metadata"] = metadata
            yield _valid(path, start, record)


def _decoded(path: Path, lines: Iterator[bytes]) -> Iterator[str]:
    """The file's lines as text, decoded one by one: a line that is not UTF-8 is a
    BadInput naming it, not a traceback."""
    for number, line in enumerate(lines, 1):
        try:
            # A leading byte-order mark (Notepad, Excel's "CSV UTF-8") is not text.
            yield line.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            raise BadInput(path, number, "not UTF-8 text") from None
