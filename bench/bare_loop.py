"""The yardstick of bench.overhead: the same SDK calls the worker makes, in a bare loop.

`python -m bench.bare_loop --base-url URL --records N --concurrency C` sends one
`messages.create` per record (AsyncAnthropic, `max_retries=0`, the default task's model,
max_tokens, system prompt and output format, as stream_app.provider.client sends them) with C
calls in flight, reads each answer as the worker does (`with_raw_response`, then the body as
JSON: `stream_app.provider.client.read_message`),
and prints `{"records", "ok", "seconds", "cpu_seconds"}` as JSON (`cpu_seconds`: this process's
CPU time, user and system, during the calls alone). It runs in a process of its own, as a
worker does, so both compete alike with the simulator for the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence

import anthropic

from stream_app.core.settings import Settings
from stream_app.provider.client import read_message
from stream_app.provider.request import prepare_task


def record_text(index: int) -> str:
    """The text of record `index` in every overhead run; the simulator's request log keeps
    the start of it, so "Record <index>:" ties a logged call to its record."""
    return (
        f"Record {index}: the quarterly report for region {index % 7} notes steady growth, "
        f"two supplier delays and a hiring plan for {10 + index % 20} engineers."
    )


async def bare_loop(base_url: str, records: int, concurrency: int) -> tuple[int, float, float]:
    """(calls answered 200, seconds for all `records` calls, CPU seconds they took)."""
    # The service's defaults, not this shell's environment (the workers get none of it).
    fields = Settings.model_fields
    task = prepare_task(
        None,
        name=None,
        default_model=fields["claude_model"].default,
        default_max_tokens=fields["claude_max_tokens"].default,
    )
    client = anthropic.AsyncAnthropic(
        api_key="sk-bench-not-a-secret", base_url=base_url, max_retries=0, timeout=60.0
    )
    queue = iter(range(records))
    ok = 0

    async def slot() -> None:
        nonlocal ok
        for index in queue:
            raw = await client.messages.with_raw_response.create(**task.request(record_text(index)))
            message = read_message(await raw.read(), raw.http_response)
            ok += 1 if message["content"] else 0

    began, cpu_began = time.monotonic(), time.process_time()
    try:
        await asyncio.gather(*(slot() for _ in range(concurrency)))
    finally:
        await client.close()
    return ok, time.monotonic() - began, time.process_time() - cpu_began


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_loop", description=__doc__)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    ok, seconds, cpu = asyncio.run(bare_loop(args.base_url, args.records, args.concurrency))
    print(json.dumps({"records": args.records, "ok": ok, "seconds": seconds, "cpu_seconds": cpu}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
