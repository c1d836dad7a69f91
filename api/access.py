"""Who calls, and which jobs they may see: the caller named by a bearer key of API_KEYS
(`Authorization: Bearer <secret>`), or None when the API is open."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from api.errors import ApiError
from stream_app.jobs.aggregation import JobStatus


def caller_of(request: Request) -> str | None:
    """The client name of a valid bearer token; None when the API is open."""
    keys: dict[str, str] = request.state.api_keys
    if not keys:
        return None
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token:
        for secret, name in keys.items():
            if hmac.compare_digest(secret.encode(), token.strip().encode()):
                return name
    raise ApiError(401, "unauthorized", "a valid 'Authorization: Bearer <key>' header is required")


def visible(job: JobStatus, caller: str | None) -> bool:
    return caller is None or job.owner == caller
