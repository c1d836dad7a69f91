"""A result as one flat CSV row: the same columns from the API and from the CLI.

The columns are the fixed head (index, record_id, success, skipped), the task's fields (the
default task's summary, sentiment, topics, insights; a custom task's own fields), then the
fixed tail (error, tokens, attempts, model) and `input_metadata`, the record's own metadata
as JSON. Cells that a spreadsheet would run as a formula are neutralised (`safe_cell`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

HEAD = ("index", "record_id", "success", "skipped")
DEFAULT_FIELDS = ("summary", "sentiment", "topics", "insights")
TAIL = (
    "error",
    "tokens_used",
    "input_tokens",
    "output_tokens",
    "attempts",
    "model",
    "input_metadata",
)
# The default task's columns.
CSV_COLUMNS = (*HEAD, *DEFAULT_FIELDS, *TAIL)
# Lists of the default task (topics, insights) are joined into one cell.
LIST_SEPARATOR = " | "
# A task field named like a fixed column gets this prefix (`response.error`).
FIELD_PREFIX = "response."
# What a spreadsheet reads as the start of a formula (OWASP, "CSV Injection"): = + - @, and
# tab and carriage return, which some spreadsheets skip before one of those.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def task_fields(responses: Iterable[Mapping[str, Any]]) -> list[str]:
    """The fields of a task's answers (each result's `response`), in the order they first
    appear; `metadata` (ours, not the task's) left out."""
    seen: dict[str, None] = {}
    for response in responses:
        for key in response:
            if key != "metadata":
                seen.setdefault(key, None)
    return list(seen)


def csv_columns(fields: Sequence[str] | None = None) -> tuple[str, ...]:
    """The header row: the default task's columns (`fields` None), else the fixed head,
    the task's `fields` (one named like a fixed column as `response.<name>`), the tail."""
    if fields is None:
        return CSV_COLUMNS
    fixed = set(HEAD) | set(TAIL)
    named = [FIELD_PREFIX + f if f in fixed else f for f in fields]
    return (*HEAD, *named, *TAIL)


def safe_cell(text: str) -> str:
    """`text` as a CSV cell no spreadsheet runs as a formula: a leading ' when it starts
    with = + - @ (or tab, carriage return), per OWASP's CSV injection guidance. Only for
    text: numbers (-0.5 is a number, not a formula) are written as they are."""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _cell(value: Any, join_lists: bool) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return safe_cell(value)
    if join_lists and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return safe_cell(LIST_SEPARATOR.join(value))
    # Nested values (objects, other lists) as JSON.
    return safe_cell(json.dumps(value, ensure_ascii=False))


def csv_row(result: Mapping[str, Any], columns: Sequence[str] = CSV_COLUMNS) -> list[str]:
    """One result as the API returns it (`{"index", "success", "response"?, "error"?,
    "input_metadata"?, ...}`) -> the cells of `columns` (from `csv_columns`). Missing
    values are empty cells; the default task's lists are joined with " | ", other nested
    values are JSON; text is neutralised against spreadsheet formulas (`safe_cell`)."""
    response = result.get("response") or {}
    metadata = response.get("metadata") or {}
    fixed: dict[str, Any] = {
        "index": result.get("index"),
        "record_id": result.get("record_id"),
        "success": bool(result.get("success")),
        "skipped": bool(result.get("skipped")),
        "error": result.get("error"),
        "tokens_used": result.get("tokens_used"),
        "input_tokens": metadata.get("input_tokens"),
        "output_tokens": metadata.get("output_tokens"),
        "attempts": result.get("attempts"),
        "model": metadata.get("model"),
        "input_metadata": result.get("input_metadata") or None,
    }
    cells = []
    for name in columns:
        if name in fixed:
            cells.append(_cell(fixed[name], join_lists=False))
        else:
            field = name.removeprefix(FIELD_PREFIX) if name not in response else name
            cells.append(_cell(response.get(field), join_lists=name in DEFAULT_FIELDS))
    return cells
