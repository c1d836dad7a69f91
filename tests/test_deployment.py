"""The Kafka version is one fact: the embedded broker, its pom and docker-compose agree."""

from __future__ import annotations

import re
import shutil
import subprocess
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
