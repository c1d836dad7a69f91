from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from simulator import SimulatorConfig
from simulator.testing import SimulatorHandle, run_simulator
from stream_app.running.embedded import ChildProcess, free_port, start_tansu
from stream_app.running.kafka_local import KAFKA_VERSION, LocalKafka
from tests.support import Namespace, ServiceProcess, start_service

StartService = Callable[..., ServiceProcess]


PrivateBroker = Callable[..., ChildProcess]
# `TEST_BROKER=tansu make test` runs the shared-broker tests on Tansu instead, to compare.
TEST_BROKER = os.environ.get("TEST_BROKER", "kafka")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real Apache Kafka (KRaft, single node) for the whole session; tests isolate by
    topic names and consumer group (tests.support.Namespace). The jars come from Maven
    Central on first use (stream_app.running.kafka_local.fetch)."""
    port = free_port()
    if TEST_BROKER == "tansu":
        child = start_tansu(port, tmp_path_factory.mktemp("tansu") / "tansu.log")
    else:
        # TEST_KAFKA_VERSION runs the suite on another Apache Kafka release (fetched once).
        version = os.environ.get("TEST_KAFKA_VERSION", KAFKA_VERSION)
        child = LocalKafka(tmp_path_factory.mktemp("kafka"), version=version).start(port)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        child.stop()


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    """Apache Kafka brokers of this test alone, for tests that stop, restart or lose one:
    `private_broker(port)` starts one on new storage (a lost broker comes back empty);
    `private_broker(port, data=path)` starts one on `path` (a restart keeps everything)."""
    started: list[ChildProcess] = []

    def _start(port: int, data: Path | None = None) -> ChildProcess:
        child = LocalKafka(data or tmp_path / f"kafka-{len(started)}").start(port)
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
            # High enough not to pace; tests about pacing set their own.
            "CLAUDE_REQUESTS_PER_MINUTE": "6000",
            "BATCH_RETRY_BACKOFF_SECONDS": "0.05",
            **(
                {"KAFKA_ONE_RECORD_PER_BATCH": "true", "KAFKA_REBALANCE_TIMEOUT_SECONDS": "3"}
                if TEST_BROKER == "tansu"
                else {}
            ),
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
