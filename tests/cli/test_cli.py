"""The `insight` console script, run as a subprocess against the real service."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from schemas.export import CSV_COLUMNS
from simulator.testing import SimulatorHandle
from stream_app.running.embedded import free_port
from tests.conftest import StartService
from tests.support import status, wait_until

INSIGHT = Path(sys.executable).parent / "insight"


def insight(*args: str, url: str, api_key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSIGHT_")}
    env["INSIGHT_URL"] = url
    if api_key is not None:
        env["INSIGHT_API_KEY"] = api_key
    return subprocess.run(
        [str(INSIGHT), *args], env=env, capture_output=True, text=True, timeout=180
    )


def ticket(i: int) -> str:
    return f"Ticket {i}: the checkout page times out when paying by card. The customer retried."


def job_id_from(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("completed: job ", "cancelled: job ", "budget_exhausted: job ")):
            return line.split("job ", 1)[1].split(":", 1)[0]
    raise AssertionError(f"no outcome line in {output!r}")


def test_submit_jsonl_csv_and_text_follow_export_and_cancel(
    start: StartService, simulator: SimulatorHandle, tmp_path: Path
) -> None:
    simulator.configure(latency_ms=50)
    service = start()
    url = service.base_url

    # JSONL, followed to the end with the progress bar.
    data = tmp_path / "tickets.jsonl"
    with data.open("w") as out:
        for i in range(12):
            record: dict[str, Any] = {"text": ticket(i)}
            if i == 3:
                record["id"] = "T-3"
            out.write(json.dumps(record) + "\n")
            if i == 5:
                out.write("\n")  # blank lines are skipped
    done = insight("submit", str(data), url=url)
    assert done.returncode == 0, done.stderr
    job_id = job_id_from(done.stdout)
    assert f"completed: job {job_id}: 12 succeeded, 0 failed, 0 skipped of 12" in done.stdout
    assert f"submitted 12 records from {data} as job {job_id}" in done.stderr

    # Export as JSONL and as CSV: every index once, in order.
    exported = tmp_path / "out.jsonl"
    wrote = insight("results", job_id, "-o", str(exported), url=url)
    assert wrote.returncode == 0, wrote.stderr
    assert f"wrote 12 results to {exported}" in wrote.stdout
    rows = [json.loads(line) for line in exported.read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(12))
    assert rows[3]["record_id"] == "T-3" and all(r["success"] for r in rows)
    table = tmp_path / "out.csv"
    assert insight("results", job_id, "-o", str(table), url=url).returncode == 0
    with table.open(newline="") as handle:
        cells = list(csv.reader(handle))
    assert tuple(cells[0]) == CSV_COLUMNS
    assert [int(row[0]) for row in cells[1:]] == list(range(12))
    by_name = [dict(zip(CSV_COLUMNS, row, strict=True)) for row in cells[1:]]
    assert by_name[3]["record_id"] == "T-3"
    assert by_name[0]["summary"].startswith("Ticket 0") and by_name[0]["sentiment"]
    assert int(by_name[0]["tokens_used"]) == rows[0]["tokens_used"] > 0

    # CSV with the text in another column, a quoted multi-line cell, --no-wait.
    sheet = tmp_path / "reviews.csv"
    with sheet.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ticket", "body", "channel"])
        writer.writerow(["R-1", "Great support,\nfast answer and a friendly agent.", "mail"])
        writer.writerow(["R-2", "The refund took three weeks.", "phone"])
    sent = insight(
        "submit",
        str(sheet),
        "--text-column",
        "body",
        "--id-column",
        "ticket",
        "--no-wait",
        url=url,
    )
    assert sent.returncode == 0, sent.stderr
    csv_job = sent.stdout.strip()
    assert len(csv_job) == 32 and sent.stdout.count("\n") == 1  # the job id, alone
    with service.client() as client:
        body = wait_until(
            lambda: (b := status(client, csv_job))["status"] == "completed" and b,
            timeout=60,
            what="the CSV job",
        )
    assert [r["record_id"] for r in body["results"]] == ["R-1", "R-2"]
    texts = [r["text"] for r in simulator.stats()["requests"]]
    assert any(t.startswith("Great support,\nfast answer") for t in texts)

    # Plain text: one record a line.
    notes = tmp_path / "notes.txt"
    notes.write_text("The app crashes on start.\n\nLogin works again, thanks!\n")
    assert "2 succeeded" in insight("submit", str(notes), url=url).stdout

    # status and jobs.
    shown = insight("status", job_id, "--json", url=url)
    assert json.loads(shown.stdout)["completed_count"] == 12
    # As a table: a row per field that is set, flags as yes/no.
    rows = status_rows(job_id, url)
    assert rows["status"] == "completed" and rows["completed_count"] == "12"
    assert rows["stale"] == "no"
    assert "cancelled_at" not in rows and "max_cost_usd" not in rows
    listed = insight("jobs", url=url).stdout.splitlines()  # piped: tab-separated
    assert listed[0].split("\t")[:4] == ["job", "status", "lane", "done"]
    by_job = {line.split("\t")[0]: line.split("\t") for line in listed[1:]}
    assert len(by_job) == 3
    assert by_job[job_id][1:6] == ["completed", "live", "12/12", "0", "0"]
    assert by_job[csv_job][1:4] == ["completed", "live", "2/2"]

    # Cancel a running job, then again (idempotent); a finished job cannot be cancelled.
    # 600 records at 400 ms each, 5 at a time: about 48 s, far longer than the cancel takes
    # even on a loaded machine (60 records once finished before the CLI could cancel).
    simulator.configure(latency_ms=400)
    many = tmp_path / "many.txt"
    many.write_text("".join(ticket(i) + "\n" for i in range(600)))
    sent = insight("submit", str(many), "--no-wait", "--yes", url=url)
    assert sent.returncode == 0, sent.stderr
    running = sent.stdout.strip()
    with service.client() as client:
        wait_until(
            lambda: status(client, running, params={"limit": "0"})["completed_count"] > 0,
            timeout=60,
            what="the job to start",
        )
    # A running job also shows what the provider answers (on one line) and whether it moves.
    rows = status_rows(running, url)
    assert rows["status"] == "running" and rows["stalled"] == "no"
    assert rows["provider"].startswith("state=available, refused_calls_total=")
    cancelled = insight("cancel", running, url=url)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.startswith(f"cancelled job {running}: ")
    assert insight("cancel", running, url=url).returncode == 0
    refused = insight("cancel", job_id, url=url)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        f"error: job '{job_id}' is already completed (job_finished, HTTP 409)"
    )


def status_rows(job_id: str, url: str) -> dict[str, str]:
    """`insight status` as printed (two columns), as a mapping."""
    shown = insight("status", job_id, url=url)
    assert shown.returncode == 0, shown.stderr
    return dict(
        (key, value.strip())
        for key, value in (line.strip().split(None, 1) for line in shown.stdout.splitlines())
    )


def test_clear_errors_and_exit_codes(
    start: StartService, simulator: SimulatorHandle, tmp_path: Path
) -> None:
    service = start(api_keys="team:s3cret-key")
    url = service.base_url
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"text": ticket(1)}) + "\n")

    missing = insight("submit", str(tmp_path / "nope.jsonl"), url=url, api_key="s3cret-key")
    assert missing.returncode == 1
    assert missing.stderr == f"error: {tmp_path / 'nope.jsonl'}: no such file\n"

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "also fine"}\n{"text": "broken"\n')
    broken = insight("submit", str(bad), url=url, api_key="s3cret-key")
    assert broken.returncode == 1
    assert broken.stderr.startswith(f"error: {bad} line 3: not valid JSON")
    assert broken.stderr.count("\n") == 1

    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"text": "fine"}\n{"text": "   "}\n')
    refused = insight("submit", str(blank), url=url, api_key="s3cret-key")
    assert refused.returncode == 1
    assert refused.stderr == (f"error: {blank} line 2: text: text must be a non-empty string\n")

    sheet = tmp_path / "no-column.csv"
    sheet.write_text("id,body\n1,hello\n")
    no_column = insight("submit", str(sheet), url=url, api_key="s3cret-key")
    assert no_column.returncode == 1
    assert "line 1: no column 'text' (columns: id, body); use --text-column" in no_column.stderr

    unauthorized = insight("submit", str(good), url=url, api_key="wrong")
    assert unauthorized.returncode == 1
    assert unauthorized.stderr == (
        "error: unauthorized (HTTP 401): give a valid key with --api-key or INSIGHT_API_KEY\n"
    )
    nobody = f"http://127.0.0.1:{free_port()}"
    unreachable = insight("jobs", url=nobody)
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith(f"error: cannot reach the service at {nobody}")

    # None of that reached the provider; with the right key it works.
    assert simulator.stats()["requests"] == []
    ok = insight("submit", str(good), url=url, api_key="s3cret-key")
    assert ok.returncode == 0, ok.stderr
    assert "1 succeeded, 0 failed, 0 skipped of 1" in ok.stdout


def test_a_job_cut_short_by_its_cap_exits_2_then_retry_and_delete(
    start: StartService, simulator: SimulatorHandle, tmp_path: Path
) -> None:
    """`submit` exits 2 when the job it followed ended before every record was sent (here
    its cap); `retry --skipped` sends the skipped ones (a retry round is held to the tenant's
    budget, not the job's cap); `delete` removes the job (then `status` is a clean error)."""
    service = start()
    url = service.base_url
    data = tmp_path / "tickets.jsonl"
    data.write_text("".join(json.dumps({"text": ticket(i)}) + "\n" for i in range(12)))

    capped = insight("submit", str(data), "--max-cost", "0.001", "--yes", url=url)
    assert capped.returncode == 2, (capped.stdout, capped.stderr)
    job_id = job_id_from(capped.stdout)
    client = service.client()
    body = status(client, job_id)
    assert body["status"] == "budget_exhausted"
    skipped = body["skipped_count"]
    assert skipped > 0 and body["completed_count"] + skipped == 12, body
    assert f"{body['completed_count']} succeeded, 0 failed, {skipped} skipped of 12" in (
        capped.stdout
    )

    again = insight("retry", job_id[:12], "--skipped", url=url)
    assert again.returncode == 0, again.stderr
    assert f"retry 1 sends {skipped} records again" in again.stdout
    wait_until(
        lambda: status(client, job_id)["completed_count"] == 12,
        timeout=60,
        what="the skipped records to be sent again",
    )
    watched = insight("watch", job_id, url=url)
    assert watched.returncode == 0, watched.stderr
    assert "12 succeeded, 0 failed, 0 skipped of 12" in watched.stdout

    gone = insight("delete", job_id[:12], "--yes", url=url)
    assert gone.returncode == 0, gone.stderr
    assert gone.stdout.startswith("deleted job ")
    after = insight("status", job_id, url=url)
    assert after.returncode == 1
    assert after.stderr.startswith("error: "), after.stderr
    client.close()


def test_estimate_prices_the_lane_asked_for_and_jobs_shows_each_lane(
    start: StartService, simulator: SimulatorHandle, tmp_path: Path
) -> None:
    simulator.configure(batch_processing_seconds=30.0)
    service = start(claude_model="claude-sonnet-4-5")
    url = service.base_url
    data = tmp_path / "tickets.jsonl"
    data.write_text("".join(json.dumps({"text": ticket(i)}) + "\n" for i in range(8)))

    def estimated(*flags: str) -> dict[str, Any]:
        done = insight("estimate", str(data), "--json", *flags, url=url)
        assert done.returncode == 0, done.stderr
        answer: dict[str, Any] = json.loads(done.stdout)
        return answer

    live, batch = estimated("--lane", "live"), estimated("--lane", "batch")
    assert (live["lane"], batch["lane"]) == ("live", "batch")
    assert batch["live_cost_usd"] == live["cost_usd"]
    assert 0 < batch["cost_usd"] < live["cost_usd"] * 0.6
    # A small job on `auto` (the default) is priced on the live lane, as it would run.
    assert estimated()["lane"] == "live"
    # The line says which lane it priced, and the saving.
    line = insight("estimate", str(data), "--lane", "batch", url=url)
    assert line.returncode == 0, line.stderr
    assert f"${batch['cost_usd']:.4f}" in line.stdout and "on the batch lane" in line.stdout
    assert f"${batch['saving_usd']:.4f} less than live" in line.stdout
    assert "on the live lane" in insight("estimate", str(data), url=url).stdout
    wrong = insight("estimate", str(data), "--lane", "cheap", url=url)
    assert wrong.returncode == 2 and "cheap" in wrong.stderr

    # `insight jobs` names each job's lane.
    sent = insight("submit", str(data), "--lane", "batch", "--no-wait", url=url)
    assert sent.returncode == 0, sent.stderr
    batch_job = sent.stdout.strip()
    done = insight("submit", str(data), "--lane", "live", url=url)
    assert done.returncode == 0, done.stderr
    live_job = job_id_from(done.stdout)
    listed = insight("jobs", url=url).stdout.splitlines()
    by_job = {line.split("\t")[0]: line.split("\t") for line in listed[1:]}
    assert by_job[batch_job][2] == "batch" and by_job[live_job][2] == "live"
