"""Reading records from a file, one at a time (the file is never loaded whole): JSONL, CSV
with a header row, or plain text with one record per line."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from schemas import BatchRecord

Format = Literal["jsonl", "csv", "text"]
_SUFFIXES: dict[str, Format] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
}


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
    elif fmt == "csv":
        yield from _csv(path, text_column, id_column)
    else:
        yield from _text(path)


def _valid(path: Path, line: int, data: Any) -> dict[str, Any]:
    try:
        record = BatchRecord.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"]) or "record"
        raise BadInput(path, line, f"{field}: {error['msg']}") from None
    return record.model_dump(exclude_none=True, exclude_defaults=True) | {"text": record.text}


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as lines:
        for number, line in enumerate(_decoded(path, lines), 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadInput(path, number, f"not valid JSON ({exc.msg})") from None
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
            yield line.decode("utf-8")
        except UnicodeDecodeError:
            raise BadInput(path, number, "not UTF-8 text") from None
