"""One process per data directory: the lock is exclusive, names its holder, is shared with
a child given its descriptor, and goes away with its holders (no stale lock files)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stream_app.core.exceptions import DirectoryInUse
from stream_app.running.dir_lock import DirLock


def test_a_second_lock_on_the_same_directory_is_refused_until_the_first_is_released(
    tmp_path: Path,
) -> None:
    first = DirLock(tmp_path / "state", "the state directory (SETTING)")
    with pytest.raises(DirectoryInUse) as refused:
        DirLock(tmp_path / "state", "the state directory (SETTING)")
    assert "(SETTING)" in str(refused.value) and "pid" in str(refused.value)
    DirLock(tmp_path / "other", "another directory").release()  # other folders are free
    first.release()
    first.release()  # idempotent
    DirLock(tmp_path / "state", "the state directory").release()


def test_a_child_given_the_descriptor_holds_the_lock_until_it_exits(tmp_path: Path) -> None:
    lock = DirLock(tmp_path, "the data directory")
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"],
        stdin=subprocess.PIPE,
        pass_fds=(lock.fd,),
    )
    try:
        lock.release()
        with pytest.raises(DirectoryInUse):
            DirLock(tmp_path, "the data directory")
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
    DirLock(tmp_path, "the data directory").release()
