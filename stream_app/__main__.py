"""`python -m stream_app`: the worker and the API in one process, plus offline defaults.

Without KAFKA_BOOTSTRAP_SERVERS an embedded Tansu broker (memory storage, ephemeral) is
started; without ANTHROPIC_API_KEY the local Claude simulator is. Both are children of this
process and stop with it.
"""

from __future__ import annotations

import signal
import sys
import time
from types import FrameType

import uvicorn
from pydantic import SecretStr

from api import create_api
from stream_app.embedded import ChildProcess, start_broker, start_simulator
from stream_app.logs import configure_logging, get_logger
from stream_app.settings import Settings

log = get_logger("stream_app")


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> int:
    settings = Settings()
    configure_logging(settings.log_level)
    children: list[ChildProcess] = []
    started = time.monotonic()
    # Until uvicorn installs its own handlers, SIGTERM must still stop the children we start.
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        updates: dict[str, object] = {}
        if not settings.kafka_bootstrap_servers:
            port = settings.embedded_broker_port
            children.append(start_broker(port))
            updates["kafka_bootstrap_servers"] = f"127.0.0.1:{port}"
            updates["kafka_one_record_per_batch"] = True
            log.warning(
                "started EMBEDDED broker (Tansu, memory storage): EPHEMERAL, every topic and "
                "changelog is lost when it stops; set KAFKA_BOOTSTRAP_SERVERS for real Kafka",
                address=f"127.0.0.1:{port}",
            )
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
        uvicorn.run(
            create_api(settings),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level.lower(),
            timeout_graceful_shutdown=30,
        )
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        for child in reversed(children):
            child.stop()


if __name__ == "__main__":
    sys.exit(main())
