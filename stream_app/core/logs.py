"""Structured log lines on the standard library's logging.

`log.info("retrying", job="j1", index=3)` keeps its fields apart from the message; the
handler writes them as one JSON object per line when its stream is not a terminal (for
log collectors), or as `retrying job_id="j1" index=3` when it is (for people).
`LOG_FORMAT` (json, text, auto) overrides the choice.

Fields name jobs, records and partitions (`job_id`, `index`, `partition`); callers never
pass a secret or a record's text.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any, Literal, TextIO

LogFormat = Literal["auto", "json", "text"]
# One name for one thing in every line: older call sites say `job=`.
_RENAMED = {"job": "job_id"}
_RESERVED = {"exc_info", "stack_info", "stacklevel"}


class FieldLogger(logging.LoggerAdapter[logging.Logger]):
    """`log.info("retrying", job_id="j1", index=3)`: a message and its fields."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        std = {k: kwargs.pop(k) for k in _RESERVED if k in kwargs}
        fields = {_RENAMED.get(key, key): value for key, value in kwargs.items()}
        std.setdefault("stacklevel", 3)
        self.logger.log(level, msg, *args, extra={"fields": fields}, **std)

    def debug(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.log(logging.DEBUG, msg, *args, **kwargs)

    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.log(logging.INFO, msg, *args, **kwargs)

    def warning(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.log(logging.WARNING, msg, *args, **kwargs)

    def error(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.log(logging.ERROR, msg, *args, **kwargs)

    def exception(self, msg: object, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("exc_info", True)
        self.log(logging.ERROR, msg, *args, **kwargs)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    found = _own_fields(record)
    repeated = getattr(record, "repeated", None)  # set by RepeatFilter
    return {**found, "repeated": repeated} if repeated else found


def _own_fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    if isinstance(fields, dict):
        return fields
    if record.name == "uvicorn.access" and isinstance(record.args, tuple):
        # uvicorn's access line: client, method, path, HTTP version, status.
        if len(record.args) == 5:
            client, method, path, _, status = record.args
            return {"client": client, "method": method, "path": path, "status": status}
    return {}


def _format_value(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


class TextFormatter(logging.Formatter):
    """`2026-11-29 10:00:00,123 INFO stream_app.kafka.pipeline: message key="value" n=3`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (stdlib name)
        line = super().formatMessage(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            line += " " + " ".join(f"{k}={_format_value(v)}" for k, v in fields.items())
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: `{"ts", "level", "logger", "msg", ...fields, "exc"?}`."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _fields(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class RepeatFilter(logging.Filter):
    """Lets one record per (logger, message template) through every `window` seconds.

    While a broker is unreachable aiokafka logs each reconnection attempt at ERROR, a few
    hundred lines a minute; one line per kind per window says the same. The next line of a
    kind that got through says how many were held back (`repeated`).
    """

    def __init__(self, window: float = 10.0) -> None:
        super().__init__()
        self.window = window
        self._last: dict[tuple[str, object], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        now = record.created
        seen = self._last.get(key)
        if seen is not None and now - seen[0] < self.window:
            self._last[key] = (seen[0], seen[1] + 1)
            return False
        if seen is not None and seen[1]:
            record.repeated = seen[1]
        self._last[key] = (now, 0)
        if len(self._last) > 1000:  # templates are few; bound it anyway
            self._last.clear()
        return True


def get_logger(name: str) -> FieldLogger:
    return FieldLogger(logging.getLogger(name), {})


def wants_json(log_format: LogFormat, stream: TextIO) -> bool:
    """JSON lines unless asked for text, or (auto) when the stream is a terminal."""
    if log_format == "auto":
        return not stream.isatty()
    return log_format == "json"


def configure_logging(level: str, log_format: LogFormat = "auto") -> None:
    """Every logger of the process (ours, uvicorn's, Faust's) writes through one handler on
    stderr, in JSON lines or text (see the module's docstring)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if wants_json(log_format, sys.stderr) else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # Faust and aiokafka are chatty at INFO about every rebalance step.
    for noisy in ("aiokafka", "faust", "mode", "httpx", "httpx2", "anthropic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))
    # ... and aiokafka repeats itself while the broker is unreachable; asyncio logs every
    # write to a connection the client has closed (an aborted download of results.ndjson:
    # one line per chunk written before the stream learns of it, 175 for one aborted
    # download of 5,000 results, found by the new-user trial).
    for repeats in _REPEATS:
        handler.addFilter(repeats)


class _Only(logging.Filter):
    def __init__(self, prefix: str, inner: logging.Filter) -> None:
        super().__init__()
        self.prefix = prefix
        self.inner = inner

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(self.prefix) or bool(self.inner.filter(record))


_REPEATS = (_Only("aiokafka", RepeatFilter()), _Only("asyncio", RepeatFilter()))
