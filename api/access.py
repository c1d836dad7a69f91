"""Who calls, and which jobs they may see: the caller named by a bearer key of API_KEYS or
API_KEYS_FILE (`Authorization: Bearer <secret>`, api.keys), or None when the API is open.
Another client's job is answered exactly like a job that does not exist (the same 404,
by the same path)."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from api.errors import ApiError
from stream_app.jobs.aggregation import JobStatus


def caller_of(request: Request) -> str | None:
    """The client name of a valid bearer token; None when the API is open. Every secret
    is compared (in constant time each), whichever matches, so the answer's time does not
    tell which key is close. Raises ApiError 401 `unauthorized`."""
    keys = request.state.api_keys.current()
    if not keys:
        return None
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token:
        given = token.strip().encode()
        found = None
        for secret, name in keys.items():
            if hmac.compare_digest(secret.encode(), given) and found is None:
                found = name
        if found is not None:
            return found
    raise ApiError(401, "unauthorized", "a valid 'Authorization: Bearer <key>' header is required")


def visible(job: JobStatus, caller: str | None) -> bool:
    return caller is None or job.owner == caller
