"""`insight`: the command line of insight-stream.

    insight submit tickets.jsonl            # send, then follow with a progress bar
    insight submit reviews.csv --text-column body --no-wait
    insight submit tickets.jsonl --task support-ticket-triage --max-cost 5
    insight estimate tickets.jsonl --task task.json   # cost and duration, nothing runs
    insight status JOB | insight jobs | insight cancel JOB
    insight results JOB -o out.csv          # or out.jsonl; --failed for failures only

`--url` (INSIGHT_URL, default http://127.0.0.1:8000) and `--api-key` (INSIGHT_API_KEY)
come before the command. Errors print one line, `error: ...`, and exit with status 1.
"""

from __future__ import annotations

import csv
import functools
import json
import sys
import time
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from cli.client import ApiClient, CliError
from cli.records import BadInput, Format, detect_format, read_records
from schemas.export import CSV_COLUMNS, csv_row

DEFAULT_URL = "http://127.0.0.1:8000"
POLL_SECONDS = 0.5
# Upload chunks of about this many bytes (records are streamed, never held all at once).
_CHUNK_BYTES = 64 * 1024

app = typer.Typer(
    help="Submit batches to insight-stream, follow them, export results, cancel jobs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console(highlight=False, soft_wrap=True)
# Piped or logged (no terminal), the final progress line gets room for every column.
err = Console(
    stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else 120
)

P = ParamSpec("P")
R = TypeVar("R")


def _one_line_errors(command: Callable[P, R]) -> Callable[P, R]:
    """CliError and BadInput print `error: ...` and exit 1, no traceback."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except (CliError, BadInput) as exc:
            err.print(f"error: {exc}", markup=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return run


@app.callback()
def main(
    ctx: typer.Context,
    url: Annotated[
        str, typer.Option(envvar="INSIGHT_URL", help="The service's address.")
    ] = DEFAULT_URL,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="INSIGHT_API_KEY", help="A secret from the service's API_KEYS."),
    ] = None,
) -> None:
    client = ApiClient(url, api_key)
    ctx.call_on_close(client.close)
    ctx.obj = client


def _client(ctx: typer.Context) -> ApiClient:
    client: ApiClient = ctx.obj
    return client


TASK_OPTION = typer.Option(
    help="A preset name (support-ticket-triage, review-insights) or a JSON file "
    '{"instructions", "output_schema", "model"?, "max_tokens"?}.'
)
MAX_COST_OPTION = typer.Option(help="Spending cap of the job in USD.")


class Priority(StrEnum):
    high = "high"
    normal = "normal"
    low = "low"


PRIORITY_OPTION = typer.Option(
    help="The job's share of the budget while other jobs wait: high gets 4 times normal's, "
    "low only what nobody else waits for."
)


class Lane(StrEnum):
    live = "live"
    batch = "batch"
    auto = "auto"


LANE_OPTION = typer.Option(
    help="live: one call per record, full price; batch: the provider's Message Batches API, "
    "half the price, results as each provider batch ends (usually within an hour); auto "
    "(the server's default): batch when the job would take long live, or with --deadline "
    "the cheapest lane expected to make it."
)
DEADLINE_OPTION = typer.Option(
    help="ISO 8601 date-time the job should be done by, e.g. 2026-12-07T18:00:00Z."
)


def _job_options(
    task: str | None,
    max_cost: float | None,
    priority: Priority | None = None,
    lane: Lane | None = None,
    deadline: str | None = None,
) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if priority is not None:
        options["priority"] = priority.value
    if lane is not None:
        options["lane"] = lane.value
    if deadline is not None:
        options["deadline"] = deadline
    if task is not None:
        path = Path(task)
        if path.suffix == ".json" or path.is_file():
            try:
                options["task"] = json.loads(path.read_text())
            except OSError as exc:
                raise CliError(f"{task}: {exc.strerror}") from None
            except json.JSONDecodeError as exc:
                raise CliError(f"{task}: not JSON: {exc}") from None
        else:
            options["task"] = task
    if max_cost is not None:
        options["max_cost_usd"] = max_cost
    return options


def _checked_records(
    file: Path, fmt: Format | None, text_column: str, id_column: str | None
) -> tuple[Callable[[], Iterator[dict[str, Any]]], int]:
    if not file.is_file():
        raise CliError(f"{file}: no such file")
    kind = detect_format(file, fmt)

    def records() -> Iterator[dict[str, Any]]:
        try:
            yield from read_records(file, kind, text_column=text_column, id_column=id_column)
        except OSError as exc:
            raise CliError(f"{file}: {exc.strerror}") from None

    # First pass: every line is checked (and counted) before anything is sent.
    count = sum(1 for _ in records())
    if count == 0:
        raise CliError(f"{file}: no records")
    return records, count


def _estimate_line(est: dict[str, Any]) -> str:
    cap = f", cap ${est['max_cost_usd']:.2f}" if est.get("max_cost_usd") else ""
    return (
        f"estimate: {est['records']} records, {est['input_tokens']:,} input + "
        f"{est['output_tokens']:,} output tokens, ${est['cost_usd']:.4f} "
        f"(${est['cost_usd_without_caching']:.4f} without caching){cap}, "
        f"~{est['duration_seconds']:.0f} s; task {est['task']} on {est['model']}"
    )


@app.command()
@_one_line_errors
def estimate(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="As for submit.")],
    text_column: Annotated[str, typer.Option(help="CSV: the column holding the text.")] = "text",
    id_column: Annotated[str | None, typer.Option(help="CSV: the record id column.")] = None,
    fmt: Annotated[Format | None, typer.Option("--format", help="jsonl, csv or text.")] = None,
    task: Annotated[str | None, TASK_OPTION] = None,
    max_cost: Annotated[float | None, MAX_COST_OPTION] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The estimate as JSON.")] = False,
) -> None:
    """What FILE would cost and take as a batch; nothing runs, no model is called."""
    client = _client(ctx)
    records, _ = _checked_records(file, fmt, text_column, id_column)
    est = client.submit_ndjson(
        _ndjson_chunks(records(), _job_options(task, max_cost)), estimate=True
    )
    if as_json:
        out.print(json.dumps(est), markup=False)
    else:
        out.print(_estimate_line(est), markup=False)


def _ndjson_chunks(
    records: Iterator[dict[str, Any]], options: dict[str, Any] | None = None
) -> Iterator[bytes]:
    chunk = bytearray()
    if options:
        chunk += json.dumps({"job": options}, ensure_ascii=False).encode() + b"\n"
    for record in records:
        chunk += json.dumps(record, ensure_ascii=False).encode() + b"\n"
        if len(chunk) >= _CHUNK_BYTES:
            yield bytes(chunk)
            chunk.clear()
    if chunk:
        yield bytes(chunk)


@app.command()
@_one_line_errors
def submit(
    ctx: typer.Context,
    file: Annotated[
        Path, typer.Argument(help="JSONL, CSV (header row) or text (a record a line).")
    ],
    text_column: Annotated[str, typer.Option(help="CSV: the column holding the text.")] = "text",
    id_column: Annotated[
        str | None, typer.Option(help="CSV: the column holding the record id (default: id).")
    ] = None,
    fmt: Annotated[
        Format | None,
        typer.Option("--format", help="jsonl, csv or text (default: from the file's suffix)."),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Follow the job until it ends.")
    ] = True,
    task: Annotated[str | None, TASK_OPTION] = None,
    max_cost: Annotated[float | None, MAX_COST_OPTION] = None,
    priority: Annotated[Priority | None, PRIORITY_OPTION] = None,
    lane: Annotated[Lane | None, LANE_OPTION] = None,
    deadline: Annotated[str | None, DEADLINE_OPTION] = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask before an expensive job.")
    ] = False,
    confirm_above: Annotated[
        float,
        typer.Option(
            envvar="INSIGHT_CONFIRM_ABOVE_USD",
            help="Ask for confirmation when the estimate is above this many USD.",
        ),
    ] = 1.0,
) -> None:
    """Send FILE as one batch (streamed), then follow it with a live progress bar. The
    estimate is asked first; above --confirm-above USD you are asked to go on (--yes)."""
    client = _client(ctx)
    records, count = _checked_records(file, fmt, text_column, id_column)
    options = _job_options(task, max_cost, priority, lane, deadline)
    estimate = client.submit_ndjson(_ndjson_chunks(records(), options), estimate=True)
    err.print(_estimate_line(estimate), markup=False)
    if estimate["cost_usd"] > confirm_above and not yes:
        if not sys.stdin.isatty():
            raise CliError(
                f"the estimate (${estimate['cost_usd']:.4f}) is above --confirm-above "
                f"(${confirm_above:.2f}); pass --yes to submit"
            )
        if not typer.confirm("submit?", err=True):
            raise typer.Exit(1)
    accepted = client.submit_ndjson(_ndjson_chunks(records(), options))
    job_id = accepted["job_id"]
    if not wait:
        out.print(job_id)
        return
    err.print(f"submitted {count} records from {file} as job {job_id}")
    _follow(client, job_id)


def _finished(body: dict[str, Any]) -> bool:
    if body["status"] in ("completed", "failed"):
        return True
    done = body["completed_count"] + body["failed_count"] + body.get("skipped_count", 0)
    stopping = body["status"] in ("cancelled", "budget_exhausted")
    return stopping and done >= (body["total_records"] or 0)


def _follow(client: ApiClient, job_id: str) -> None:
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("failed {task.fields[failed]}"),
        TextColumn("{task.fields[rate]:.1f} rec/s"),
        TextColumn("{task.fields[tokens]:,} tokens"),
        TextColumn("${task.fields[cost]:.4f}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
    )
    started = time.monotonic()
    first_done: int | None = None
    try:
        with progress:
            task = progress.add_task("running", total=None, failed=0, rate=0.0, tokens=0, cost=0.0)
            while True:
                body = client.status(job_id, limit="0")
                done = body["completed_count"] + body["failed_count"] + body["skipped_count"]
                first_done = done if first_done is None else first_done
                elapsed = time.monotonic() - started
                rate = (done - first_done) / elapsed if elapsed > 0 else 0.0
                progress.update(
                    task,
                    description=body["status"],
                    total=body["total_records"],
                    completed=done,
                    failed=body["failed_count"],
                    rate=rate,
                    tokens=body["total_tokens_used"],
                    cost=body["estimated_cost"],
                )
                if _finished(body):
                    break
                time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        err.print(f"stopped following; the job goes on: insight status {job_id}")
        raise typer.Exit(130) from None
    _print_outcome(body, time.monotonic() - started)


def _print_outcome(body: dict[str, Any], seconds: float) -> None:
    out.print(
        f"{body['status']}: job {body['job_id']}: {body['completed_count']} succeeded, "
        f"{body['failed_count']} failed, {body['skipped_count']} skipped of "
        f"{body['total_records']}; {body['total_tokens_used']:,} tokens, "
        f"${body['estimated_cost']:.6f}; {seconds:.1f} s"
    )
    out.print(f"results: insight results {body['job_id']} -o results.jsonl (or .csv)")


@app.command()
@_one_line_errors
def status(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """A job's status and counters."""
    body = _client(ctx).status(job_id, limit="0")
    body.pop("results", None)
    if as_json:
        out.print(json.dumps(body, indent=2), markup=False)
        return
    table = Table(show_header=False, box=None)
    for key, value in body.items():
        if value is not None:  # unset fields (no task, no cap, not cancelled) are left out
            table.add_row(key, _status_value(value))
    out.print(table)


def _status_value(value: Any) -> str:
    """One status field as the table shows it: yes/no, `k=v, ...` for an object."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_status_value(v)}" for k, v in value.items())
    return str(value)


@app.command()
@_one_line_errors
def jobs(ctx: typer.Context) -> None:
    """Every job the service holds (that your key may see)."""
    body = _client(ctx).jobs()
    header = ("job", "status", "done", "failed", "skipped", "tokens", "cost $", "created")
    rows = []
    for job in body["jobs"]:
        done = job["completed_count"] + job["failed_count"] + job["skipped_count"]
        rows.append(
            (
                job["job_id"],
                job["status"],
                f"{done}/{job['total_records']}",
                str(job["failed_count"]),
                str(job["skipped_count"]),
                str(job["total_tokens_used"]),
                f"{job['estimated_cost']:.6f}",
                (job["created_at"] or "")[:19],
            )
        )
    if not out.is_terminal:
        # Piped: tab-separated lines, for grep, cut and spreadsheets.
        for row in (header, *rows):
            typer.echo("\t".join(row))
        return
    table = Table(*header)
    table.columns[0].no_wrap = True
    for row in rows:
        table.add_row(*row)
    out.print(table)
    out.print(f"{body['count']} jobs")


@app.command()
@_one_line_errors
def results(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="out.jsonl or out.csv; '-' for stdout.")
    ] = Path("-"),
    failed: Annotated[bool, typer.Option(help="Only records that failed or were skipped.")] = False,
) -> None:
    """Export a job's results (streamed) as JSONL, or as CSV when OUTPUT ends in .csv."""
    client = _client(ctx)
    as_csv = output.suffix.lower() == ".csv"
    count = 0
    with client.results_lines(job_id, failed) as lines:
        handle = sys.stdout if str(output) == "-" else output.open("w", newline="")
        try:
            writer = csv.writer(handle) if as_csv else None
            if writer is not None:
                writer.writerow(CSV_COLUMNS)
            for line in lines:
                if writer is not None:
                    writer.writerow(csv_row(json.loads(line)))
                else:
                    handle.write(line.decode() + "\n")
                count += 1
        finally:
            if handle is not sys.stdout:
                handle.close()
    if str(output) != "-":
        out.print(f"wrote {count} results to {output}")


@app.command()
@_one_line_errors
def cancel(
    ctx: typer.Context, job_id: Annotated[str, typer.Argument(help="The job's id.")]
) -> None:
    """Cancel a job: records not started are skipped, calls in flight finish."""
    body = _client(ctx).cancel(job_id)
    out.print(
        f"cancelled job {job_id}: {body['completed_count']} succeeded, "
        f"{body['failed_count']} failed, {body['skipped_count']} skipped so far of "
        f"{body['total_records']} (calls in flight finish; the rest are skipped)"
    )


def run() -> None:
    """The `insight` console script."""
    app()
