"""The HTTP API (Starlette): submit batches, poll status and partial results, probes.

`app` builds the routes and the lifespan; one module per resource below it; below those the
shared helpers (`forwarding`, `streams`, `bodies`, `access`, `views`, `job_options`,
`openapi`, `records`, `errors`), and no module imports `app` (contract "api-layers" in
pyproject.toml). It imports `stream_app.running` and the layers below it; only the launcher
(`stream_app.__main__`) imports it.
"""

from api.app import create_api

__all__ = ["create_api"]
