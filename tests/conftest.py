from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from simulator import SimulatorConfig
from simulator.testing import SimulatorHandle, run_simulator
from stream_app.embedded import ChildProcess, free_port, start_broker
from tests.support import Namespace, ServiceProcess, start_service

StartService = Callable[..., ServiceProcess]


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real Tansu broker for the whole session; tests isolate by topic names."""
    port = free_port()
    child: ChildProcess = start_broker(port, tmp_path_factory.mktemp("broker") / "tansu.log")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        child.stop()


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[Callable[[int], ChildProcess]]:
    """Brokers of this test alone, for tests that stop or lose one: `private_broker(port)`."""
    started: list[ChildProcess] = []

    def _start(port: int) -> ChildProcess:
        child = start_broker(port, tmp_path / f"broker-{len(started)}.log")
        started.append(child)
        return child

    yield _start
    for child in started:
        child.stop()


@pytest.fixture
def simulator() -> Iterator[SimulatorHandle]:
    with run_simulator(SimulatorConfig()) as handle:
        yield handle


@pytest.fixture
def namespace() -> Namespace:
    return Namespace()


@pytest.fixture
def start(
    broker: str, simulator: SimulatorHandle, namespace: Namespace, tmp_path: Path
) -> Iterator[StartService]:
    """Start the service as `make run` does, on this test's broker namespace and simulator."""
    started: list[ServiceProcess] = []

    def _start(workdir: Path | None = None, wait: bool = True, **env: object) -> ServiceProcess:
        full = {
            "KAFKA_BOOTSTRAP_SERVERS": broker,
            "ANTHROPIC_API_KEY": "sk-test-secret-do-not-log",
            "ANTHROPIC_BASE_URL": simulator.base_url,
            "KAFKA_PARTITIONS": "4",
            "KAFKA_ONE_RECORD_PER_BATCH": "true",
            # High enough not to pace; tests about pacing set their own.
            "CLAUDE_REQUESTS_PER_MINUTE": "6000",
            "BATCH_RETRY_BACKOFF_SECONDS": "0.05",
            **namespace.env(),
            **{k.upper(): str(v) for k, v in env.items()},
        }
        service = start_service(full, workdir or tmp_path / "svc", wait=wait)
        started.append(service)
        return service

    yield _start
    for service in started:
        if service.process.poll() is None:
            service.stop(signal.SIGKILL)
