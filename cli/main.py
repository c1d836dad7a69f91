"""`insight`: the command line of insight-stream.

    insight submit tickets.jsonl            # send, then follow with a progress bar
    insight submit reviews.csv --text-column body --no-wait
    insight submit tickets.jsonl --task support-ticket-triage --max-cost 5
    insight estimate tickets.jsonl --task task.json   # cost and duration, nothing runs
    insight status JOB | insight watch JOB | insight jobs | insight cancel JOB
    insight delete JOB | insight retry JOB [--failed] [--skipped]   # run failed records again
    insight results JOB -o out.csv          # or out.jsonl; --failed for failures only

JOB may be the first characters of a job's id, as the web page shows it. `--url`
(INSIGHT_URL, default http://127.0.0.1:8000) and `--api-key` (INSIGHT_API_KEY) come before
the command. Errors print one line, `error: ...`, and exit with status 1.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from pydantic import ValidationError
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

from cli.client import ApiClient, CliError, Unreachable
from cli.records import BadInput, Format, detect_format, file_options, read_records
from schemas import TaskSpec

DEFAULT_URL = "http://127.0.0.1:8000"
POLL_SECONDS = 0.5
# Following a job: how long status calls may go unanswered (the service restarts, the
# broker moves; `make run` with its embedded Kafka takes a minute or so) before giving up
# (INSIGHT_FOLLOW_GIVE_UP_SECONDS), and the longest pause between two.
FOLLOW_GIVE_UP_SECONDS = 180.0
FOLLOW_BACKOFF_MAX_SECONDS = 5.0
# `submit` and `watch` exit with this status when the job they followed ended before every
# record was sent: its spending cap was reached, or it was cancelled (1 is for errors).
EXIT_JOB_CUT_SHORT = 2
UNFINISHED_ENDS = ("budget_exhausted", "cancelled")
# What `insight results -o` writes, by the output's extension.
EXPORT_KINDS = {".jsonl": "ndjson", ".ndjson": "ndjson", ".csv": "csv"}
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
    try:
        client = ApiClient(url, api_key)
    except CliError as exc:
        err.print(f"error: {exc}", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
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
    """The job options the flags give, checked here so an error names the flag or the task
    file (not the `{"job": ...}` line the CLI sends)."""
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
            options["task"] = _task_file(path)
        else:
            options["task"] = task
    if max_cost is not None:
        if not (max_cost > 0 and max_cost != float("inf")):
            raise CliError(f"--max-cost {max_cost}: must be a positive number of USD, e.g. 5")
        options["max_cost_usd"] = max_cost
    return options


def _task_file(path: Path) -> dict[str, Any]:
    """A task file: `{"instructions", "output_schema", "model"?, "max_tokens"?}`, checked with
    the API's own model. Raises CliError naming the file and the field."""
    shape = 'a task file holds {"instructions": "...", "output_schema": {...}}'
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise CliError(f"--task {path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CliError(f"--task {path}: not JSON ({exc}); {shape}") from None
    try:
        TaskSpec.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"]) or "task"
        raise CliError(f"--task {path}: {field}: {error['msg']}; {shape}") from None
    task: dict[str, Any] = data
    return task


def _option_error(exc: CliError, options: dict[str, Any], task: str | None) -> CliError:
    """The service's refusal of the `{"job": ...}` line the CLI wrote, told as the flag
    or task file it came from."""
    message = str(exc)
    prefix = "line 1: job."
    if not (options and message.startswith(prefix)):
        return exc
    rest = message.removeprefix(prefix)
    for field, flag in (("max_cost_usd", "--max-cost"), ("priority", "--priority")):
        if rest.startswith(field):
            return CliError(f"{flag}: {rest.removeprefix(field).lstrip('.: ')}", exc.status)
    if task is not None:
        return CliError(f"--task {task}: {rest}", exc.status)
    return CliError(f"job options: {rest}", exc.status)


def _submitted(
    client: ApiClient,
    chunks: Iterator[bytes],
    options: dict[str, Any],
    task: str | None,
    estimate: bool = False,
) -> dict[str, Any]:
    try:
        return client.submit_ndjson(chunks, estimate=estimate)
    except CliError as exc:
        raise _option_error(exc, options, task) from None


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
    cap = f", cap ${est['max_cost_usd']:g}" if est.get("max_cost_usd") else ""
    lane = est.get("lane", "live")
    saving = (
        f", ${est['saving_usd']:.4f} less than live"
        if lane == "batch" and est.get("saving_usd", 0) > 0
        else ""
    )
    return (
        f"estimate: {est['records']} records, {est['input_tokens']:,} input + "
        f"{est['output_tokens']:,} output tokens, ${est['cost_usd']:.4f} "
        f"(${est.get('cost_usd_low', est['cost_usd']):.4f}-"
        f"${est.get('cost_usd_high', est['cost_usd']):.4f}; "
        f"${est['cost_usd_without_caching']:.4f} without caching){cap}, "
        f"~{est['duration_seconds']:.0f} s on the {lane} lane{saving}; "
        f"task {est['task']} on {est['model']}"
    ) + _lane_warning(est)


def _lane_warning(est: dict[str, Any]) -> str:
    """The lane's reason on a line of its own when it warns of something the figures
    assume (the batch lane with a deadline too close for a provider batch)."""
    reason = str(est.get("lane_reason") or "")
    return f"\nlane: {reason}" if "move to the live lane" in reason else ""


@app.command()
@_one_line_errors
def estimate(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="As for submit.")],
    text_column: Annotated[str, typer.Option(help="CSV: the column holding the text.")] = "text",
    id_column: Annotated[str | None, typer.Option(help="CSV: the record id column.")] = None,
    fmt: Annotated[
        Format | None, typer.Option("--format", help="jsonl, json, csv or text.")
    ] = None,
    task: Annotated[str | None, TASK_OPTION] = None,
    max_cost: Annotated[float | None, MAX_COST_OPTION] = None,
    lane: Annotated[Lane | None, LANE_OPTION] = None,
    deadline: Annotated[str | None, DEADLINE_OPTION] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The estimate as JSON.")] = False,
) -> None:
    """What FILE would cost and take as a batch; nothing runs, no model is called. The
    lane priced is --lane (auto: as a submit would choose now); the line names it."""
    client = _client(ctx)
    records, _ = _checked_records(file, fmt, text_column, id_column)
    options = {
        **file_options(file, detect_format(file, fmt)),
        **_job_options(task, max_cost, lane=lane, deadline=deadline),
    }
    est = _submitted(client, _ndjson_chunks(records(), options), options, task, estimate=True)
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
        Path,
        typer.Argument(
            help='JSONL, CSV (header row), JSON (the API\'s body, {"records": [...]}, or a '
            "list of records) or text (a record a line)."
        ),
    ],
    text_column: Annotated[str, typer.Option(help="CSV: the column holding the text.")] = "text",
    id_column: Annotated[
        str | None, typer.Option(help="CSV: the column holding the record id (default: id).")
    ] = None,
    fmt: Annotated[
        Format | None,
        typer.Option(
            "--format", help="jsonl, json, csv or text (default: from the file's suffix)."
        ),
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
    options = {
        **file_options(file, detect_format(file, fmt)),
        **_job_options(task, max_cost, priority, lane, deadline),
    }
    estimate = _submitted(client, _ndjson_chunks(records(), options), options, task, True)
    err.print(_estimate_line(estimate), markup=False)
    if estimate["cost_usd"] > confirm_above and not yes:
        if not sys.stdin.isatty():
            raise CliError(
                f"the estimate (${estimate['cost_usd']:.4f}) is above --confirm-above "
                f"(${confirm_above:.2f}); pass --yes to submit"
            )
        if not typer.confirm("submit?", err=True):
            raise typer.Exit(1)
    # With an Idempotency-Key, retried when the network fails: one job whatever happens.
    try:
        accepted = client.submit_once(lambda: _ndjson_chunks(records(), options))
    except CliError as exc:
        raise _option_error(exc, options, task) from None
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
                body = _status_retrying(client, job_id)
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


def _give_up_seconds() -> float:
    raw = os.environ.get("INSIGHT_FOLLOW_GIVE_UP_SECONDS", "")
    try:
        return float(raw) if raw.strip() else FOLLOW_GIVE_UP_SECONDS
    except ValueError:
        raise CliError(f"INSIGHT_FOLLOW_GIVE_UP_SECONDS={raw!r}: not a number of seconds") from None


def _status_retrying(client: ApiClient, job_id: str) -> dict[str, Any]:
    """The job's status; while the service does not answer (a restart, a 502/503/504), asked
    again with a growing pause for up to FOLLOW_GIVE_UP_SECONDS. Raises CliError saying how
    to follow the job again once it gives up."""
    pause = POLL_SECONDS
    give_up = time.monotonic() + _give_up_seconds()
    while True:
        try:
            return client.status(job_id, limit="0")
        except CliError as exc:
            again = isinstance(exc, Unreachable) or exc.status in (502, 503, 504)
            if not again or time.monotonic() + pause > give_up:
                raise CliError(
                    f"{exc}; the job goes on in the service: follow it again with "
                    f"`insight watch {job_id}`",
                    exc.status,
                ) from None
            err.print(f"no answer from the service ({exc}); asking again in {pause:.1f} s")
            time.sleep(pause)
            pause = min(pause * 2, FOLLOW_BACKOFF_MAX_SECONDS)


def _resolve(client: ApiClient, job_id: str) -> str:
    """A job id, or the first characters of one (the web page shows 12): the one job of
    the list whose id starts with them. Raises CliError when none or several do."""
    if len(job_id) >= 32:
        return job_id
    try:
        client.status(job_id, limit="0")
        return job_id
    except CliError as exc:
        if exc.status != 404:
            raise
    matches = [j["job_id"] for j in client.jobs()["jobs"] if j["job_id"].startswith(job_id)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise CliError(f"no job {job_id!r}, and no job's id starts with it (insight jobs)", 404)
    shown = ", ".join(matches[:5])
    raise CliError(f"{job_id!r} starts {len(matches)} jobs' ids ({shown}); give more of it")


def _print_outcome(body: dict[str, Any], seconds: float) -> None:
    out.print(
        f"{body['status']}: job {body['job_id']}: {body['completed_count']} succeeded, "
        f"{body['failed_count']} failed, {body['skipped_count']} skipped of "
        f"{body['total_records']}; {body['total_tokens_used']:,} tokens, "
        f"${body['estimated_cost']:.6f}; {seconds:.1f} s"
    )
    out.print(f"results: insight results {body['job_id']} -o results.jsonl (or .csv)")
    if body["status"] in UNFINISHED_ENDS:
        # The job ended before every record was sent (its cap, a cancel): a script that
        # goes on to use the results must be able to tell.
        raise typer.Exit(EXIT_JOB_CUT_SHORT)


@app.command()
@_one_line_errors
def status(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="The job's id, or its first characters.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """A job's status and counters."""
    client = _client(ctx)
    body = client.status(_resolve(client, job_id), limit="0")
    body.pop("results", None)
    if as_json:
        out.print(json.dumps(body, indent=2), markup=False)
        return
    table = Table(show_header=False, box=None)
    for key, value in body.items():
        if value is not None:  # unset fields (no task, no cap, not cancelled) are left out
            table.add_row(key, _status_value(value))
    out.print(table)


@app.command()
@_one_line_errors
def watch(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="The job's id, or its first characters.")],
) -> None:
    """Follow a job until it ends, with the live progress bar of `submit` (again after a
    lost connection: the job goes on in the service)."""
    client = _client(ctx)
    _follow(client, _resolve(client, job_id))


def _status_value(value: Any) -> str:
    """One status field as the table shows it: yes/no, `k=v, ...` for an object, one line
    per item for a list (a batch-lane job's provider batches), `-` for an empty one."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(
            f"{k}=({_status_value(v)})" if isinstance(v, dict) else f"{k}={_status_value(v)}"
            for k, v in value.items()
        )
    if isinstance(value, list):
        return "\n".join(_status_value(item) for item in value) or "-"
    return str(value)


@app.command()
@_one_line_errors
def jobs(ctx: typer.Context) -> None:
    """Every job the service holds (that your key may see)."""
    body = _client(ctx).jobs()
    header = ("job", "status", "lane", "done", "failed", "skipped", "tokens", "cost $", "created")
    rows = []
    for job in body["jobs"]:
        done = job["completed_count"] + job["failed_count"] + job["skipped_count"]
        rows.append(
            (
                job["job_id"],
                job["status"],
                job.get("lane") or "live",
                f"{done}/{job['total_records']}",
                str(job["failed_count"]),
                str(job["skipped_count"]),
                str(job["total_tokens_used"]),
                f"{job['estimated_cost']:.6f}",
                (job["created_at"] or "")[:19],
            )
        )
    budget = body.get("tenant_budget")
    budget_line = (
        f"budget of {budget['tenant']} for {budget['month']}: ${budget['spent_usd']:.4f} of "
        f"${budget['budget_usd']:.2f} spent"
        + (" (exhausted: new jobs refused)" if budget["exhausted"] else "")
        if budget
        else None
    )
    if not out.is_terminal:
        # Piped: tab-separated lines, for grep, cut and spreadsheets.
        for row in (header, *rows):
            typer.echo("\t".join(row))
        if budget_line:
            typer.echo(budget_line, err=True)
        return
    table = Table(*header)
    table.columns[0].no_wrap = True
    for row in rows:
        table.add_row(*row)
    out.print(table)
    out.print(f"{body['count']} jobs")
    if budget_line:
        out.print(budget_line)


@app.command()
@_one_line_errors
def results(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="The job's id, or its first characters.")],
    output: Annotated[
        Path,
        typer.Option(
            "-o", "--output", help="out.jsonl (or .ndjson) or out.csv; '-' for JSONL on stdout."
        ),
    ] = Path("-"),
    failed: Annotated[bool, typer.Option(help="Only records that failed or were skipped.")] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the job to end, then export.")
    ] = False,
    partial: Annotated[
        bool,
        typer.Option("--partial", help="Export a job that is still running without an error."),
    ] = False,
) -> None:
    """Export a job's results (streamed) as JSONL, or as CSV when OUTPUT ends in .csv (the
    API's columns: a custom task's fields, the record's input_metadata). A job still
    running gives a partial export: said on stderr, status 1 unless --partial."""
    client = _client(ctx)
    to_stdout = str(output) == "-"
    kind = "ndjson" if to_stdout else EXPORT_KINDS.get(output.suffix.lower())
    if kind is None:
        raise CliError(
            f"-o {output}: unknown extension {output.suffix or '(none)'!r}; use .jsonl, "
            ".ndjson or .csv, or '-' for JSONL on stdout"
        )
    job_id = _resolve(client, job_id)
    body = client.status(job_id, limit="0")
    if wait and not _finished(body):
        while not _finished(body):
            time.sleep(POLL_SECONDS)
            body = _status_retrying(client, job_id)
    running = not _finished(body)
    try:
        handle = sys.stdout.buffer if to_stdout else output.open("wb")
    except OSError as exc:
        raise CliError(f"-o {output}: {exc.strerror or exc}") from None
    try:
        with client.results_download(job_id, failed, kind) as chunks:
            for chunk in chunks:
                handle.write(chunk)
    except OSError as exc:
        raise CliError(f"-o {output}: {exc.strerror or exc}") from None
    finally:
        if not to_stdout:
            handle.close()
        else:
            handle.flush()
    count = None if to_stdout else _rows_in(output, kind)
    if count is not None:
        out.print(f"wrote {count} results to {output}")
    if running:
        done = body["completed_count"] + body["failed_count"] + body["skipped_count"]
        note = (
            f"partial export: job {job_id} is {body['status']} ({done} of "
            f"{body['total_records']} records had an outcome when it began)"
        )
        if not partial:
            raise CliError(f"{note}; pass --wait to export once it ends, or --partial")
        err.print(f"warning: {note}")


def _rows_in(path: Path, kind: str) -> int:
    """Results in an export just written: JSONL lines, or CSV rows after the header (a
    cell may hold line breaks, so rows are read as CSV)."""
    with path.open(newline="", encoding="utf-8") as handle:
        if kind == "csv":
            return max(sum(1 for _ in csv.reader(handle)) - 1, 0)
        return sum(1 for line in handle if line.strip())


@app.command()
@_one_line_errors
def cancel(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="The job's id, or its first characters.")],
) -> None:
    """Cancel a job: records not started are skipped, calls in flight finish."""
    client = _client(ctx)
    job_id = _resolve(client, job_id)
    body = client.cancel(job_id)
    out.print(
        f"cancelled job {job_id}: {body['completed_count']} succeeded, "
        f"{body['failed_count']} failed, {body['skipped_count']} skipped so far of "
        f"{body['total_records']} (calls in flight finish; the rest are skipped)"
    )


@app.command()
@_one_line_errors
def retry(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="The job's id, or its first characters.")],
    failed: Annotated[
        bool | None, typer.Option("--failed", help="Send the failed records again.")
    ] = None,
    skipped: Annotated[
        bool,
        typer.Option("--skipped", help="Send the records skipped by the spending cap again."),
    ] = False,
) -> None:
    """Run a finished job's failed records (the default) and/or its cap-skipped records
    again, under the same job: their new outcomes replace the old ones."""
    # --failed is the default unless only --skipped was asked for.
    client = _client(ctx)
    body = client.retry(_resolve(client, job_id), failed=failed or not skipped, skipped=skipped)
    if body["records"] == 0:
        out.print(f"job {job_id}: nothing to retry")
        return
    out.print(
        f"job {job_id}: retry {body['retry']} sends {body['records']} records again; "
        f"follow with: insight status {job_id}"
    )


@app.command()
@_one_line_errors
def delete(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="The job's id, or its first characters.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a job everywhere the service keeps it (a running job is cancelled first).
    Asks for confirmation unless --yes."""
    client = _client(ctx)
    full_id = _resolve(client, job_id)
    if not yes and not typer.confirm(f"Delete job {full_id} and all its results?"):
        err.print("not deleted", markup=False)
        raise typer.Exit(1)
    client.delete(full_id)
    out.print(f"deleted job {full_id}")


def run() -> None:
    """The `insight` console script."""
    app()
