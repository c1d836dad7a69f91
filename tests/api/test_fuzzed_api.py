"""The API fuzzed from its own /openapi.json by schemathesis, on the real service, broker
and simulator: no request generated from the document gets a 5xx, and every answer
(status, content type, headers, body) is one the document describes."""

from __future__ import annotations

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error, positive_data_acceptance

from tests.conftest import StartService

# Examples per operation: ~17 operations, the whole run well under a minute.
EXAMPLES = 5


def test_requests_generated_from_the_document_get_no_5xx_and_answers_it_describes(
    start: StartService,
) -> None:
    service = start(api_keys="fuzz:fuzz-secret")
    auth = {"Authorization": "Bearer fuzz-secret"}
    base = service.base_url
    document = httpx.get(f"{base}/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(document)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            # JSON Schema cannot say what makes a CSV or NDJSON body valid (the document
            # declares them as strings), nor which of a custom task's output_schema keywords
            # structured outputs accept or which models are priced, nor that a `deadline`
            # must lie in the future, nor that a query option must not contradict the body's:
            # such a request refused with a 4xx is no contradiction of the document (5xx and
            # the answers' shapes are still checked).
            streamed = case.media_type not in (None, "application/json")
            custom_task = isinstance(case.body, dict) and isinstance(case.body.get("task"), dict)
            body = case.body if isinstance(case.body, dict) else {}
            query = case.query or {}
            deadline = body.get("deadline") is not None or query.get("deadline") is not None
            # An option given both in the body and the query, differently, is a 422.
            conflict = any(name in body and str(body[name]) != str(query[name]) for name in query)
            refusable = streamed or custom_task or deadline or conflict
            excluded = [positive_data_acceptance] if refusable else []
            if case.operation.path in ("/api/v1/ready", "/api/v1/health"):
                # Their 503 is documented: not ready (e.g. during a rebalance), or stopping.
                excluded.append(not_a_server_error)
            try:
                case.call_and_validate(
                    base_url=base, headers=auth, excluded_checks=excluded, timeout=30
                )
            except BaseException as exc:  # schemathesis' FailureGroup is an exception group
                if isinstance(exc, KeyboardInterrupt | SystemExit):
                    raise
                failures.append(f"{case.operation.label}: {type(exc).__name__}: {exc}"[:2000])

        check()
    summary = "\n\n".join("\n".join(f.splitlines()[:14]) for f in failures)
    assert failures == [], f"{len(failures)} failures:\n\n{summary}"
