"""The HTTP API (Starlette): submit batches, poll status and partial results, probes."""

from api.app import create_api

__all__ = ["create_api"]
