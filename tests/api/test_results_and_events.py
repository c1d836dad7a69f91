"""Results pages, streamed downloads, live events with resume, and streamed intake, on the
real service."""

from __future__ import annotations

import csv
import io
import json

import httpx

from schemas.export import CSV_COLUMNS
from simulator.testing import SimulatorHandle
from tests.conftest import StartService
from tests.sse import collect
from tests.support import status, submit, wait_completed

FAIL = "[[sim:fail-400]]"


def review(i: int) -> str:
    marker = f" {FAIL}" if i % 7 == 3 else ""
    return f"Review {i}: the headphones sound great but the case broke after a week.{marker}"


def test_results_pages_downloads_and_live_events_with_resume(
    start: StartService, simulator: SimulatorHandle
) -> None:
    simulator.configure(latency_ms=120)
    service = start(batch_max_concurrent_llm_calls=3)
    total = 30
    failing = {i for i in range(total) if i % 7 == 3}
    with service.client() as client:
        job_id = submit(client, [review(i) for i in range(total)])

        # Live: read 8 results, hang up, come back with Last-Event-ID until `end`.
        first, ended = collect(client, job_id, stop_after_results=8)
        assert not ended and first[0].event == "progress"
        seen = [e for e in first if e.event == "result"]
        resumed, ended = collect(client, job_id, last_event_id=seen[-1].id)
        assert ended
        seen += [e for e in resumed if e.event == "result"]
        indices = [e.json()["index"] for e in seen]
        assert sorted(indices) == list(range(total))  # each result exactly once
        ids = [int(e.id) for e in seen if e.id is not None]
        assert len(ids) == total and ids == sorted(ids)  # resumable, in counting order
        final = resumed[-1].json()
        assert final["status"] == "completed" and final["failed_count"] == len(failing)
        progress = [e.json()["completed_count"] for e in first + resumed if e.event == "progress"]
        assert progress == sorted(progress) and progress[-1] == total - len(failing)

        # A finished job: everything, then `end`, at once.
        replay, ended = collect(client, job_id)
        assert ended and sorted(e.json()["index"] for e in replay if e.event == "result") == list(
            range(total)
        )
        body = wait_completed(client, job_id)

        # Pages in index order; failures only; next_offset goes on.
        page = client.get(f"/api/v1/batch/{job_id}/results", params={"limit": 10}).json()
        assert [r["index"] for r in page["results"]] == list(range(10))
        assert page["next_offset"] == 10 and page["total_records"] == total
        last = client.get(
            f"/api/v1/batch/{job_id}/results", params={"offset": 25, "limit": 10}
        ).json()
        assert [r["index"] for r in last["results"]] == list(range(25, 30))
        assert last["next_offset"] is None
        failed = client.get(
            f"/api/v1/batch/{job_id}/results", params={"failed": "true", "limit": 2}
        ).json()
        assert [r["index"] for r in failed["results"]] == sorted(failing)[:2]
        rest = client.get(
            f"/api/v1/batch/{job_id}/results",
            params={"failed": "true", "offset": failed["next_offset"]},
        ).json()
        assert [r["index"] for r in rest["results"]] == sorted(failing)[2:]
        assert all("HTTP 400" in r["error"] for r in failed["results"] + rest["results"])
        empty = client.get(f"/api/v1/batch/{job_id}/results", params={"limit": 0})
        assert empty.status_code == 400, empty.text  # a page of nothing never moves on
        assert empty.json()["error"]["code"] == "invalid_parameter"
        bad = client.get(f"/api/v1/batch/{job_id}/results", params={"failed": "maybe"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_parameter"

        # Downloads: the same results as /status, streamed.
        lines = client.get(f"/api/v1/batch/{job_id}/results.ndjson").text.splitlines()
        assert [json.loads(line) for line in lines] == body["results"]
        only_failed = client.get(
            f"/api/v1/batch/{job_id}/results.ndjson", params={"failed": "true"}
        ).text.splitlines()
        assert [json.loads(line)["index"] for line in only_failed] == sorted(failing)
        reply = client.get(f"/api/v1/batch/{job_id}/results.csv")
        assert reply.headers["content-type"].startswith("text/csv")
        rows = list(csv.reader(io.StringIO(reply.text)))
        assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == total + 1
        assert rows[1][4] == body["results"][0]["response"]["summary"]

        missing = client.get("/api/v1/batch/nope/events")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "job_not_found"


def test_ndjson_and_csv_bodies_are_read_as_streams(
    start: StartService, simulator: SimulatorHandle
) -> None:
    service = start(batch_max_records_per_request=5)
    with service.client() as client:
        lines = [json.dumps({"job": {}})] + [
            json.dumps({"text": review(i), "id": f"r{i}"}) for i in (0, 1, 2)
        ]
        reply = client.post(
            "/api/v1/batch",
            content="\n".join(lines) + "\n",
            headers={"content-type": "application/x-ndjson"},
        )
        assert reply.status_code == 202, reply.text
        ndjson_job = reply.json()["job_id"]
        assert reply.json()["total_records"] == 3

        # With the byte-order mark that Excel's "CSV UTF-8" starts with (the id column would
        # be "\ufeffid" otherwise, and no record would get its id).
        table = '\ufeffid,body,stars\nc1,"Broken on arrival,\nsent it back",1\nc2,Works well,5\n'
        reply = client.post(
            "/api/v1/batch",
            params={"text_column": "body"},
            content=table,
            headers={"content-type": "text/csv"},
        )
        assert reply.status_code == 202, reply.text
        csv_job = reply.json()["job_id"]

        def refused(body: str, media_type: str, **params: str) -> httpx.Response:
            answer = client.post(
                "/api/v1/batch", content=body, params=params, headers={"content-type": media_type}
            )
            assert answer.status_code in (413, 422), answer.text
            return answer

        ndjson = "application/x-ndjson"
        bad_json = refused('{"text": "a"}\n{"text": "b"}\n{"text": \n', ndjson)
        assert bad_json.json()["error"]["message"].startswith("line 3: not JSON")
        no_text = refused('{"text": "a"}\n\n{"id": "x"}\n', ndjson)
        assert no_text.json()["error"]["message"] == "line 3: text: Field required"
        option = refused('{"job": {"colour": "red"}}\n{"text": "a"}\n', ndjson)
        assert option.json()["error"]["message"].startswith("line 1: job.colour")
        too_many = refused("".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(6)), ndjson)
        assert too_many.status_code == 413
        no_column = refused("a,b\n1,2\n", "text/csv")
        assert "no column 'text'" in no_column.json()["error"]["message"]
        cells = refused("text,b\nhello,2\nbye\n", "text/csv")
        assert cells.json()["error"]["message"] == "line 3: 1 cells, the header has 2"

        ndjson_body = wait_completed(client, ndjson_job)
        csv_body = wait_completed(client, csv_job)
        # Nothing of the refused requests was published.
        assert {j["job_id"] for j in client.get("/api/v1/batch/jobs").json()["jobs"]} == {
            ndjson_job,
            csv_job,
        }
    assert [r["record_id"] for r in ndjson_body["results"]] == ["r0", "r1", "r2"]
    assert [r["record_id"] for r in csv_body["results"]] == ["c1", "c2"]
    texts = sorted(r["text"] for r in simulator.stats()["requests"])
    assert "Broken on arrival,\nsent it back" in texts
    assert len(texts) == 5
    with service.client() as client:
        assert status(client, csv_job)["total_records"] == 2
