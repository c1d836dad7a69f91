"""GET /api/v1/health (liveness) and GET /api/v1/ready (readiness)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from stream_app.running.service import Service


async def health(request: Request) -> Response:
    """Liveness: 200 `{"status": "ok"}`, or 503 with the reason when the worker crashed or
    gave up (it is then stopping, exit code 1, to be restarted)."""
    service: Service = request.state.service
    alive = service.liveness()
    if alive != "ok":
        return JSONResponse({"status": "failing", "reason": alive}, status_code=503)
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    service: Service = request.state.service
    readiness = await service.readiness()
    body = {
        "ready": readiness.ready,
        "checks": readiness.checks,
        "partitions": service.owned_partitions(),
        # Not a readiness check: the worker stays ready (status can be read) while the
        # provider is unavailable or refuses the configuration; this says which and since when.
        "provider": service.breaker.report(),
    }
    return JSONResponse(body, status_code=200 if readiness.ready else 503)
