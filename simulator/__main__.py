"""``python -m simulator``: serve the simulator over HTTP until interrupted."""

from __future__ import annotations

import argparse
import logging
import socket

import uvicorn

from simulator.app import create_app
from simulator.config import SimulatorConfig

log = logging.getLogger("simulator")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m simulator", description="Local Claude Messages API simulator."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=8090, help="0 picks a free port (the log line names it)"
    )
    parser.add_argument(
        "--rpm", type=int, default=None, help="requests per minute (default: unlimited)"
    )
    parser.add_argument("--itpm", type=int, default=None, help="input tokens per minute")
    parser.add_argument("--otpm", type=int, default=None, help="output tokens per minute")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--latency-jitter-ms", type=float, default=0.0)
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = SimulatorConfig(
        requests_per_minute=args.rpm,
        input_tokens_per_minute=args.itpm,
        output_tokens_per_minute=args.otpm,
        latency_ms=args.latency_ms,
        latency_jitter_ms=args.latency_jitter_ms,
        failure_rate=args.failure_rate,
        seed=args.seed,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # Binding here (not inside uvicorn) lets the log line report the real port for --port 0.
    sock = socket.create_server((args.host, args.port))
    host, port = sock.getsockname()[:2]
    log.info(
        "Claude API simulator listening on http://%s:%d (%s)", host, port, config.model_dump_json()
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(config), log_level="warning", access_log=False, lifespan="off")
    )
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
