"""The base every layer uses: settings (the one Settings object, built at the entry point
from the environment and `.env`), structured logs, Prometheus metrics and the root
exception. It imports nothing of the service (only `schemas`).
"""
