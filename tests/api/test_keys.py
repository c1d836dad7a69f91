"""API keys from API_KEYS and API_KEYS_FILE: several per tenant, reloaded on change."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from api.keys import KeyTable
from stream_app.core.settings import Settings
from tests.conftest import StartService
from tests.support import status, submit, wait_until


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_the_file_and_the_variable_both_count_and_a_tenant_may_have_several_keys(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keys"
    path.write_text("# rotated 2026-12\nacme:old-secret\nacme:new-secret\n\nbeta:b1, beta:b2\n")
    table = KeyTable(settings(api_keys_file=path, api_keys="ops:o1"))
    assert table.current() == {
        "old-secret": "acme",
        "new-secret": "acme",
        "b1": "beta",
        "b2": "beta",
        "o1": "ops",
    }
    assert table.clients() == 3 and not table.open


def test_a_changed_file_is_read_again_and_a_broken_one_keeps_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("acme:old-secret\n")
    table = KeyTable(settings(api_keys_file=path))
    path.write_text("acme:new-secret\nbeta:b1\n")
    table.reload()
    assert table.current() == {"new-secret": "acme", "b1": "beta"}
    path.write_text("no separator here\n")
    table.reload()
    assert table.current() == {"new-secret": "acme", "b1": "beta"}


def test_a_malformed_file_stops_the_start_without_showing_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("acme-secret-without-name\n")
    with pytest.raises(ValueError) as caught:
        KeyTable(settings(api_keys_file=path))
    assert "acme-secret" not in str(caught.value)


def test_no_key_at_all_means_open() -> None:
    assert KeyTable(settings()).open


def test_keys_rotate_without_a_restart_and_another_tenants_job_looks_missing(
    start: StartService, tmp_path: Path
) -> None:
    path = tmp_path / "api-keys"
    path.write_text("acme:acme-old\nbeta:beta-1\n")
    service = start(api_keys_file=path)
    assert "API keys required" in service.logs()
    old = {"authorization": "Bearer acme-old"}
    with service.client() as client:
        job_id = submit(client, ["A ticket about a late parcel."], headers=old)
        # The second key of the same tenant sees the same jobs.
        path.write_text("acme:acme-old\nacme:acme-new\nbeta:beta-1\n")
        new = {"authorization": "Bearer acme-new"}
        wait_until(
            lambda: client.get(f"/api/v1/batch/{job_id}/status", headers=new).status_code == 200,
            timeout=10,
            what="the new key to be accepted",
        )
        assert status(client, job_id, headers=new)["job_id"] == job_id
        # Another tenant: the same 404 as for a job that does not exist.
        beta = {"authorization": "Bearer beta-1"}
        theirs = client.get(f"/api/v1/batch/{job_id}/status", headers=beta)
        missing = client.get("/api/v1/batch/0123456789abcdef/status", headers=beta)
        assert theirs.status_code == missing.status_code == 404
        assert theirs.json()["error"]["code"] == missing.json()["error"]["code"]
        assert theirs.json()["error"]["message"].replace(job_id, "X") == missing.json()["error"][
            "message"
        ].replace("0123456789abcdef", "X")
        assert set(theirs.headers) == set(missing.headers)
        # The old key is withdrawn; SIGHUP reads the file at once.
        path.write_text("acme:acme-new\nbeta:beta-1\n")
        os.kill(service.process.pid, signal.SIGHUP)
        wait_until(
            lambda: client.get("/api/v1/batch/jobs", headers=old).status_code == 401,
            timeout=10,
            what="the old key to be refused",
        )
        assert client.get("/api/v1/batch/jobs", headers=new).status_code == 200
    assert "acme-old" not in service.logs() and "acme-new" not in service.logs()
