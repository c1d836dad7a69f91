"""Faults together: worker SIGKILLs and a SIGTERM, a broker restart and a provider outage
while several jobs of three tenants run on two workers (bench/soak.py), and every guarantee
checked afterwards. `CHAOS_SEED` picks another schedule; `make soak` runs many."""

from __future__ import annotations

import os
from pathlib import Path

from bench.soak import row, run_soak
from simulator.testing import SimulatorHandle
from tests.conftest import PrivateBroker

SEED = int(os.environ.get("CHAOS_SEED", "1"))


def test_faults_together_lose_nothing_count_everything_once_and_pay_little(
    simulator: SimulatorHandle, private_broker: PrivateBroker, tmp_path: Path
) -> None:
    outcome = run_soak(
        SEED, tmp_path, simulator, lambda port, data: private_broker(port, data=data)
    )
    print(" | ".join(row(outcome)))
    assert outcome.all_problems == []
    assert outcome.hung == 0 and outcome.missing == 0
