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
import time
from types import FrameType

from pydantic import SecretStr

from api import create_api
from stream_app import kafka_local
from stream_app.embedded import ChildProcess, start_simulator, start_tansu
from stream_app.exceptions import BrokerUnavailable
from stream_app.logs import configure_logging, get_logger
from stream_app.server import serve
from stream_app.settings import Settings

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
    return child, {"kafka_bootstrap_servers": address, "kafka_one_record_per_batch": True}


def main() -> int:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    children: list[ChildProcess] = []
    started = time.monotonic()
    # Until the server installs its own handlers, SIGTERM must still stop the children.
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
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
        log.info(
            "starting worker and API",
            url=f"http://{settings.host}:{settings.port}",
            after_seconds=round(time.monotonic() - started, 2),
        )
        return serve(create_api(settings), settings)
    except KeyboardInterrupt:
        return 0
    except BrokerUnavailable as exc:
        log.error("the embedded broker did not start", reason=str(exc))
        return 1
    finally:
        # The worker has drained by now; the broker goes last so its final commits land.
        for child in reversed(children):
            child.stop()


if __name__ == "__main__":
    sys.exit(main())
