"""`make run` with nothing configured: an embedded broker and the simulator, children of the
launcher, stopped in order on Ctrl-C; with Apache Kafka every job survives a restart."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

from stream_app.running.embedded import free_port
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


def _child_pids(parent: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process is gone
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


def _command_line(pid: int) -> str:
    return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_a_second_instance_on_the_same_folder_or_ports_refuses_and_harms_nothing(
    tmp_path: Path,
) -> None:
    env = offline_env(tmp_path, EMBEDDED_BROKER="kafka")
    first = start_service(env, tmp_path)
    try:
        with first.client() as client:
            job_id = submit(client, ["The app is great. Support answered within minutes."])
            before = wait_completed(client, job_id)

        # Each clash names what is taken and the setting that moves it; nothing starts.
        clashes = {
            "BATCH_JOB_STORAGE_PATH": (env, tmp_path),
            "EMBEDDED_KAFKA_DATA": (
                {
                    **env,
                    "EMBEDDED_BROKER_PORT": str(free_port()),
                    "SIMULATOR_PORT": str(free_port()),
                },
                tmp_path / "other-state",
            ),
            "EMBEDDED_BROKER_PORT": (
                {
                    **env,
                    "EMBEDDED_KAFKA_DATA": str(tmp_path / "other-kafka"),
                    "SIMULATOR_PORT": str(free_port()),
                },
                tmp_path / "third-state",
            ),
            "SIMULATOR_PORT": (
                {
                    **env,
                    "EMBEDDED_BROKER": "tansu",
                    "EMBEDDED_BROKER_PORT": str(free_port()),
                },
                tmp_path / "fourth-state",
            ),
        }
        for setting, (second_env, workdir) in clashes.items():
            second = start_service(second_env, workdir, wait=False)
            assert second.process.wait(60) == 3, second.logs()[-3000:]
            logs = second.logs()
            assert "cannot start" in logs and setting in logs, logs[-3000:]
            assert "Traceback" not in logs, logs[-3000:]

        # The first instance did not notice: same job, same results, new jobs complete.
        with first.client() as client:
            assert status(client, job_id) == before
            again = wait_completed(client, submit(client, ["Second job. Still fine."]))
            assert again["completed_count"] == 1
        assert not (tmp_path / "other-kafka").exists()
    finally:
        assert first.stop(signal.SIGINT, group=True) == 0


def test_the_launcher_stops_non_zero_when_its_broker_dies(tmp_path: Path) -> None:
    env = offline_env(tmp_path, EMBEDDED_BROKER="kafka")
    service = start_service(env, tmp_path)
    try:
        kafka = [
            pid for pid in _child_pids(service.process.pid) if "kafka.Kafka" in _command_line(pid)
        ]
        assert len(kafka) == 1, [_command_line(pid) for pid in _child_pids(service.process.pid)]
        os.kill(kafka[0], signal.SIGKILL)
        # Exits on its own (no signal from us): a dead broker must not leave a worker that
        # answers /health 200 and never processes a record again.
        code = service.process.wait(90)
    finally:
        if service.process.poll() is None:
            service.stop(signal.SIGKILL)
    logs = service.logs()
    assert code == 1, logs[-3000:]
    assert "the embedded kafka exited with code" in logs, logs[-3000:]
    # The launcher stopped the simulator before it left (it waited for it to exit).
    assert not listening(int(env["SIMULATOR_PORT"])), logs[-3000:]
