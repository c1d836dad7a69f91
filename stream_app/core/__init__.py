"""The base every layer uses: settings (the one Settings object, built at the entry point
from the environment and `.env`), structured logs, Prometheus metrics, the root
exception and the garbage collector's tuning. It imports nothing of the service (only `schemas`).
"""
