"""The web page (GET /, static files under /static), and the API's documentation."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from api.openapi import SWAGGER_UI_DIR, docs, openapi_json

STATIC_DIR = Path(__file__).parent / "static"


async def index(request: Request) -> Response:
    """GET /: the page (job list, upload form, a job's live results; see api/static)."""
    return FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-cache"})


async def favicon(request: Request) -> Response:
    """GET /favicon.ico, which browsers ask for on their own: the page's icon (SVG)."""
    return FileResponse(
        STATIC_DIR / "favicon.svg",
        media_type="image/svg+xml",
        headers={"cache-control": "max-age=86400"},
    )


def routes() -> list[BaseRoute]:
    return [
        Route("/", index, methods=["GET"]),
        Route("/favicon.ico", favicon, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
        Mount("/docs/static", StaticFiles(directory=SWAGGER_UI_DIR), name="docs-static"),
    ]
