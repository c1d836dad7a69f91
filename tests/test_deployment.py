"""The Kafka version is one fact: the embedded broker, its pom and docker-compose agree."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from stream_app.kafka_local import KAFKA_VERSION, POM

ROOT = Path(__file__).resolve().parent.parent


def compose_client() -> list[str] | None:
    """`docker compose` or `docker-compose`, when installed (no engine is needed)."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if (
            shutil.which(command[0])
            and subprocess.run([*command, "version"], capture_output=True, check=False).returncode
            == 0
        ):
            return command
    return None


def test_pom_and_compose_use_the_kafka_version_the_suite_runs_on() -> None:
    pom = re.search(r"<kafka.version>([^<]+)</kafka.version>", POM.read_text())
    assert pom is not None and pom.group(1) == KAFKA_VERSION
    compose_file = ROOT / "docker-compose.yml"
    images = re.findall(r"image:\s*apache/kafka:(\S+)", compose_file.read_text())
    assert images == [KAFKA_VERSION]
    client = compose_client()
    if client is not None:  # not installed on this project's machines; users may have it
        done = subprocess.run(
            [*client, "-f", str(compose_file), "config", "--quiet"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr


def dockerfile_copies() -> list[tuple[str, str]]:
    """(source, destination) of every COPY line of the Dockerfile."""
    copies = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words and words[0] == "COPY":
            *sources, dest = words[1:]
            copies += [(source, dest) for source in sources]
    return copies


def test_the_image_builds_the_package_from_exactly_what_the_dockerfile_copies(
    tmp_path: Path,
) -> None:
    # What `pip install .` sees inside the image: only the files COPY brought in.
    context = tmp_path / "app"
    context.mkdir()
    for source, dest in dockerfile_copies():
        target = context / dest if not dest.endswith("/") and dest != "./" else context
        if (ROOT / source).is_dir():
            shutil.copytree(
                ROOT / source, context / dest, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy(ROOT / source, target if target != context else context / source)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-w",
            str(tmp_path / "dist"),
            str(context),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for package in ("stream_app", "api", "schemas", "simulator", "cli"):
        assert f"{package}/__init__.py" in names, package
    assert "stream_app/__main__.py" in names
    # The web page's files travel as package data.
    for page_file in ("index.html", "app.js", "style.css"):
        assert f"api/static/{page_file}" in names, page_file
