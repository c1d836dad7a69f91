"""GET /openapi.json (OpenAPI 3.1, generated from the schemas/ models) and GET /docs
(Swagger UI, served from the `swagger-ui-py` package: no CDN needed)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import swagger_ui
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from schemas.http import BatchAccepted, BatchRequest, RetryAccepted, RetryRequest
from schemas.views import (
    ErrorBody,
    Estimate,
    Health,
    JobDeletedView,
    JobList,
    JobStatusResponse,
    JobSummary,
    Readiness,
    ResultsPage,
    ResultView,
    TaskPresets,
)
from stream_app.jobs.tasks import DEFAULT_TASK_NAME, PRESETS

SWAGGER_UI_DIR = Path(swagger_ui.__file__).parent / "static"
_MODELS: list[tuple[type[BaseModel], JsonSchemaMode]] = [
    (BatchRequest, "validation"),
    (BatchAccepted, "serialization"),
    (RetryRequest, "validation"),
    (RetryAccepted, "serialization"),
    (ErrorBody, "serialization"),
    (JobSummary, "serialization"),
    (JobStatusResponse, "serialization"),
    (JobList, "serialization"),
    (JobDeletedView, "serialization"),
    (ResultsPage, "serialization"),
    (ResultView, "serialization"),
    (Health, "serialization"),
    (Readiness, "serialization"),
    (Estimate, "serialization"),
    (TaskPresets, "serialization"),
]
_ERRORS = {
    "400": "Bad request: `invalid_json`, `invalid_parameter`.",
    "401": "`unauthorized`: API_KEYS is set and no valid `Authorization: Bearer <key>` came.",
    "402": "`tenant_budget_exhausted`: the caller's monthly budget (TENANT_BUDGETS) is spent.",
    "404": "`job_not_found` (unknown, or another client's job).",
    "409": "`job_finished`: the job completed or failed before the cancel; "
    "`idempotency_key_reused`: the Idempotency-Key named another request within "
    "BATCH_IDEMPOTENCY_HOURS; `job_not_finished`, `job_cancelled`, `records_unavailable` "
    "(retry).",
    "410": "`records_expired`: batch.records no longer holds the records to retry.",
    "413": "`too_many_records`: more than BATCH_MAX_RECORDS_PER_REQUEST; `body_too_large`: a "
    "JSON body over BATCH_MAX_JSON_BODY_BYTES (send large jobs as NDJSON); "
    "`record_too_large`: one record (named by index or line) over BATCH_MAX_RECORD_BYTES as "
    "JSON, more than a Kafka message carries.",
    "415": "`unsupported_media_type`: not JSON, NDJSON or CSV (or a charset Python does not "
    "know); the message lists the accepted types.",
    "422": "`validation_error`: the body (or the line it names) does not fit the schema; "
    "`unsupported_schema`: the task's output_schema uses a keyword structured outputs do "
    "not accept (named in the message); `unknown_task`: no such preset; `unknown_model`: "
    "task.model is neither priced nor CLAUDE_MODEL.",
    "503": (
        "`owner_unavailable`: the worker holding the job did not answer and the one "
        "asked holds no standby replica of it (reads are otherwise answered from the "
        'replica, marked `"stale": true`); '
        "`delete_pending`: the deletion was sent but not applied within 10 s; "
        "`broker_unavailable` (submit, cancel, delete, retry): the broker did not "
        "acknowledge within KAFKA_PUBLISH_TIMEOUT_SECONDS. Retry."
    ),
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _batch_body() -> dict[str, Any]:
    """A batch as POST /api/v1/batch and /api/v1/batch/estimate take it: JSON, or records
    streamed as NDJSON or CSV."""
    return {
        "required": True,
        "content": {
            "application/json": {"schema": _ref(BatchRequest)},
            "application/x-ndjson": {"schema": {"type": "string"}},
            "text/csv": {"schema": {"type": "string"}},
        },
    }


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _text(media_type: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: _json(ErrorBody, _ERRORS[code]) for code in codes}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


_JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "description": "The id returned by POST /api/v1/batch.",
    "schema": {"type": "string"},
}
_OFFSET = _query("offset", "First record index (default 0).", {"type": "integer", "minimum": 0})
_FAILED = _query(
    "failed",
    "true: only results with `success: false` (failed or skipped).",
    {"type": "boolean", "default": False},
)
_SECURED: list[dict[str, list[str]]] = [{"bearer": []}]


def _paths() -> dict[str, Any]:
    job = "/api/v1/batch/{job_id}"
    return {
        "/api/v1/batch": {
            "post": {
                "summary": "Submit a batch",
                "description": (
                    'JSON `{"records": [...]}`, or a stream of records: '
                    "`application/x-ndjson` (one record object per line; an optional first "
                    'line `{"job": {...}}` carries the job options of the JSON body) or '
                    "`text/csv` (a header row; the text in column `text_column`, the id in "
                    "`id_column`, other columns become metadata). Streams are read line by "
                    "line into a spool file and published once every line is valid. "
                    "`priority` (`high`, `normal`, `low`; default `normal`) sets the job's "
                    "share of the provider budget while other jobs wait: `high` gets 4 times "
                    "a `normal` job's share, `low` only budget no other job waits for. Shares "
                    "are split per tenant (API key) first, then per job. `lane` (`live`, "
                    "`batch`, `auto`; default BATCH_DEFAULT_LANE) picks live calls at full "
                    "price or the provider's Message Batches API at half the price; `auto` "
                    "takes the batch lane for jobs that would take longer than "
                    "BATCH_LANE_AUTO_MINUTES live, or with a `deadline` (ISO 8601), the "
                    "cheapest lane expected to finish by it."
                ),
                "security": _SECURED,
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": (
                            "1-200 printable ASCII characters (a UUID). The same key and "
                            "the same request within BATCH_IDEMPOTENCY_HOURS answer the "
                            "first job (header `Idempotent-Replayed: true`); the same key "
                            "with another request: 409 `idempotency_key_reused`."
                        ),
                        "schema": {"type": "string", "pattern": "^[!-~]{1,200}$"},
                    },
                    _query("text_column", "CSV: the text's column.", {"type": "string"}),
                    _query("id_column", "CSV: the record id's column.", {"type": "string"}),
                    _query(
                        "priority",
                        "The job's priority (a first NDJSON line "
                        '`{"job": {"priority": ...}}` wins; a JSON body\'s own that differs: 422).',
                        {"enum": ["high", "normal", "low"]},
                    ),
                    _query(
                        "lane",
                        "The job's lane (`live`, `batch`, `auto`; docs/lanes.md), as `priority`.",
                        {"enum": ["live", "batch", "auto"]},
                    ),
                    _query(
                        "deadline",
                        "The job's deadline (ISO 8601 date-time, ahead), as `priority`.",
                        {"type": "string", "format": "date-time"},
                    ),
                ],
                "requestBody": _batch_body(),
                "responses": {
                    "202": _json(BatchAccepted, "Accepted: the job runs."),
                    **_errors("400", "401", "402", "409", "413", "415", "422", "503"),
                },
            }
        },
        "/api/v1/batch/estimate": {
            "post": {
                "summary": "Estimate a batch's cost and duration",
                "description": (
                    "The same body as POST /api/v1/batch (JSON, NDJSON or CSV). Nothing is "
                    "published and no model is called: input tokens from the characters "
                    "sent, output tokens from recent records of the same task (else from "
                    "the output schema), cost with and without prompt caching, duration "
                    "from the backlog and the request budget."
                ),
                "security": _SECURED,
                "requestBody": _batch_body(),
                "responses": {
                    "200": _json(Estimate, "The estimate."),
                    **_errors("400", "401", "413", "415", "422"),
                },
            }
        },
        "/api/v1/tasks": {
            "get": {
                "summary": "Task presets",
                "description": 'Names usable as `"task": "<name>"` in a batch.',
                "security": _SECURED,
                "responses": {"200": _json(TaskPresets, "The presets."), **_errors("401")},
            }
        },
        "/api/v1/batch/jobs": {
            "get": {
                "summary": "List jobs",
                "description": (
                    "The same list whichever worker is asked: it merges its own jobs with "
                    "every other worker's. `stale`: a worker did not answer, its jobs come "
                    "from standby replicas."
                ),
                "security": _SECURED,
                "responses": {
                    "200": _json(JobList, "Every job visible to the caller."),
                    **_errors("401"),
                },
            }
        },
        f"{job}/status": {
            "get": {
                "summary": "A job's status and results",
                "security": _SECURED,
                "parameters": [
                    _JOB_ID,
                    _OFFSET,
                    _query(
                        "limit", "Most results (default 1000).", {"type": "integer", "minimum": 0}
                    ),
                ],
                "responses": {
                    "200": _json(JobStatusResponse, "Status, counters, results in index order."),
                    **_errors("400", "401", "404", "503"),
                },
            }
        },
        job: {
            "delete": {
                "summary": "Delete a job",
                "description": (
                    "A pending or running job is cancelled first. Then every worker removes "
                    "the job's status, results and SQLite mirror rows (tombstones in the "
                    "tables' compacted changelogs); the job answers 404 everywhere from then "
                    "on. Records and results already on batch.records / batch.results stay "
                    "until those topics' retention."
                ),
                "security": _SECURED,
                "parameters": [_JOB_ID],
                "responses": {
                    "200": _json(JobDeletedView, "Deleted."),
                    **_errors("401", "404", "503"),
                },
            }
        },
        f"{job}/retry": {
            "post": {
                "summary": "Run a finished job's failed (or cap-skipped) records again",
                "description": (
                    "Under the same job and index, as retry round N: each new outcome "
                    "replaces the old one; the tokens and cost of every round add up. The "
                    "records are read back from batch.records. `records` 0: nothing matched."
                ),
                "security": _SECURED,
                "parameters": [_JOB_ID],
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref(RetryRequest)}},
                },
                "responses": {
                    "202": _json(RetryAccepted, "The retry round runs."),
                    **_errors("400", "401", "404", "409", "410", "413", "422", "503"),
                },
            }
        },
        f"{job}/cancel": {
            "post": {
                "summary": "Cancel a job",
                "description": (
                    "Every worker stops starting calls for the job: records not started are "
                    'skipped (outcomes with `"skipped": true`, nothing billed), calls in '
                    "flight finish. Idempotent. Answers once the status is `cancelled`."
                ),
                "security": _SECURED,
                "parameters": [_JOB_ID],
                "responses": {
                    "200": _json(JobSummary, "The job's summary, status `cancelled`."),
                    **_errors("401", "404", "409", "503"),
                },
            }
        },
        f"{job}/results": {
            "get": {
                "summary": "A page of results, in index order",
                "security": _SECURED,
                "parameters": [
                    _JOB_ID,
                    _OFFSET,
                    _query(
                        "limit",
                        "Most results (default 100, at most 1000; 0 is refused).",
                        {"type": "integer", "minimum": 1, "maximum": 1000},
                    ),
                    _FAILED,
                ],
                "responses": {
                    "200": _json(ResultsPage, "Results; `next_offset` continues."),
                    **_errors("400", "401", "404", "503"),
                },
            }
        },
        f"{job}/results.ndjson": {
            "get": {
                "summary": "Every result, streamed as NDJSON",
                "security": _SECURED,
                "parameters": [_JOB_ID, _FAILED],
                "responses": {
                    "200": _text("application/x-ndjson", "One ResultView per line, index order."),
                    **_errors("400", "401", "404", "503"),
                },
            }
        },
        f"{job}/results.csv": {
            "get": {
                "summary": "Every result, streamed as CSV",
                "security": _SECURED,
                "parameters": [_JOB_ID, _FAILED],
                "responses": {
                    "200": _text(
                        "text/csv",
                        "Header row, then one row per result: index, record_id, success, "
                        "skipped, summary, sentiment, topics, insights, error, tokens_used, "
                        "input_tokens, output_tokens, attempts, model.",
                    ),
                    **_errors("400", "401", "404", "503"),
                },
            }
        },
        f"{job}/events": {
            "get": {
                "summary": "Live progress and results (server-sent events)",
                "description": (
                    "`progress` (a JobSummary) after every change; `result` (a ResultView, "
                    "with `id:` its offset in batch.results) as each is counted; `end` (the "
                    "final JobSummary) when the job can change no more, then the stream "
                    "closes. `Last-Event-ID` resumes after that result."
                ),
                "security": _SECURED,
                "parameters": [
                    _JOB_ID,
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "integer"},
                    },
                ],
                "responses": {
                    "200": _text("text/event-stream", "The event stream."),
                    **_errors("400", "401", "404", "503"),
                },
            }
        },
        "/api/v1/health": {
            "get": {
                "summary": "Liveness",
                "responses": {
                    "200": _json(Health, "Alive."),
                    "503": _json(Health, "The worker crashed or gave up; it is stopping."),
                },
            }
        },
        "/api/v1/ready": {
            "get": {
                "summary": "Readiness",
                "responses": {
                    "200": _json(Readiness, "Broker, assignment and storage usable."),
                    "503": _json(Readiness, "Not ready; each check says why."),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics of this worker",
                "responses": {"200": _text("text/plain", "Prometheus text format 0.0.4.")},
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.1 document."}},
            }
        },
        "/docs": {
            "get": {
                "summary": "API documentation (Swagger UI)",
                "responses": {"200": _text("text/html", "The page.")},
            }
        },
        "/": {
            "get": {
                "summary": "The web page: jobs, upload, live results",
                "responses": {"200": _text("text/html", "The page.")},
            }
        },
        "/favicon.ico": {
            "get": {
                "summary": "The page's icon (browsers ask for it on their own)",
                "responses": {"200": _text("image/svg+xml", "The icon.")},
            }
        },
    }


def _name_presets(schemas: dict[str, Any]) -> None:
    """A task given by name must be a preset's: say which names (the model only knows
    it is a string)."""
    task = schemas["BatchRequest"]["properties"]["task"]
    names = sorted({*PRESETS, DEFAULT_TASK_NAME})
    task["anyOf"] = [
        {"type": "string", "enum": names} if branch == {"type": "string"} else branch
        for branch in task["anyOf"]
    ]


@cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the HTTP API (components from the pydantic models)."""
    _, top = models_json_schema(_MODELS, ref_template="#/components/schemas/{model}")
    _name_presets(top["$defs"])
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "insight-stream",
            "version": "1",
            "description": (
                "Batches of texts summarised by Claude, record by record, over Kafka. "
                'Errors are `{"error": {"code", "message"}}`.'
            ),
        },
        "paths": _paths(),
        "components": {
            "schemas": top.get("$defs", {}),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A secret from API_KEYS (only when API_KEYS is set).",
                }
            },
        },
    }


async def openapi_json(request: Request) -> Response:
    """GET /openapi.json: the OpenAPI 3.1 document."""
    return JSONResponse(openapi_document())


_DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>insight-stream API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});</script>
</body></html>
"""


async def docs(request: Request) -> Response:
    """GET /docs: Swagger UI on /openapi.json."""
    return HTMLResponse(_DOCS_PAGE)
