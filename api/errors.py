"""Every error answers `{"error": {"code", "message"}}`."""

from __future__ import annotations

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from stream_app.core.exceptions import BrokerUnavailable
from stream_app.core.logs import get_logger

log = get_logger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail))


async def _broker_unavailable(request: Request, exc: Exception) -> Response:
    # The job (or cancel) was not accepted: the client may retry once the broker is back.
    log.error("broker unavailable", path=request.url.path, reason=str(exc))
    return error_response(503, "broker_unavailable", str(exc))


async def _client_disconnect(request: Request, exc: Exception) -> Response:
    # Not a bug: the client hung up before its body ended (a submit is read to its end, and
    # spooled, before anything is published, so nothing was). Nobody reads this answer.
    log.info("client disconnected before the end of its request", path=request.url.path)
    return error_response(400, "client_disconnected", "the request body ended early")


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", path=request.url.path)
    return error_response(500, "internal_error", "internal error; the request was not processed")


EXCEPTION_HANDLERS = {
    ApiError: _api_error,
    HTTPException: _http_error,
    BrokerUnavailable: _broker_unavailable,
    ClientDisconnect: _client_disconnect,
    Exception: _unexpected,
}


_TASK_SHAPE = (
    'a task is {"instructions": "...", "output_schema": {...}, "model"?, "max_tokens"?} or '
    "the name of a preset (GET /api/v1/tasks)"
)


def describe(exc: ValidationError) -> str:
    """pydantic's errors as one line, `where: why; ...` (at most 5). The task union
    (`task`: TaskSpec | preset name) reports only the alternative the input was meant as
    (an object: the TaskSpec's errors; anything else: that it must be either), and an
    error in a task says what a task is."""
    errors = exc.errors()
    task_object = any(e["loc"][:2] == ("task", "TaskSpec") and len(e["loc"]) > 2 for e in errors)
    parts = []
    for error in errors:
        # A validator's own message is the message: pydantic's "Value error, " goes.
        error = {**error, "msg": str(error["msg"]).removeprefix("Value error, ")}
        loc = list(error["loc"])
        if loc[:1] == ["task"]:
            if loc[1:2] == ["str"]:
                continue  # the preset-name alternative; said below when it matters
            if loc[1:2] == ["TaskSpec"]:
                del loc[1]
                if not task_object and len(loc) == 1:
                    parts.append(f"task: must be an object or a preset name ({_TASK_SHAPE})")
                    continue
            where = ".".join(str(p) for p in loc)
            parts.append(f"{where}: {error['msg']} ({_TASK_SHAPE})")
            continue
        where = ".".join(str(p) for p in loc) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts[:5])
