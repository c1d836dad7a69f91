"""`make run` with nothing configured: an embedded broker and the simulator, children of the
launcher, stopped in order on Ctrl-C; with Apache Kafka every job survives a restart."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from stream_app.embedded import free_port
from tests.support import start_service, status, submit, wait_completed


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def offline_env(workdir: Path, **extra: str) -> dict[str, str]:
    return {
        "EMBEDDED_BROKER_PORT": str(free_port()),
        "SIMULATOR_PORT": str(free_port()),
        "EMBEDDED_KAFKA_DATA": str(workdir / "kafka"),
        **extra,
    }


def test_make_run_is_durable_on_the_embedded_apache_kafka(tmp_path: Path) -> None:
    env = offline_env(tmp_path, EMBEDDED_BROKER="auto")
    broker_port, simulator_port = int(env["EMBEDDED_BROKER_PORT"]), int(env["SIMULATOR_PORT"])
    service = start_service(env, tmp_path)
    try:
        with service.client() as client:
            job_id = submit(client, ["The app is great. Support answered within minutes."])
            before = wait_completed(client, job_id)
        assert before["results"][0]["response"]["summary"].startswith("The app is great")
        assert "started EMBEDDED Apache Kafka" in service.logs()
        assert "SIMULATOR" in service.logs()
    finally:
        # Ctrl-C in a terminal: SIGINT to the whole foreground process group.
        code = service.stop(signal.SIGINT, group=True)
    assert code == 0
    logs = service.logs()
    assert "Traceback" not in logs, logs[-3000:]
    assert "drained calls_abandoned=0" in logs
    # The worker drained before its broker stopped: the broker stops after it.
    assert logs.index("drained") < logs.index('stopped child name="kafka"')
    assert not listening(broker_port) and not listening(simulator_port)

    again = start_service(env, tmp_path)
    try:
        with again.client() as client:
            assert status(client, job_id) == before
            listed = client.get("/api/v1/batch/jobs").json()["jobs"]
            assert [job["job_id"] for job in listed] == [job_id]
        assert "new_storage=False" in again.logs()
    finally:
        assert again.stop(signal.SIGINT, group=True) == 0


def test_tansu_fallback_is_ephemeral_and_says_so(tmp_path: Path) -> None:
    env = offline_env(tmp_path, EMBEDDED_BROKER="tansu")
    broker_port, simulator_port = int(env["EMBEDDED_BROKER_PORT"]), int(env["SIMULATOR_PORT"])
    service = start_service(env, tmp_path)
    try:
        assert listening(broker_port) and listening(simulator_port)
        with service.client() as client:
            job_id = submit(client, ["The app is great. Support answered within minutes."])
            body = wait_completed(client, job_id)
        assert body["results"][0]["response"]["summary"].startswith("The app is great")
        logs = service.logs()
        assert "EMBEDDED broker (Tansu" in logs and "EPHEMERAL" in logs
    finally:
        code = service.stop()
    assert code == 0
    assert not listening(broker_port) and not listening(simulator_port)
