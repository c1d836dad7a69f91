"""Settings from the environment and `.env`: an empty value means "not set" for every one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stream_app.core.settings import Settings
from stream_app.running.testing import ROOT, SERVICE_ENV_PREFIXES

FIELDS = sorted(Settings.model_fields)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No setting from this shell, and a working directory without a developer's `.env`."""
    for name in FIELDS:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_every_empty_variable_leaves_the_default(clean_env: pytest.MonkeyPatch) -> None:
    defaults = Settings()
    for name in FIELDS:
        clean_env.setenv(name.upper(), "")
    assert Settings() == defaults


@pytest.mark.parametrize(
    "name,default",
    [("KAFKA_PARTITIONS", 8), ("BATCH_MAX_CONCURRENT_LLM_CALLS", 5), ("LOG_LEVEL", "INFO")],
)
def test_empty_values_named_in_the_issue(
    clean_env: pytest.MonkeyPatch, name: str, default: object
) -> None:
    clean_env.setenv(name, "  ")
    assert getattr(Settings(), name.lower()) == default


def test_empty_values_in_a_dotenv_file(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "KAFKA_PARTITIONS=\nBATCH_MAX_CONCURRENT_LLM_CALLS=\nLOG_LEVEL=\nCLAUDE_MODEL=x-model\n"
    )
    settings = Settings()
    assert (settings.kafka_partitions, settings.batch_max_concurrent_llm_calls) == (8, 5)
    assert settings.log_level == "INFO"
    assert settings.claude_model == "x-model"  # a set value in the same file still counts


def test_set_values_are_still_validated(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("KAFKA_PARTITIONS", "0")
    with pytest.raises(ValueError, match="kafka_partitions"):
        Settings()


def test_invalid_settings_stop_the_launcher_with_one_line_each_and_no_secret(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(SERVICE_ENV_PREFIXES)} | {
        "PYTHONPATH": str(ROOT),
        "KAFKA_PARTITIONS": "abc",
        "BATCH_MAX_CONCURRENT_LLM_CALLS": "0",
        "API_KEYS": "alice:ok,zq-very-private",
        "ANTHROPIC_API_KEY": "zq-also-private",
        "PORT": "70000",
    }
    done = subprocess.run(
        [sys.executable, "-m", "stream_app"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr
    assert all(line.startswith("error: invalid configuration: ") for line in lines), lines
    named = {line.split(": ")[2] for line in lines}
    expected = {"KAFKA_PARTITIONS", "BATCH_MAX_CONCURRENT_LLM_CALLS", "PORT", "API_KEYS"}
    assert expected <= named, lines
    assert "private" not in done.stderr + done.stdout
