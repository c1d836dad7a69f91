"""The web page at /, in a real headless Chromium (Debian's package) driven by Playwright,
against the real service: upload, watch the bar reach 100%, download the CSV, filter
failures, cancel a running job."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Dialog, Page, expect, sync_playwright

from schemas.export import CSV_COLUMNS
from simulator.testing import SimulatorHandle
from tests.conftest import StartService
from tests.support import status, wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def browser() -> Iterator[Browser]:
    # `make test` installs Debian's chromium when it is missing (Playwright's own browser
    # download is not reachable here).
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def text(i: int, fail: bool = False) -> str:
    marker = " [[sim:fail-400]]" if fail else ""
    return f"Call note {i}: the router drops the connection every evening at 9 pm.{marker}"


def upload(page: Page, path: Path, text_column: str | None = None) -> str:
    page.set_input_files("#file", str(path))
    if text_column is not None:
        page.fill("#text-column", text_column)
    page.click("#upload")
    page.wait_for_url("**/#/jobs/*")
    return page.url.rsplit("/", 1)[1]


def test_upload_watch_download_filter_and_cancel(
    start: StartService, simulator: SimulatorHandle, browser: Browser, tmp_path: Path
) -> None:
    simulator.configure(latency_ms=80)
    service = start(batch_max_concurrent_llm_calls=4)
    page = browser.new_page(accept_downloads=True)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(service.base_url + "/")
    expect(page.locator("#no-jobs")).to_be_visible()

    # Upload a JSONL file; the job page follows it live to 100%.
    data = tmp_path / "notes.jsonl"
    data.write_text(
        "".join(json.dumps({"text": text(i, fail=i in (4, 11))}) + "\n" for i in range(20))
    )
    job_id = upload(page, data)
    expect(page.locator("#job-id")).to_have_text(job_id)
    expect(page.locator("#job-percent")).to_have_text("100%", timeout=60_000)
    expect(page.locator("#job-status")).to_have_text("completed")
    expect(page.locator("#live")).to_have_text("finished")
    expect(page.locator("#results tbody tr")).to_have_count(20)
    expect(page.locator("#count-completed")).to_have_text("18")
    expect(page.locator("#count-failed")).to_have_text("2")
    expect(page.locator("#cancel")).to_be_disabled()

    # Failures only.
    page.check("#failures-only")
    expect(page.locator("#results tbody tr")).to_have_count(2)
    indices = page.locator("#results tbody tr td:first-child").all_inner_texts()
    assert indices == ["4", "11"]
    page.uncheck("#failures-only")

    # Download the CSV: every result, with the API's columns.
    with page.expect_download() as downloading:
        page.click("#download-csv")
    download = downloading.value
    assert download.suggested_filename == f"{job_id}.csv"
    with open(download.path(), newline="") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [int(row[0]) for row in rows[1:]] == list(range(20))
    assert [row[2] for row in rows[1:]].count("false") == 2

    # The job list shows it, with a full bar.
    page.click("text=all jobs")
    row = page.locator(f'tr[data-job-id="{job_id}"]')
    expect(row.locator(".status")).to_have_text("completed")
    expect(row.locator(".lane")).to_have_text("live")
    expect(row.locator(".succeeded")).to_have_text("18/20")
    assert row.locator(".bar").get_attribute("style") == "width: 100%;"

    # A CSV upload, slow enough to cancel from its page while it runs.
    simulator.configure(latency_ms=500)
    sheet = tmp_path / "calls.csv"
    with sheet.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "note"])
        for i in range(60):
            writer.writerow([f"c{i}", text(i)])
    running = upload(page, sheet, text_column="note")
    expect(page.locator("#job-status")).to_have_text("running", timeout=30_000)
    expect(page.locator("#results tbody tr").first).to_be_visible(timeout=30_000)
    # Cancel asks first: dismissed, nothing happens; accepted, the job is cancelled.
    asked: list[str] = []

    def answer(dialog: Dialog, accept: bool) -> None:
        asked.append(dialog.message)
        if accept:
            dialog.accept()
        else:
            dialog.dismiss()

    page.once("dialog", lambda dialog: answer(dialog, False))
    page.click("#cancel")
    assert asked and asked[0].startswith(f"Cancel job {running[:12]}?")
    expect(page.locator("#job-status")).to_have_text("running")
    expect(page.locator("#cancel")).to_be_enabled()
    page.once("dialog", lambda dialog: answer(dialog, True))
    page.click("#cancel")
    expect(page.locator("#job-status")).to_have_text("cancelled")
    expect(page.locator("#job-percent")).to_have_text("100%", timeout=60_000)
    expect(page.locator("#live")).to_have_text("finished")
    with service.client() as client:
        body = wait_until(
            lambda: (b := status(client, running))["status"] == "cancelled" and b,
            timeout=10,
            what="cancelled",
        )
    assert body["skipped_count"] > 0
    assert body["completed_count"] + body["failed_count"] + body["skipped_count"] == 60
    skipped = page.locator("#count-skipped").inner_text()
    assert int(skipped) == body["skipped_count"]
    # Said in words: a cancelled job at 100% is mostly skipped.
    expect(page.locator("#job-outcome")).to_have_text(
        f"cancelled: {body['completed_count']} succeeded, {body['failed_count']} failed, "
        f"{body['skipped_count']} skipped of 60"
    )

    # A CSV without the named column: the error names the page's field.
    page.click("text=all jobs")
    page.set_input_files("#file", str(sheet))
    page.fill("#text-column", "body")
    page.click("#upload")
    expect(page.locator("#error")).to_contain_text('"CSV text column"')
    expect(page.locator("#error")).not_to_contain_text("?text_column=")

    # The icon browsers ask for on their own.
    icon = page.request.get(service.base_url + "/favicon.ico")
    assert icon.status == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert errors == []

    # The API's docs render offline (Swagger UI from the package, no CDN).
    page.goto(service.base_url + "/docs")
    expect(page.locator(".swagger-ui .title")).to_contain_text("insight-stream", timeout=30_000)


def test_a_batch_lane_upload_shows_its_provider_batches(
    start: StartService, simulator: SimulatorHandle, browser: Browser, tmp_path: Path
) -> None:
    simulator.configure(batch_processing_seconds=1.0)
    service = start(
        claude_model="claude-sonnet-4-5",
        batch_lane_window_seconds="1",
        batch_lane_poll_seconds="0.2",
    )
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(service.base_url + "/")
    data = tmp_path / "notes.jsonl"
    data.write_text("".join(json.dumps({"text": text(i)}) + "\n" for i in range(12)))
    page.select_option("#lane", "batch")
    job_id = upload(page, data)
    expect(page.locator("#job-id")).to_have_text(job_id)
    expect(page.locator("#job-percent")).to_have_text("100%", timeout=60_000)
    expect(page.locator("#job-lane")).to_have_text("batch")
    expect(page.locator("#job-lane-reason")).to_have_text(
        "asked for the batch lane · provider batches: 0 in progress, 1 ended", timeout=10_000
    )
    assert errors == []
