"""A result as one flat CSV row: the same columns from the API and from the CLI."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CSV_COLUMNS = (
    "index",
    "record_id",
    "success",
    "skipped",
    "summary",
    "sentiment",
    "topics",
    "insights",
    "error",
    "tokens_used",
    "input_tokens",
    "output_tokens",
    "attempts",
    "model",
)
# Lists (topics, insights) are joined into one cell.
LIST_SEPARATOR = " | "


def csv_row(result: Mapping[str, Any]) -> list[str]:
    """One result as the API returns it (`{"index", "success", "response"?, "error"?, ...}`)
    -> the cells of `CSV_COLUMNS`. Missing values are empty cells."""
    response = result.get("response") or {}
    metadata = response.get("metadata") or {}
    values: dict[str, Any] = {
        "index": result.get("index"),
        "record_id": result.get("record_id"),
        "success": "true" if result.get("success") else "false",
        "skipped": "true" if result.get("skipped") else "false",
        "summary": response.get("summary"),
        "sentiment": response.get("sentiment"),
        "topics": LIST_SEPARATOR.join(response.get("topics") or []),
        "insights": LIST_SEPARATOR.join(response.get("insights") or []),
        "error": result.get("error"),
        "tokens_used": result.get("tokens_used"),
        "input_tokens": metadata.get("input_tokens"),
        "output_tokens": metadata.get("output_tokens"),
        "attempts": result.get("attempts"),
        "model": metadata.get("model"),
    }
    return ["" if values[name] is None else str(values[name]) for name in CSV_COLUMNS]
