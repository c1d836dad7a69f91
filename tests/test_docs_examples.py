"""The command examples of README.md and docs/*.md, run against the real service, so the
guide cannot drift from what the service does.

Convention for writers: a fenced block tagged `sh` is an example a user may paste, and it
is run here (all `sh` blocks of one file in order, as one bash script with `set -euo
pipefail`, in a scratch directory where `examples/` is the repository's). `localhost:8000`
is the test service's address. Blocks that need another setup (`make run`, `docker
compose`, `API_KEYS`) are tagged `shell`; transcripts are `console`. Both are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.testing import SimulatorHandle
from tests.conftest import StartService

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```sh[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def sh_blocks(path: Path) -> list[str]:
    """The `sh` blocks of a Markdown file, in order."""
    return _BLOCK.findall(path.read_text(encoding="utf-8"))


def test_the_guide_has_runnable_examples_and_every_example_file_exists() -> None:
    blocks = sh_blocks(ROOT / "README.md")
    assert len(blocks) >= 8
    commands = "\n".join(blocks)
    for needed in ("insight submit", "insight watch", "insight results", "--task", "--max-cost"):
        assert needed in commands, needed
    for path in DOCUMENTS:
        for block in sh_blocks(path):
            for name in re.findall(r"examples/[\w.-]+", block):
                assert (ROOT / name).is_file(), f"{path.name}: {name} does not exist"


def test_every_file_the_docs_name_exists() -> None:
    for path in DOCUMENTS:
        named = re.findall(
            r"`((?:stream_app|api|schemas|cli|simulator|bench|tests|deploy|examples)/[\w/.-]+)`",
            path.read_text(encoding="utf-8"),
        )
        missing = sorted({name for name in named if not (ROOT / name).exists()})
        assert not missing, f"{path.name} names files that do not exist: {missing}"


def test_readme_and_docs_say_no_history() -> None:
    """Docs are for users: no issue numbers, rounds or commit hashes."""
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"\bissue \d+|\(issue|\bround\)|third round|second round", text), (
            path.name
        )
        assert not re.search(r"\b(?:commit|at|after|before) [0-9a-f]{7,12}\b", text), path.name
    assert len((ROOT / "README.md").read_text().splitlines()) <= 320


@pytest.mark.parametrize("document", [d for d in DOCUMENTS if sh_blocks(d)], ids=lambda d: d.name)
def test_the_examples_run_against_the_service(
    document: Path, start: StartService, simulator: SimulatorHandle, tmp_path: Path
) -> None:
    # Slow enough that a job is still running when an example cancels it right after the
    # submit (the CLI itself takes seconds to start on a loaded machine); fast enough for
    # the whole guide to run in a few minutes.
    simulator.configure(latency_ms=4000)
    service = start()
    address = service.base_url.removeprefix("http://")
    script = "\n".join(sh_blocks(document))
    script = script.replace("localhost:8000", address).replace("127.0.0.1:8000", address)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSIGHT_")}
    env["INSIGHT_URL"] = service.base_url
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-xc", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(done.stdout)
    print(done.stderr)
    assert done.returncode == 0, f"{document.name}: {done.stderr[-3000:]}"
    assert "error:" not in done.stderr, done.stderr[-3000:]
