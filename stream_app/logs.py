"""Log lines with `key="value"` fields, on the standard library's logging."""

from __future__ import annotations

import logging
from typing import Any


class FieldLogger(logging.LoggerAdapter[logging.Logger]):
    """`log.info("retrying", job="j1", index=3)` -> `retrying job="j1" index=3`."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        std = {k: kwargs.pop(k) for k in ("exc_info", "stack_info", "stacklevel") if k in kwargs}
        if kwargs:
            msg = f"{msg} " + " ".join(f"{key}={_format(value)}" for key, value in kwargs.items())
        self.logger.log(level, msg, *args, **std)

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


def _format(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


def get_logger(name: str) -> FieldLogger:
    return FieldLogger(logging.getLogger(name), {})


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Faust and aiokafka are chatty at INFO about every rebalance step.
    for noisy in ("aiokafka", "faust", "mode", "httpx", "httpx2", "anthropic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))
