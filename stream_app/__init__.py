"""insight-stream's worker: Claude over Kafka with Faust.

Sub-packages by concern, top to bottom (each imports only those below it; the rule is
checked by import-linter, contracts in pyproject.toml): `__main__` (the launcher),
`running`, `kafka`, `jobs`, `provider`, `core`. The HTTP API (`api`) sits between the
launcher and `running`; `schemas` (topic and HTTP payloads) is below them all. See
docs/architecture.md.
"""
