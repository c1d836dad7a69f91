"""Reading input files for `insight submit` (no service): streamed, validated with the
API's model, errors naming the line; and the CSV row of a result."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.client import normal_url
from cli.records import BadInput, detect_format, file_options, read_records
from schemas.export import CSV_COLUMNS, csv_columns, csv_row, task_fields

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_formats_from_suffix_or_as_given(tmp_path: Path) -> None:
    assert detect_format(Path("a.JSONL"), None) == "jsonl"
    assert detect_format(Path("a.ndjson"), None) == "jsonl"
    assert detect_format(Path("a.csv"), None) == "csv"
    assert detect_format(Path("notes.txt"), None) == "text"
    assert detect_format(Path("a.csv"), "text") == "text"
    assert detect_format(Path("a.json"), None) == "json"


def test_a_jsonl_file_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "one"}\n{"text": "two"}\n')
    assert list(read_records(path, "jsonl")) == [{"text": "one"}, {"text": "two"}]
    path.write_bytes(b"\xef\xbb\xbfid,text\n1,one\n")
    assert list(read_records(path, "csv")) == [{"text": "one", "id": "1"}]


def test_a_json_file_in_the_api_body_format_brings_its_records_and_options(
    tmp_path: Path,
) -> None:
    body = EXAMPLES / "notes.json"
    records = list(read_records(body, "json"))
    assert [r["id"] for r in records] == ["N-1", "N-2"]
    assert records[0]["metadata"] == {"owner": "sales"}
    assert file_options(body, "json") == {"priority": "high", "max_cost_usd": 1}
    path = tmp_path / "list.json"
    path.write_text('[{"text": "a", "id": 4}, {"text": "b"}]')
    assert list(read_records(path, "json")) == [{"text": "a", "id": "4"}, {"text": "b"}]
    assert file_options(path, "json") == {}
    path.write_text('{"text": "a"}\n{"text": "b"}\n')  # JSONL saved as .json
    assert list(read_records(path, "json")) == [{"text": "a"}, {"text": "b"}]
    path.write_text('{"records": [{"text": "a"}, {"id": "x"}]}')
    with pytest.raises(BadInput, match=r"list.json: records.1.text: Field required"):
        list(read_records(path, "json"))
    path.write_text('{"records": [{"text": "a"}], "colour": 1}')
    with pytest.raises(BadInput, match="unknown field 'colour'"):
        file_options(path, "json")


def test_a_csv_header_naming_a_column_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "twice.csv"
    path.write_text("text,stars,text\na,1,b\n")
    with pytest.raises(BadInput, match="line 1: the header names column 'text' more than once"):
        list(read_records(path, "csv"))


def test_urls_as_people_type_them() -> None:
    assert normal_url("localhost:18000") == "http://localhost:18000"
    assert normal_url("http://127.0.0.1:8000/api/v1/") == "http://127.0.0.1:8000"
    assert normal_url("https://insight.example/docs") == "https://insight.example"
    assert normal_url("http://h:1") == "http://h:1"


def test_a_custom_tasks_fields_become_columns_nested_values_as_json() -> None:
    result = {
        "index": 0,
        "success": True,
        "response": {
            "product_area": "billing",
            "urgency": "high",
            "refund_requested": True,
            "tags": ["a", "b"],
            "error": "named like a fixed column",
            "metadata": {"input_tokens": 5, "output_tokens": 3, "model": "m"},
        },
        "input_metadata": {"stars": "5", "src": "web"},
    }
    columns = csv_columns(task_fields([result["response"]]))
    assert columns[4:9] == ("product_area", "urgency", "refund_requested", "tags", "response.error")
    assert columns[-1] == "input_metadata"
    row = dict(zip(columns, csv_row(result, columns), strict=True))
    assert (row["product_area"], row["urgency"], row["refund_requested"]) == (
        "billing",
        "high",
        "true",
    )
    assert row["tags"] == '["a", "b"]'
    assert (row["response.error"], row["error"]) == ("named like a fixed column", "")
    assert row["input_metadata"] == '{"stars": "5", "src": "web"}'


def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised() -> None:
    result = {
        "index": 0,
        "success": True,
        "record_id": '=HYPERLINK("http://x")',
        "response": {"summary": "+1 call", "topics": ["@home"], "score": -0.5, "note": "-x"},
        "error": None,
    }
    columns = csv_columns(task_fields([result["response"]]))
    row = dict(zip(columns, csv_row(result, columns), strict=True))
    assert row["record_id"] == '\'=HYPERLINK("http://x")'
    assert (row["summary"], row["topics"], row["note"]) == ("'+1 call", "'@home", "'-x")
    assert row["score"] == "-0.5"  # a number, not a formula
    cells = csv_row({**result, "response": {"topics": ["@a", "b"]}})
    default = dict(zip(CSV_COLUMNS, cells, strict=True))
    assert default["topics"] == "'@a | b"


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
    with pytest.raises(BadInput, match="line 6: text: text must be a non-empty"):
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


def test_json_nested_too_deeply_is_one_clear_error(tmp_path: Path) -> None:
    deep = '{"text": "x", "metadata": ' + '{"a":' * 5000 + "1" + "}" * 5000 + "}"
    lines = tmp_path / "deep.jsonl"
    lines.write_text('{"text": "fine"}\n' + deep + "\n")
    with pytest.raises(BadInput, match="line 2: JSON nested too deeply"):
        list(read_records(lines, "jsonl"))
    body = tmp_path / "deep.json"
    body.write_text(deep)
    with pytest.raises(BadInput, match="JSON nested too deeply"):
        list(read_records(body, "json"))


def test_a_status_list_shows_one_item_a_line() -> None:
    from cli.main import _status_value

    batches = [
        {"id": "msgbatch_1", "processing_status": "ended", "request_counts": {"succeeded": 2}},
        {"id": "msgbatch_2", "processing_status": "in_progress"},
    ]
    assert _status_value(batches) == (
        "id=msgbatch_1, processing_status=ended, request_counts=(succeeded=2)\n"
        "id=msgbatch_2, processing_status=in_progress"
    )
    assert _status_value([]) == "-"


def test_an_estimate_that_expects_records_to_go_live_says_so() -> None:
    from cli.main import _estimate_line

    est = {
        "records": 40,
        "input_tokens": 1000,
        "output_tokens": 400,
        "cost_usd": 0.045,
        "cost_usd_low": 0.022,
        "cost_usd_high": 0.06,
        "cost_usd_without_caching": 0.045,
        "duration_seconds": 118.0,
        "lane": "batch",
        "lane_reason": "asked for the batch lane; the deadline in 2 min is sooner than a "
        "provider batch's typical 60 min: records not answered in time move to the live "
        "lane (at the live price) before it",
        "saving_usd": 0.0,
        "task": "smart-summary",
        "model": "claude-sonnet-5-5",
    }
    first, second = _estimate_line(est).split("\n")
    assert first.startswith("estimate: 40 records") and "~118 s on the batch lane" in first
    assert second.startswith("lane: asked for the batch lane; the deadline in 2 min")
    est["lane_reason"] = "asked for the batch lane"
    assert "\n" not in _estimate_line(est)


@pytest.mark.parametrize(
    "line,said",
    [
        ('{"text": "x", "metadata": {"a": NaN}}', "NaN is not JSON"),
        ('{"text": "x", "metadata": {"a": -Infinity}}', "-Infinity is not JSON"),
        ('{"text": "x", "metadata": {"a": 1e400}}', "1e400 is too large"),
    ],
)
def test_json_the_service_would_refuse_is_refused_naming_the_line(
    tmp_path: Path, line: str, said: str
) -> None:
    path = tmp_path / "odd.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(BadInput) as raised:
        list(read_records(path, "jsonl"))
    assert f"{path} line 2: not valid JSON" in str(raised.value) and said in str(raised.value)


def test_a_bad_url_is_one_line_not_a_traceback() -> None:
    from cli.client import ApiClient, CliError

    with pytest.raises(CliError) as raised:
        ApiClient("http://[::1", None)
    assert "is not an address" in str(raised.value)
