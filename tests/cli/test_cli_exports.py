"""Exports that drop nothing, and a CLI that says what is wrong in one line: run as a
subprocess against the real service."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from schemas.export import CSV_COLUMNS
from simulator.testing import SimulatorHandle
from stream_app.running.embedded import free_port
from tests.cli.test_cli import INSIGHT, insight, job_id_from
from tests.conftest import StartService

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TASK_FIELDS = ("product_area", "urgency", "refund_requested")


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _one_line_error(done: subprocess.CompletedProcess[str], starts: str) -> None:
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"error: {starts}"), done.stderr


def test_exports_keep_task_fields_and_input_metadata_and_neutralise_formulas(
    start: StartService, tmp_path: Path
) -> None:
    service = start()
    url = service.base_url
    tickets = tmp_path / "tickets.jsonl"
    formula = {
        "id": "=1+1",
        "text": '=HYPERLINK("http://evil.example","click") the invoice page is blank.',
        "metadata": {"source": "@web"},
    }
    tickets.write_text(
        (EXAMPLES / "tickets.jsonl").read_text() + json.dumps(formula) + "\n", encoding="utf-8"
    )
    done = insight("submit", str(tickets), "--task", str(EXAMPLES / "triage.json"), url=url)
    assert done.returncode == 0, done.stderr
    job_id = job_id_from(done.stdout)
    total = len(tickets.read_text().splitlines())

    table = tmp_path / "out.csv"
    wrote = insight("results", job_id[:12], "-o", str(table), url=url)  # a short id
    assert wrote.returncode == 0, wrote.stderr
    assert f"wrote {total} results to {table}" in wrote.stdout
    rows = _csv(table)
    assert len(rows) == total
    assert tuple(rows[0])[4:7] == TASK_FIELDS and tuple(rows[0])[-1] == "input_metadata"
    assert "summary" not in rows[0]
    for row in rows:
        assert row["success"] == "true"
        assert row["urgency"] in ("low", "medium", "high") and row["product_area"]
        assert row["refund_requested"] in ("true", "false")
    assert json.loads(rows[0]["input_metadata"]) == {"source": "web"}
    # Spreadsheet safety: a formula-looking id or metadata is text in the CSV...
    assert rows[-1]["record_id"] == "'=1+1"
    assert rows[-1]["input_metadata"] == '{"source": "@web"}'  # JSON: starts with {
    # ...the same columns from the API...
    with service.client() as client:
        reply = client.get(f"/api/v1/batch/{job_id}/results.csv")
        assert reply.text.replace("\r\n", "\n") == table.read_text().replace("\r\n", "\n")
        # ...and JSON untouched.
        ndjson = [
            json.loads(line)
            for line in client.get(f"/api/v1/batch/{job_id}/results.ndjson").text.splitlines()
        ]
    assert ndjson[-1]["record_id"] == "=1+1"
    assert ndjson[-1]["input_metadata"] == {"source": "@web"}

    # A CSV's other columns are the record's metadata, kept with the result.
    sent = insight("submit", str(EXAMPLES / "reviews.csv"), "--text-column", "body", url=url)
    assert sent.returncode == 0, sent.stderr
    reviews = tmp_path / "reviews.jsonl"
    assert insight("results", job_id_from(sent.stdout), "-o", str(reviews), url=url).returncode == 0
    kept = [json.loads(line) for line in reviews.read_text().splitlines()]
    assert [r["input_metadata"] for r in kept][:2] == [{"stars": "5"}, {"stars": "2"}]
    assert [r["record_id"] for r in kept][:2] == ["R-1", "R-2"]
    default_csv = tmp_path / "reviews.csv"
    assert (
        insight("results", job_id_from(sent.stdout), "-o", str(default_csv), url=url).returncode
        == 0
    )
    assert tuple(_csv(default_csv)[0]) == CSV_COLUMNS
    assert json.loads(_csv(default_csv)[0]["input_metadata"]) == {"stars": "5"}

    # Output files the CLI cannot write: one line, no traceback.
    _one_line_error(
        insight("results", job_id, "-o", str(tmp_path / "out.xlsx"), url=url),
        f"-o {tmp_path / 'out.xlsx'}: unknown extension '.xlsx'; use .jsonl, .ndjson or .csv",
    )
    _one_line_error(
        insight("results", job_id, "-o", str(tmp_path / "no" / "such" / "x.csv"), url=url),
        f"-o {tmp_path / 'no' / 'such' / 'x.csv'}: No such file or directory",
    )
    assert not (tmp_path / "out.xlsx").exists()


def test_options_urls_short_ids_and_json_bodies(start: StartService, tmp_path: Path) -> None:
    service = start()
    url = service.base_url
    tickets = str(EXAMPLES / "tickets.jsonl")
    _one_line_error(
        insight("submit", tickets, "--max-cost", "-1", url=url),
        "--max-cost -1.0: must be a positive number of USD",
    )
    no_instructions = tmp_path / "task.json"
    no_instructions.write_text('{"output_schema": {"type": "object", "properties": {}}}')
    _one_line_error(
        insight("estimate", tickets, "--task", str(no_instructions), url=url),
        f"--task {no_instructions}: instructions: Field required",
    )
    loose = tmp_path / "loose.json"
    loose.write_text(
        json.dumps(
            {
                "instructions": "Rate it.",
                "output_schema": {
                    "type": "object",
                    "properties": {"n": {"type": "integer"}},
                    "if": {"required": ["n"]},
                },
            }
        )
    )
    # Refused by the service (a keyword structured outputs do not take): named as the file.
    refused = insight("estimate", tickets, "--task", str(loose), url=url)
    assert refused.returncode == 1 and refused.stderr.startswith(f"error: --task {loose}: "), (
        refused.stderr
    )
    assert "line 1" not in refused.stderr

    # The API's own body as a .json file, with its options; a file with a BOM.
    sent = insight("submit", str(EXAMPLES / "notes.json"), "--no-wait", url=url)
    assert sent.returncode == 0, sent.stderr
    notes_job = sent.stdout.strip()
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b'\xef\xbb\xbf{"text": "The page is slow."}\n')
    assert insight("submit", str(bom), url=url).returncode == 0

    # Addresses as people type them.
    port = url.rsplit(":", 1)[1]
    for typed in (f"127.0.0.1:{port}", f"{url}/api/v1", f"{url}/"):
        listed = insight("jobs", url=typed)
        assert listed.returncode == 0 and notes_job in listed.stdout, (typed, listed.stderr)

    # The page's 12-character ids.
    shown = insight("status", notes_job[:12], "--json", url=url)
    assert shown.returncode == 0, shown.stderr
    body = json.loads(shown.stdout)
    assert body["job_id"] == notes_job and body["priority"] == "high"
    assert body["max_cost_usd"] == 1.0
    _one_line_error(insight("status", "ffffffffffff", url=url), "no job 'ffffffffffff'")


def test_a_partial_export_says_so_unless_asked_for(
    start: StartService, simulator: SimulatorHandle, tmp_path: Path
) -> None:
    simulator.configure(latency_ms=300)
    service = start(batch_max_concurrent_llm_calls=2)
    url = service.base_url
    many = tmp_path / "many.txt"
    many.write_text("".join(f"Ticket {i}: the export is slow.\n" for i in range(60)))
    sent = insight("submit", str(many), "--no-wait", "--yes", url=url)
    assert sent.returncode == 0, sent.stderr
    job_id = sent.stdout.strip()
    part = tmp_path / "part.csv"
    partial = insight("results", job_id, "-o", str(part), url=url)
    assert partial.returncode == 1, partial.stdout
    assert partial.stderr.startswith(f"error: partial export: job {job_id} is "), partial.stderr
    assert "--wait" in partial.stderr and "--partial" in partial.stderr
    accepted = insight("results", job_id, "-o", str(part), "--partial", url=url)
    assert accepted.returncode == 0, accepted.stderr
    # (On a fast machine the job may have ended meanwhile: then there is nothing to warn of.)
    assert "warning: partial export" in accepted.stderr or "error" not in accepted.stderr
    whole = tmp_path / "whole.csv"
    waited = insight("results", job_id, "-o", str(whole), "--wait", url=url)
    assert waited.returncode == 0, waited.stderr
    assert f"wrote 60 results to {whole}" in waited.stdout
    assert len(_csv(whole)) == 60 and waited.stderr == ""


def test_watch_asks_again_while_the_service_does_not_answer(tmp_path: Path) -> None:
    """`insight watch` on a service that answers 503, then nothing (connection refused),
    then the job's end: it waits through both and prints the outcome. The service here is
    a stand-in HTTP server (what the CLI meets during a restart); the real service's
    answers are covered above."""
    job_id = "0123456789abcdef0123456789abcdef"
    summary = {
        "job_id": job_id,
        "status": "completed",
        "total_records": 3,
        "completed_count": 3,
        "failed_count": 0,
        "skipped_count": 0,
        "total_tokens_used": 30,
        "estimated_cost": 0.001,
    }
    answers = [503, 503, 200]
    port = free_port()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            code = answers.pop(0) if answers else 200
            body = json.dumps(
                summary
                if code == 200
                else {"error": {"code": "owner_unavailable", "message": "restarting"}}
            ).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    watching = subprocess.Popen(
        [str(INSIGHT), "--url", f"127.0.0.1:{port}", "watch", job_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.5)  # nothing listens yet: refused, asked again
        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        stdout, stderr = watching.communicate(timeout=60)
    finally:
        if watching.poll() is None:
            watching.kill()
    server.shutdown()
    assert watching.returncode == 0, stderr
    assert "restarting (owner_unavailable, HTTP 503)" in stderr
    assert stderr.count("asking again") >= 2
    assert f"completed: job {job_id}: 3 succeeded" in stdout

    # Given up on: one line saying how to follow the job again.
    gone = subprocess.run(
        [str(INSIGHT), "--url", f"127.0.0.1:{free_port()}", "watch", job_id],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "INSIGHT_FOLLOW_GIVE_UP_SECONDS": "2"},
    )
    assert gone.returncode == 1
    assert gone.stderr.splitlines()[-1].startswith("error: cannot reach the service")
    assert gone.stderr.splitlines()[-1].endswith(f"follow it again with `insight watch {job_id}`")
