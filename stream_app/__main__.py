"""`python -m stream_app`: the worker and the API in one process, plus offline defaults.

Without KAFKA_BOOTSTRAP_SERVERS an embedded broker is started (EMBEDDED_BROKER: Apache
Kafka with its data in EMBEDDED_KAFKA_DATA, durable; or Tansu, memory only); without
ANTHROPIC_API_KEY the local Claude simulator is. Both are children of this process in their
own session: a Ctrl-C reaches only this process, which stops in order: the HTTP server and
the worker drain first, then the simulator and the broker stop.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType


def _stop_quietly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


# First of all, before the slow imports below: a Ctrl-C or SIGTERM during start-up ends the
# process quietly (nothing has started yet), and SIGINT works even when a parent shell
# that backgrounded us handed it down ignored. main() installs the real handlers.
signal.signal(signal.SIGINT, _stop_quietly)
signal.signal(signal.SIGTERM, _stop_quietly)

import os  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402

from pydantic import SecretStr, ValidationError  # noqa: E402

from api import create_api  # noqa: E402
from stream_app.core.collector import tune_garbage_collector  # noqa: E402
from stream_app.core.exceptions import BrokerUnavailable, StartupFailed  # noqa: E402
from stream_app.core.logs import configure_logging, get_logger  # noqa: E402
from stream_app.core.settings import TANSU_REBALANCE_TIMEOUT_SECONDS, Settings  # noqa: E402
from stream_app.running import kafka_local  # noqa: E402
from stream_app.running.dir_lock import DirLock  # noqa: E402
from stream_app.running.embedded import (  # noqa: E402
    ChildProcess,
    ensure_port_free,
    start_simulator,
    start_tansu,
    watch_children,
)
from stream_app.running.server import exit_after, exit_now, serve  # noqa: E402

log = get_logger("stream_app")


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def choose_broker(settings: Settings) -> str:
    """`kafka` or `tansu` for EMBEDDED_BROKER (`auto` picks Kafka when it can run here)."""
    if settings.embedded_broker != "auto":
        return settings.embedded_broker
    ok, why = kafka_local.can_run(settings.embedded_kafka_cache)
    if ok:
        return "kafka"
    log.warning("cannot run the embedded Apache Kafka; falling back to Tansu", reason=why)
    return "tansu"


def start_embedded_broker(settings: Settings) -> tuple[ChildProcess, dict[str, object]]:
    """Start the broker EMBEDDED_BROKER names; returns it and the settings it implies."""
    port = settings.embedded_broker_port
    address = f"127.0.0.1:{port}"
    if choose_broker(settings) == "kafka":
        started = time.monotonic()
        node = kafka_local.LocalKafka(
            settings.embedded_kafka_data,
            cache=settings.embedded_kafka_cache,
            heap=settings.embedded_kafka_heap,
        )
        fresh = not node.is_formatted()
        child = node.start(port)
        log.info(
            "started EMBEDDED Apache Kafka (durable: jobs, results and offsets survive a restart)",
            version=kafka_local.KAFKA_VERSION,
            address=address,
            data=str(node.data_dir),
            new_storage=fresh,
            after_seconds=round(time.monotonic() - started, 1),
        )
        return child, {"kafka_bootstrap_servers": address}
    child = start_tansu(port)
    log.warning(
        "started EMBEDDED broker (Tansu, memory storage): EPHEMERAL, every topic and "
        "changelog is lost when it stops; install Java 17 + Maven for a durable Apache "
        "Kafka, or set KAFKA_BOOTSTRAP_SERVERS",
        address=address,
    )
    return child, {
        "kafka_bootstrap_servers": address,
        "kafka_one_record_per_batch": True,
        # Tansu answers JoinGroup only after the rebalance timeout: keep it short there.
        "kafka_rebalance_timeout_seconds": TANSU_REBALANCE_TIMEOUT_SECONDS,
    }


def check_free(settings: Settings) -> None:
    """Fail fast, before any child starts, when another instance uses this one's state
    directory or one of its ports, or HOST cannot be bound (StartupFailed says which and
    the setting to change). The worker takes the state directory's lock for good when it
    starts; the broker takes EMBEDDED_KAFKA_DATA's."""
    DirLock(
        settings.batch_job_storage_path, "the worker's state directory (BATCH_JOB_STORAGE_PATH)"
    ).release()
    try:
        socket.getaddrinfo(settings.host, settings.port)
    except OSError as exc:
        raise StartupFailed(f"HOST {settings.host!r} cannot be used: {exc}") from None
    ensure_port_free(settings.port, "PORT")
    if not settings.kafka_bootstrap_servers:
        ensure_port_free(settings.embedded_broker_port, "EMBEDDED_BROKER_PORT")
    if settings.anthropic_api_key is None:
        ensure_port_free(settings.simulator_port, "SIMULATOR_PORT")


def load_settings() -> Settings | None:
    """Settings from the environment (and .env); None, after one line per invalid
    variable on stderr, when some are invalid."""
    try:
        return Settings()
    except ValidationError as exc:
        for error in exc.errors():
            name = "_".join(str(part) for part in error["loc"]).upper() or "settings"
            given = error.get("input")
            # Never echo what might be a secret (ANTHROPIC_API_KEY, API_KEYS).
            plain = isinstance(given, str | int | float) and "KEY" not in name
            shown = f" (got {given!r})" if plain else ""
            print(f"error: invalid configuration: {name}: {error['msg']}{shown}", file=sys.stderr)
        return None


def main() -> int:
    loaded = load_settings()
    if loaded is None:
        return 2
    settings = loaded
    configure_logging(settings.log_level, settings.log_format)
    tune_garbage_collector()
    children: list[ChildProcess] = []
    started = time.monotonic()
    # Until the server installs its own handlers, SIGTERM and SIGINT must still stop the
    # children (SIGINT may arrive ignored from a parent shell that backgrounded us).
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    watching = None

    def stop_children(timeout: float | None = None) -> None:
        for child in reversed(children):
            child.stop(timeout)

    try:
        check_free(settings)
        updates: dict[str, object] = {}
        if not settings.kafka_bootstrap_servers:
            child, implied = start_embedded_broker(settings)
            children.append(child)
            updates.update(implied)
        if settings.anthropic_api_key is None:
            children.append(start_simulator(settings.simulator_port, rpm=None))
            updates["anthropic_api_key"] = SecretStr("simulator")
            updates["anthropic_base_url"] = f"http://127.0.0.1:{settings.simulator_port}"
            log.warning(
                "ANTHROPIC_API_KEY is unset: using the local Claude SIMULATOR (extractive "
                "summaries, no real model)",
                address=updates["anthropic_base_url"],
            )
        settings = settings.model_copy(update=updates)
        api = create_api(settings)

        def child_exited(child: ChildProcess) -> None:
            reason = f"the embedded {child.name} exited with code {child.process.returncode}"
            log.error("stopping: the service cannot work without it", reason=reason)
            api.state.fatal = reason
            os.kill(os.getpid(), signal.SIGTERM)
            # Nothing can be committed without the broker: waiting for the bounded flush
            # and Faust's stop (a minute) would only delay the restart. Exit as a crash
            # would; uncommitted records run again after it (tests/test_crash_recovery.py).
            exit_after(CHILD_DEATH_GRACE_SECONDS, 1, before=lambda: stop_children(5.0))

        watching = watch_children(children, child_exited)
        log.info(
            "starting worker and API",
            url=f"http://{settings.host}:{settings.port}",
            after_seconds=round(time.monotonic() - started, 2),
        )
        return serve(api, settings)
    except KeyboardInterrupt:
        return 0
    except (BrokerUnavailable, StartupFailed) as exc:
        log.error("cannot start", reason=str(exc))
        return 3
    finally:
        if watching is not None:
            watching.set()
        # The worker has drained by now; the broker goes last so its final commits land.
        stop_children()


# After the embedded broker (or simulator) died: time for open requests to be answered.
CHILD_DEATH_GRACE_SECONDS = 5.0


if __name__ == "__main__":
    exit_now(main())
