"""`python -m cli` runs the `insight` command."""

from cli.main import run

run()
