"""Benchmarks that run the real service as black-box subprocesses (`python -m bench.<name>`)."""
