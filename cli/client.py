"""The HTTP API as the CLI uses it; every failure becomes a CliError with one clear line."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

# Attempts of one submit (the first and its retries), and the pause before retry n (s).
SUBMIT_ATTEMPTS = 4


def _pause(attempt: int) -> float:
    return float(min(2**attempt, 10))


class CliError(Exception):
    """Printed as `error: <message>`; the command exits with status 1. `status`: the HTTP
    status of the service's answer, None when there was none."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Unreachable(CliError):
    """No answer from the service (refused, timed out): it may come back."""


def normal_url(url: str) -> str:
    """The service's base address as people type it: `localhost:8000` gets `http://`, and
    a trailing `/`, `/api/v1` or `/docs` is dropped (the CLI adds the API's paths)."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    url = url.rstrip("/")
    for suffix in ("/api/v1", "/api", "/docs"):
        if url.endswith(suffix):
            url = url.removesuffix(suffix).rstrip("/")
    return url


class ApiClient:
    def __init__(self, url: str, api_key: str | None, timeout: float = 30.0) -> None:
        """Raises CliError when `url` is not an address (an unclosed `[`, a bad port)."""
        self.url = normal_url(url)
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        except httpx.InvalidURL as exc:
            raise CliError(
                f"--url (or INSIGHT_URL) {url!r} is not an address: {exc} "
                "(expected e.g. http://127.0.0.1:8000)"
            ) from None

    def close(self) -> None:
        self._http.close()

    def submit_ndjson(self, lines: Iterable[bytes], estimate: bool = False) -> dict[str, Any]:
        """POST /api/v1/batch (or /api/v1/batch/estimate) with the records streamed as
        NDJSON (chunked upload)."""
        return self._json(
            "POST",
            "/api/v1/batch/estimate" if estimate else "/api/v1/batch",
            content=lines,
            headers={"content-type": "application/x-ndjson"},
            timeout=httpx.Timeout(30.0, write=None, read=300.0),
        )

    def submit_once(
        self, make_lines: Callable[[], Iterable[bytes]], attempts: int = SUBMIT_ATTEMPTS
    ) -> dict[str, Any]:
        """POST /api/v1/batch (NDJSON, streamed) with an `Idempotency-Key` of its own, sent
        again with the same key when the connection fails, times out, or the service
        answers 503: whatever the network did, at most one job is created (the service
        answers a repeated key with the first job). `make_lines` gives the body anew for
        each attempt."""
        key = uuid.uuid4().hex
        for attempt in range(attempts):
            last = attempt + 1 == attempts
            try:
                reply = self._http.request(
                    "POST",
                    "/api/v1/batch",
                    content=make_lines(),
                    headers={"content-type": "application/x-ndjson", "idempotency-key": key},
                    timeout=httpx.Timeout(30.0, write=None, read=300.0),
                )
            except httpx.TransportError as exc:
                if last:
                    raise Unreachable(self._unreachable(exc)) from None
                time.sleep(_pause(attempt))
                continue
            if reply.status_code == 503 and not last:
                time.sleep(_pause(attempt))
                continue
            return self._checked(reply)
        raise AssertionError("unreachable")  # the last attempt returned or raised

    def status(self, job_id: str, **params: str) -> dict[str, Any]:
        return self._json("GET", f"/api/v1/batch/{job_id}/status", params=params)

    def jobs(self) -> dict[str, Any]:
        return self._json("GET", "/api/v1/batch/jobs")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json("POST", f"/api/v1/batch/{job_id}/cancel")

    def retry(self, job_id: str, failed: bool, skipped: bool) -> dict[str, Any]:
        return self._json(
            "POST", f"/api/v1/batch/{job_id}/retry", json={"failed": failed, "skipped": skipped}
        )

    def delete(self, job_id: str) -> dict[str, Any]:
        return self._json("DELETE", f"/api/v1/batch/{job_id}")

    @contextmanager
    def results_download(self, job_id: str, failed: bool, kind: str) -> Iterator[Iterator[bytes]]:
        """GET /api/v1/batch/{job_id}/results.{kind} (`ndjson` or `csv`), streamed as bytes."""
        with self._stream(f"/api/v1/batch/{job_id}/results.{kind}", failed) as reply:
            yield reply.iter_bytes()

    @contextmanager
    def _stream(self, path: str, failed: bool) -> Iterator[httpx.Response]:
        params = {"failed": "true"} if failed else {}
        try:
            with self._http.stream(
                "GET", path, params=params, timeout=httpx.Timeout(30.0, read=None)
            ) as reply:
                if reply.status_code >= 400:
                    reply.read()
                    raise CliError(self._describe(reply), reply.status_code)
                yield reply
        except httpx.HTTPError as exc:
            raise Unreachable(self._unreachable(exc)) from None

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            reply = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise Unreachable(self._unreachable(exc)) from None
        except httpx.InvalidURL as exc:
            raise CliError(f"--url {self.url}: not a usable address ({exc})") from None
        return self._checked(reply)

    def _checked(self, reply: httpx.Response) -> dict[str, Any]:
        if reply.status_code >= 400:
            raise CliError(self._describe(reply), reply.status_code)
        try:
            body: dict[str, Any] = reply.json()
        except ValueError:
            raise CliError(f"{self.url} answered {reply.status_code} with no JSON") from None
        return body

    def _unreachable(self, exc: httpx.HTTPError) -> str:
        if isinstance(exc, httpx.ConnectError):
            why = "connection refused or host unknown"
        elif isinstance(exc, httpx.TimeoutException):
            why = "no answer in time"
        else:
            why = type(exc).__name__
        return (
            f"cannot reach the service at {self.url} ({why}); is it running? (--url, INSIGHT_URL)"
        )

    @staticmethod
    def _describe(reply: httpx.Response) -> str:
        if reply.status_code == 401:
            return "unauthorized (HTTP 401): give a valid key with --api-key or INSIGHT_API_KEY"
        try:
            error = reply.json()["error"]
            return f"{error['message']} ({error['code']}, HTTP {reply.status_code})"
        except (ValueError, KeyError, TypeError):
            if reply.status_code == 404:
                return (
                    f"{reply.request.url} is not an insight-stream API (HTTP 404); give the "
                    "service's address, e.g. --url http://127.0.0.1:8000"
                )
            return f"the service answered HTTP {reply.status_code}"
