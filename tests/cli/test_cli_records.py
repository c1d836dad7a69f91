"""Reading input files for `insight submit` (no service): streamed, validated with the
API's model, errors naming the line; and the CSV row of a result."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.records import BadInput, detect_format, read_records
from schemas.export import CSV_COLUMNS, csv_row


def test_formats_from_suffix_or_as_given(tmp_path: Path) -> None:
    assert detect_format(Path("a.JSONL"), None) == "jsonl"
    assert detect_format(Path("a.ndjson"), None) == "jsonl"
    assert detect_format(Path("a.csv"), None) == "csv"
    assert detect_format(Path("notes.txt"), None) == "text"
    assert detect_format(Path("a.csv"), "text") == "text"


def test_jsonl_records_and_the_line_at_fault(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "one", "id": "a"}\n\n{"text": "two", "metadata": {"k": 1}}\n[1, 2]\n')
    records = read_records(path, "jsonl")
    assert next(records) == {"text": "one", "id": "a"}
    assert next(records) == {"text": "two", "metadata": {"k": 1}}
    with pytest.raises(BadInput, match=r"in.jsonl line 4: expected a JSON object"):
        next(records)
    for body, why in (
        ('{"text": "x", "colour": 1}\n', "line 1: colour: Extra inputs are not permitted"),
        ('{"id": "x"}\n', "line 1: text: Field required"),
        ('{"text": 3}\n', "line 1: text: Input should be a valid string"),
        ('{"text": "x"\n', "line 1: not valid JSON"),
    ):
        path.write_text(body)
        with pytest.raises(BadInput, match=why):
            list(read_records(path, "jsonl"))
    path.write_bytes(b'{"text": "ok"}\n\xff\xfe\n')
    with pytest.raises(BadInput, match="line 2: not UTF-8 text"):
        list(read_records(path, "jsonl"))


def test_csv_columns_multiline_cells_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text('ref,body,channel\nR1,"two\nlines",mail\n\nR2,short,phone\nR3,,web\n')
    records = read_records(path, "csv", text_column="body", id_column="ref")
    assert next(records) == {"text": "two\nlines", "id": "R1", "metadata": {"channel": "mail"}}
    assert next(records) == {"text": "short", "id": "R2", "metadata": {"channel": "phone"}}
    with pytest.raises(BadInput, match="line 6: text: Value error, text must be a non-empty"):
        next(records)
    path.write_text("id,text\n1,hello\n2,bye,extra\n")
    rows = read_records(path, "csv")
    assert next(rows) == {"text": "hello", "id": "1"}  # an `id` column is the id by default
    with pytest.raises(BadInput, match="line 3: 3 cells, the header has 2"):
        next(rows)
    with pytest.raises(BadInput, match=r"line 1: no column 'body' \(columns: id, text\)"):
        list(read_records(path, "csv", text_column="body"))


def test_text_is_a_record_a_line(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("first\r\n\n  \nsecond\n")
    assert list(read_records(path, "text")) == [{"text": "first"}, {"text": "second"}]


def test_csv_row_flattens_a_result() -> None:
    ok = {
        "index": 2,
        "success": True,
        "record_id": "T-2",
        "tokens_used": 30,
        "attempts": 1,
        "response": {
            "summary": "Late delivery.",
            "sentiment": "negative",
            "topics": ["delivery", "refund"],
            "insights": ["Offer a refund", "Check the carrier"],
            "metadata": {"input_tokens": 20, "output_tokens": 10, "model": "m"},
        },
    }
    row = dict(zip(CSV_COLUMNS, csv_row(ok), strict=True))
    assert row["topics"] == "delivery | refund"
    assert row["insights"] == "Offer a refund | Check the carrier"
    assert (row["success"], row["skipped"], row["error"]) == ("true", "false", "")
    assert (row["input_tokens"], row["output_tokens"], row["model"]) == ("20", "10", "m")
    skipped = {"index": 3, "success": False, "skipped": True, "error": "skipped", "attempts": 0}
    row = dict(zip(CSV_COLUMNS, csv_row(skipped), strict=True))
    assert (row["skipped"], row["summary"], row["tokens_used"]) == ("true", "", "")
