"""GET /openapi.json: a valid OpenAPI 3.1 document that covers every route, whose schemas
the real answers of a running service fit; GET /docs serves Swagger UI without a CDN."""

from __future__ import annotations

from typing import Any

import httpx
import jsonschema
from openapi_spec_validator import validate
from starlette.routing import Route

from api import create_api
from api.openapi import openapi_document
from simulator.testing import SimulatorHandle
from stream_app.core.settings import Settings
from tests.conftest import StartService
from tests.support import status, submit, wait_completed, wait_until


def check(spec: dict[str, Any], model: str, body: Any) -> None:
    schema = {"$ref": f"#/components/schemas/{model}", "components": spec["components"]}
    jsonschema.validate(body, schema, cls=jsonschema.Draft202012Validator)


def test_every_route_is_documented() -> None:
    app = create_api(Settings(_env_file=None))  # type: ignore[call-arg]
    paths = openapi_document()["paths"]
    for route in app.routes:
        if isinstance(route, Route):
            methods = {m.lower() for m in route.methods or ()} - {"head"}
            assert route.path in paths, route.path
            assert methods <= set(paths[route.path]), (route.path, methods)


def test_the_batch_body_documents_priority() -> None:
    spec = openapi_document()
    field = spec["components"]["schemas"]["BatchRequest"]["properties"]["priority"]
    assert field["enum"] == ["high", "normal", "low"] and field["default"] == "normal"
    post = spec["paths"]["/api/v1/batch"]["post"]
    assert "priority" in {p["name"] for p in post["parameters"]}


def test_document_is_valid_and_answers_fit_it(
    start: StartService, simulator: SimulatorHandle
) -> None:
    service = start(api_keys="team:k1")
    auth = {"authorization": "Bearer k1"}
    with service.client(headers=auth) as client:
        spec = client.get("/openapi.json").json()
        validate(spec)  # raises when the document is not valid OpenAPI 3.1
        assert spec["openapi"] == "3.1.0"

        accepted = client.post("/api/v1/batch", json={"records": [{"text": "Slow app."}] * 3})
        check(spec, "BatchAccepted", accepted.json())
        job_id = accepted.json()["job_id"]
        check(spec, "JobStatusResponse", wait_completed(client, job_id, headers=auth))
        check(spec, "JobList", client.get("/api/v1/batch/jobs").json())
        check(spec, "ResultsPage", client.get(f"/api/v1/batch/{job_id}/results").json())
        check(spec, "Health", client.get("/api/v1/health").json())
        check(spec, "Readiness", client.get("/api/v1/ready").json())
        check(spec, "TaskPresets", client.get("/api/v1/tasks").json())
        body = {"records": [{"text": "Slow app."}], "task": "review-insights", "max_cost_usd": 1}
        check(spec, "Estimate", client.post("/api/v1/batch/estimate", json=body).json())
        capped = client.post("/api/v1/batch", json=body).json()["job_id"]
        check(spec, "JobStatusResponse", wait_completed(client, capped, headers=auth))
        running = submit(client, ["Export hangs. [[sim:slow=1500]]"] * 2)
        check(spec, "JobSummary", client.post(f"/api/v1/batch/{running}/cancel").json())

        def settled() -> bool:  # calls in flight finish before the simulator stops
            body = status(client, running)
            return body["completed_count"] + body["skipped_count"] == 2

        wait_until(settled, timeout=30, what="both records to have an outcome")

        errors = [
            client.get("/api/v1/batch/nope/status"),
            client.post(f"/api/v1/batch/{job_id}/cancel"),
            client.post("/api/v1/batch", json={"records": []}),
            client.post("/api/v1/batch", content=b"{", headers={"content-type": "text/plain"}),
            httpx.get(f"{service.base_url}/api/v1/batch/jobs"),
        ]
        # text/plain is not a body the API takes: 415, as the document promises.
        assert [e.status_code for e in errors] == [404, 409, 422, 415, 401]
        for error in errors:
            check(spec, "ErrorBody", error.json())
            code = str(error.status_code)
            path = error.request.url.path.replace(job_id, "{job_id}").replace("nope", "{job_id}")
            documented = spec["paths"][path][error.request.method.lower()]["responses"]
            assert code in documented, (path, code)

        page = client.get("/docs")
        assert page.status_code == 200 and "swagger-ui-bundle.js" in page.text
        bundle = client.get("/docs/static/swagger-ui-bundle.js")
        assert bundle.status_code == 200 and len(bundle.content) > 100_000
