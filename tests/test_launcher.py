"""`make run` with nothing configured: embedded broker and simulator, stopped on SIGTERM."""

from __future__ import annotations

import socket
from pathlib import Path

from stream_app.embedded import free_port
from tests.support import start_service, submit, wait_completed


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_offline_defaults_start_and_stop_with_the_service(tmp_path: Path) -> None:
    broker_port, simulator_port = free_port(), free_port()
    service = start_service(
        {"EMBEDDED_BROKER_PORT": str(broker_port), "SIMULATOR_PORT": str(simulator_port)},
        tmp_path,
    )
    try:
        assert listening(broker_port) and listening(simulator_port)
        with service.client() as client:
            job_id = submit(client, ["The app is great. Support answered within minutes."])
            body = wait_completed(client, job_id)
        assert body["results"][0]["response"]["summary"].startswith("The app is great")
        logs = service.logs()
        assert "EMBEDDED broker" in logs and "EPHEMERAL" in logs
        assert "SIMULATOR" in logs
    finally:
        code = service.stop()
    assert code == 0
    assert not listening(broker_port) and not listening(simulator_port)
