"""Structured log lines: JSON objects for collectors, key="value" text for people."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from stream_app.core.logs import (
    JsonFormatter,
    RepeatFilter,
    TextFormatter,
    configure_logging,
    get_logger,
    wants_json,
)


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


def test_json_lines_carry_the_fields(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.handlers[0].setFormatter(JsonFormatter())
    log = get_logger("test.logs")
    log.info("retrying record", job="j1", index=3, partition=2, delay=0.5)
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("internal error", job_id="j2")
    log.debug("not shown", job_id="j3")
    first, second = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert first["msg"] == "retrying record" and first["level"] == "info"
    assert first["logger"] == "test.logs" and first["ts"].endswith("+00:00")
    # `job=` from older call sites is written as job_id, like everywhere else.
    assert (first["job_id"], first["index"], first["partition"], first["delay"]) == (
        "j1",
        3,
        2,
        0.5,
    )
    assert second["level"] == "error" and second["job_id"] == "j2"
    assert "ValueError: boom" in second["exc"]


def test_text_lines_for_people(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.handlers[0].setFormatter(TextFormatter())
    get_logger("test.logs").info("budget share", partitions="2/4", cluster_rpm=50)
    line = stream.getvalue().strip()
    assert line.endswith('INFO test.logs: budget share partitions="2/4" cluster_rpm=50')


def test_uvicorn_access_lines_become_fields() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        "",
        0,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/api/v1/batch/j/status", "1.1", 200),
        None,
    )
    line = json.loads(JsonFormatter().format(record))
    assert (line["method"], line["path"], line["status"]) == ("GET", "/api/v1/batch/j/status", 200)


def test_json_unless_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert wants_json("auto", io.StringIO()) and not wants_json("auto", Terminal())
    assert wants_json("json", Terminal()) and not wants_json("text", io.StringIO())


def test_repeated_lines_are_held_back_and_counted() -> None:
    repeats = RepeatFilter(window=10.0)

    def record(msg: str, at: float) -> logging.LogRecord:
        line = logging.LogRecord("aiokafka", logging.ERROR, __file__, 1, msg, None, None)
        line.created = at
        return line

    passed = [repeats.filter(record("Unable connect to node %s", t)) for t in (0.0, 1.0, 9.9)]
    assert passed == [True, False, False]
    assert repeats.filter(record("another message", 2.0))  # kinds are counted apart
    later = record("Unable connect to node %s", 10.5)
    assert repeats.filter(later) and later.repeated == 2


def test_the_process_handler_holds_back_repeats_of_aiokafka_and_asyncio(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """asyncio logs every write to a connection its client closed (an aborted download):
    one line of a kind per window gets through, as for aiokafka's reconnection errors."""
    root = logging.getLogger()
    kept = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in ("aiokafka", "asyncio")}
    configure_logging("INFO", "json")
    try:
        for _ in range(50):
            logging.getLogger("asyncio").warning("socket.send() raised exception.")
            logging.getLogger("aiokafka").error("Unable connect to node %s", 1)
            get_logger("stream_app.test").warning("each of ours", n=1)
    finally:
        root.handlers[:], root.level = kept
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    lines = capsys.readouterr().err.splitlines()
    assert sum("socket.send() raised exception." in line for line in lines) == 1
    assert sum("Unable connect to node" in line for line in lines) == 1
    assert sum("each of ours" in line for line in lines) == 50
