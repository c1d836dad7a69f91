"""A single-node Apache Kafka (KRaft) on this machine: for `make run` and the test suite.

The broker's jars come from Maven Central through `mvn` and the checked-in `kafka/pom.xml`,
once per version, into a cache folder; the broker runs as `java kafka.Kafka` with a
generated server.properties. Its data directory is formatted on first start and reused
afterwards, so topics, changelogs and committed offsets survive a restart.
"""

from __future__ import annotations

import base64
import fcntl
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from stream_app.core.exceptions import BrokerUnavailable
from stream_app.core.logs import get_logger
from stream_app.running.dir_lock import DirLock
from stream_app.running.embedded import ChildProcess, ensure_port_free, free_port, wait_for_port

log = get_logger(__name__)

# The newest Apache Kafka release, tried here with faust-streaming 0.15 + aiokafka 0.14
# (the suite passes on it and on 4.1.1); keep in step with kafka/pom.xml and
# docker-compose.yml (tests/running/test_deployment.py checks).
KAFKA_VERSION = "4.4.0"
POM = Path(__file__).resolve().parents[2] / "kafka" / "pom.xml"
DEFAULT_CACHE = Path.home() / ".cache" / "insight-stream" / "kafka"
_COMPLETE = ".complete"
_MIN_JAVA = 17  # Apache Kafka 4.x brokers need Java 17 or newer.

_LOG4J2 = """\
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log_file}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


def java_major_version(java: str = "java") -> int | None:
    """The major version of `java` on PATH (17 for "17.0.15"), or None when there is none."""
    if shutil.which(java) is None:
        return None
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        ).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if match is None:
        return None
    major = int(match.group(1))
    # Java 8 and older call themselves "1.8".
    return int(match.group(2) or 0) if major == 1 else major


def lib_dir(cache: Path = DEFAULT_CACHE, version: str = KAFKA_VERSION) -> Path:
    return cache / version / "lib"


def is_fetched(cache: Path = DEFAULT_CACHE, version: str = KAFKA_VERSION) -> bool:
    return (lib_dir(cache, version) / _COMPLETE).exists()


def can_run(cache: Path = DEFAULT_CACHE, version: str = KAFKA_VERSION) -> tuple[bool, str]:
    """Whether this machine can run the embedded Apache Kafka, and if not, why."""
    java = java_major_version()
    if java is None:
        return False, "no java on PATH"
    if java < _MIN_JAVA:
        return False, f"java {java} is older than the {_MIN_JAVA} Kafka needs"
    if not is_fetched(cache, version) and shutil.which("mvn") is None:
        return False, f"Kafka {version} is not in {cache} and there is no mvn to fetch it"
    return True, "ok"


def fetch(cache: Path = DEFAULT_CACHE, version: str = KAFKA_VERSION) -> Path:
    """Copy Apache Kafka's broker jars into the cache (once); returns the folder of jars.

    Raises BrokerUnavailable with mvn's output when the fetch fails. Safe to call from
    several processes at once: they take turns on a lock file.
    """
    target = lib_dir(cache, version)
    if (target / _COMPLETE).exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".fetch-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / _COMPLETE).exists():
            return target
        started = time.monotonic()
        log.info("fetching Apache Kafka with mvn (once)", version=version, into=str(target))
        staging = Path(tempfile.mkdtemp(prefix=f"lib-{version}-", dir=cache))
        with tempfile.TemporaryDirectory() as build:
            # `-f` keeps Maven's target/ beside the pom; nothing is built there.
            done = subprocess.run(
                [
                    "mvn",
                    "-q",
                    "-B",
                    "-f",
                    str(POM),
                    "package",
                    f"-Dkafka.version={version}",
                    f"-Dkafka.lib={staging}",
                ],
                cwd=build,
                capture_output=True,
                text=True,
                check=False,
            )
        if done.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            shutil.rmtree(staging, ignore_errors=True)
            raise BrokerUnavailable(
                f"mvn could not fetch Apache Kafka {version} (exit {done.returncode}):\n"
                f"{(done.stdout + done.stderr)[-3000:]}"
            )
        (staging / _COMPLETE).write_text(version)
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(target)
        log.info(
            "fetched Apache Kafka", version=version, seconds=round(time.monotonic() - started, 1)
        )
    return target


def cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (as
    `kafka-storage.sh random-uuid` prints it)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


def server_properties(
    *, port: int, controller_port: int, log_dirs: Path, partitions: int = 8
) -> str:
    """server.properties of a combined broker + controller node for one machine.

    Replication factors are 1 (one node). `group.initial.rebalance.delay.ms=0` lets a
    worker that starts alone get its partitions at once instead of after 3 s.
    """
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={log_dirs}",
            f"num.partitions={partitions}",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=8",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=8",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            # Flushing is left to the OS page cache, as in Kafka's own defaults; acks=all
            # with one node means "written to the broker's log".
            "log.retention.hours=168",
            "",
        ]
    )


class LocalKafka:
    """One Apache Kafka node with its data under `data_dir` (formatted on first start)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        cache: Path = DEFAULT_CACHE,
        version: str = KAFKA_VERSION,
        heap: str = "512m",
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.cache = cache
        self.version = version
        self.heap = heap

    @property
    def log_dirs(self) -> Path:
        return self.data_dir / "logs"

    @property
    def server_log(self) -> Path:
        return self.data_dir / "server.log"

    def is_formatted(self) -> bool:
        return (self.log_dirs / "meta.properties").exists()

    def start(self, port: int, timeout: float = 120.0) -> ChildProcess:
        """Start the broker on 127.0.0.1:`port`; returns once it accepts connections.

        Raises BrokerUnavailable when the jars cannot be fetched, the storage cannot be
        formatted, or the broker exits or stays silent for `timeout` seconds (the tail of
        its log is in the message); DirectoryInUse when another process holds `data_dir`
        (the broker holds its lock until it exits); PortInUse when `port` is taken.
        """
        jars = fetch(self.cache, self.version)
        ensure_port_free(port, "EMBEDDED_BROKER_PORT")
        lock = DirLock(self.data_dir, "the Kafka data directory (EMBEDDED_KAFKA_DATA)")
        try:
            return self._start_locked(jars, port, timeout, lock)
        finally:
            # The broker process holds the lock from here on (it inherited the descriptor).
            lock.release()

    def _start_locked(self, jars: Path, port: int, timeout: float, lock: DirLock) -> ChildProcess:
        # The controller port is internal to this node; any free port will do each time.
        config = self.data_dir / "server.properties"
        config.write_text(
            server_properties(port=port, controller_port=free_port(), log_dirs=self.log_dirs)
        )
        log4j = self.data_dir / "log4j2.properties"
        log4j.write_text(_LOG4J2.format(log_file=self.server_log))
        classpath = f"{jars}/*"
        java = ["java", f"-Dlog4j2.configurationFile={log4j}", "-cp", classpath]
        if not self.is_formatted():
            self._format(java, config)
        child = ChildProcess(
            "kafka",
            [
                *java,
                f"-Xms{self.heap}",
                f"-Xmx{self.heap}",
                "-XX:+UseG1GC",
                "-Djava.awt.headless=true",
                "kafka.Kafka",
                str(config),
            ],
            self.data_dir / "stdout.log",
            stop_timeout=60.0,
            pass_fds=(lock.fd,),
        )
        try:
            wait_for_port(port, child.process, timeout=timeout)
            _wait_for_metadata(port, child, timeout)
        except BrokerUnavailable as exc:
            child.stop()
            raise BrokerUnavailable(f"{exc}\n{self._log_tail()}") from None
        return child

    def _format(self, java: list[str], config: Path) -> None:
        done = subprocess.run(
            # `--cluster-id=`: one id in 64 starts with "-", which argparse would take for
            # an option after a separate `-t`.
            [*java, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id()}"]
            + ["-c", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise BrokerUnavailable(
                f"formatting Kafka storage in {self.log_dirs} failed: {done.stdout}{done.stderr}"
            )
        log.info("formatted Kafka storage", log_dirs=str(self.log_dirs))

    def _log_tail(self) -> str:
        parts = []
        for path in (self.data_dir / "stdout.log", self.server_log):
            if path.exists():
                parts.append(f"--- {path}\n{path.read_text(errors='replace')[-2000:]}")
        return "\n".join(parts)


def _wait_for_metadata(port: int, child: ChildProcess, timeout: float) -> None:
    """Kafka opens its socket a moment before it can answer: wait for a real answer to an
    ApiVersions request (the first thing every client sends)."""
    # ApiVersions v0: size, api_key=18, api_version=0, correlation_id=1, client_id="probe".
    body = (18).to_bytes(2, "big") + (0).to_bytes(2, "big") + (1).to_bytes(4, "big")
    body += (5).to_bytes(2, "big") + b"probe"
    request = len(body).to_bytes(4, "big") + body
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise BrokerUnavailable(f"kafka exited with {child.process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(request)
                if len(sock.recv(8)) >= 8:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise BrokerUnavailable(f"kafka on port {port} did not answer within {timeout} s")


if __name__ == "__main__":
    # `python -m stream_app.running.kafka_local`: fetch the jars now (make kafka), print where.
    print(fetch(Path(os.environ.get("EMBEDDED_KAFKA_CACHE") or DEFAULT_CACHE)))
