"""The API keys: API_KEYS (`name:secret,...`) and API_KEYS_FILE (the same items, one a line
or comma-separated; blank lines and `#` comments are ignored), both at once.

The file is read again when it changes (its modification time or size, checked at most
once a second, on a request) and at SIGHUP, so a key is added or withdrawn without a
restart and without the secrets sitting in the process environment. Several secrets may
name the same client (tenant): rotate a key by adding the new secret, moving the clients
to it, then removing the old one. A file that cannot be read or parsed on a reload leaves
the keys as they were (logged, without its content).
"""

from __future__ import annotations

import time
from pathlib import Path

from stream_app.core.logs import get_logger
from stream_app.core.settings import Settings, parse_api_keys

log = get_logger(__name__)

_CHECK_EVERY_SECONDS = 1.0


def read_keys_file(path: Path) -> dict[str, str]:
    """secret -> client name from the file. Raises OSError (unreadable) or ValueError (an
    item is not `name:secret`; the message never holds a secret)."""
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            items.append(line)
    return parse_api_keys(",".join(items))


class KeyTable:
    """secret -> client name, current. Empty: the API is open to anyone."""

    def __init__(self, settings: Settings) -> None:
        self._fixed = settings.api_key_table()
        self._path = settings.api_keys_file
        self._from_file: dict[str, str] = {}
        self._seen: tuple[float, int] | None = None
        self._checked = 0.0
        if self._path is not None:
            # At start an unreadable or malformed file stops the service (raises).
            self._from_file = read_keys_file(self._path)
            self._seen = self._stamp()
        self._merge()

    def _merge(self) -> None:
        self._table = {**self._from_file, **self._fixed}

    @property
    def open(self) -> bool:
        return not self._table

    def clients(self) -> int:
        return len(set(self._table.values()))

    def current(self) -> dict[str, str]:
        """The table, the file read again first when it changed."""
        now = time.monotonic()
        if self._path is not None and now - self._checked >= _CHECK_EVERY_SECONDS:
            self._checked = now
            if self._stamp() != self._seen:
                self.reload()
        return self._table

    def reload(self) -> None:
        """Read API_KEYS_FILE again (at SIGHUP, or when it changed)."""
        if self._path is None:
            return
        stamp = self._stamp()
        try:
            keys = read_keys_file(self._path)
        except (OSError, ValueError) as exc:
            log.error(
                "API_KEYS_FILE not reloaded; the keys stay as they were",
                reason=type(exc).__name__ if isinstance(exc, OSError) else str(exc),
            )
            self._seen = stamp
            return
        self._seen = stamp
        self._from_file = keys
        self._merge()
        log.info("API keys reloaded", keys=len(self._table), clients=self.clients())

    def _stamp(self) -> tuple[float, int] | None:
        try:
            info = self._path.stat() if self._path is not None else None
        except OSError:
            return None
        return (info.st_mtime, info.st_size) if info is not None else None
