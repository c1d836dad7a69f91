"""One process per data directory: an exclusive, non-blocking lock on a file inside it.

Two `make run` in one folder would otherwise share the broker's log directories and the
worker's RocksDB stores: the second Apache Kafka rewrites the first one's metadata, and the
second worker's state repair drops stores the first still writes. The lock is a POSIX
`flock` on `<dir>/.lock`: the kernel releases it when every process holding the open file
has exited, so a crashed owner never leaves a stale lock behind. A child process started
with the lock's descriptor in `pass_fds` holds it too, for as long as it lives.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from stream_app.core.exceptions import DirectoryInUse

LOCK_NAME = ".lock"


class DirLock:
    """An exclusive lock on `directory` (created if missing), held until `release()`."""

    def __init__(self, directory: Path, what: str) -> None:
        """Take the lock at once. `what` names the directory's use in the error message.

        Raises DirectoryInUse when another live process holds it.
        """
        self.directory = directory.resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / LOCK_NAME
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            self._fd = None
            raise DirectoryInUse(
                f"{what} {self.directory} is in use by another process (pid {holder}); "
                "stop it first, or give this instance its own directory"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    @property
    def fd(self) -> int:
        """The locked file's descriptor: pass it to a child (`pass_fds`) to share the lock."""
        if self._fd is None:
            raise RuntimeError("the lock was released")
        return self._fd

    def release(self) -> None:
        """Give the lock up (children given the descriptor still hold it). Idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
