"""The API fuzzed from its own /openapi.json by schemathesis, on the real service, broker
and simulator: no request generated from the document gets a 5xx, and every answer
(status, content type, headers, body) is one the document describes."""

from __future__ import annotations

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

from tests.conftest import StartService

# Examples per operation: ~17 operations, the whole run well under a minute.
EXAMPLES = 5


def test_requests_generated_from_the_document_get_no_5xx_and_answers_it_describes(
    start: StartService,
) -> None:
    service = start()
    assert "the API is open to anyone" in service.logs()
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
            try:
                case.call_and_validate(base_url=base, timeout=30)
            except BaseException as exc:  # schemathesis' FailureGroup is an exception group
                if isinstance(exc, KeyboardInterrupt | SystemExit):
                    raise
                failures.append(f"{case.operation.label}: {type(exc).__name__}: {exc}"[:2000])

        check()
    assert failures == [], "\n\n".join(failures[:10])
