"""Local simulator of the Anthropic Messages API for offline runs and tests."""

from simulator.app import create_app
from simulator.config import SimulatorConfig
from simulator.testing import run_simulator

__all__ = ["SimulatorConfig", "create_app", "run_simulator"]
