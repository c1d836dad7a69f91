"""The SQLite mirror (`BATCH_PERSISTENCE_BACKEND=sqlite`): tables batch_jobs and batch_results.

It survives the loss of the broker (and so of the changelogs); the API lists jobs from it
when it is configured.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson

from schemas import ResultEvent
from stream_app.jobs.aggregation import JobStatus

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batch_jobs (
    job_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    total_records INTEGER,
    completed_count INTEGER NOT NULL,
    failed_count INTEGER NOT NULL,
    total_tokens_used INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    estimated_cost TEXT NOT NULL,
    owner TEXT,
    created_at REAL,
    updated_at REAL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_results (
    job_id TEXT NOT NULL,
    record_index INTEGER NOT NULL,
    success INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (job_id, record_index)
);
"""


class SqliteMirror:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def save_job(self, job: JobStatus) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO batch_jobs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                job.job_id,
                job.status,
                job.total_records,
                job.completed_count,
                job.failed_count,
                job.total_tokens_used,
                job.input_tokens,
                job.output_tokens,
                str(job.estimated_cost),
                job.owner,
                job.created_at,
                job.updated_at,
                job.model_dump_json(),
            ),
        )

    def save_result(self, result: ResultEvent) -> None:
        # A redelivered result changes nothing; a retried record's replaces the old one.
        verb = "INSERT OR REPLACE" if result.retry else "INSERT OR IGNORE"
        self._db.execute(
            f"{verb} INTO batch_results VALUES (?,?,?,?)",
            (
                result.job_id,
                result.index,
                int(result.success),
                result.model_dump_json(exclude_none=True),
            ),
        )

    def delete_job(self, job_id: str) -> None:
        """Remove the job's row and its results' rows (a deleted job)."""
        self._db.execute("DELETE FROM batch_results WHERE job_id = ?", (job_id,))
        self._db.execute("DELETE FROM batch_jobs WHERE job_id = ?", (job_id,))

    def job(self, job_id: str) -> JobStatus | None:
        row = self._db.execute("SELECT body FROM batch_jobs WHERE job_id = ?", (job_id,)).fetchone()
        return JobStatus.model_validate_json(row[0]) if row is not None else None

    def results(self, job_id: str) -> dict[int, dict[str, Any]]:
        rows = self._db.execute(
            "SELECT record_index, body FROM batch_results WHERE job_id = ?", (job_id,)
        ).fetchall()
        return {index: orjson.loads(body) for index, body in rows}

    def jobs(self) -> list[JobStatus]:
        rows = self._db.execute("SELECT body FROM batch_jobs ORDER BY created_at").fetchall()
        return [JobStatus.model_validate_json(body) for (body,) in rows]

    def close(self) -> None:
        self._db.close()
