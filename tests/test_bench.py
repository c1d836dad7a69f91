"""A short run of the utilization benchmark (`make bench`), so the README's figures are
checked by the suite, loosely: the budget is used, with no 429s and no failed record.
(The pace bounds are checked with more margin in test_service and test_cluster.)"""

from __future__ import annotations

from pathlib import Path

from bench.utilization import Options, run_scenario


def test_one_worker_uses_the_budget(broker: str, tmp_path: Path) -> None:
    # 10 s measured after 3 s of warm-up (the README's run: 40 s after 10 s). The job is
    # 1.3 times what the budget drains in that time, so supply never runs out. One worker:
    # two double the start-up time, and the shared budget has its own test.
    opts = Options(workers=(1,), rpm=300, seconds=10.0, warmup=3.0, json=True)
    result = run_scenario(1, opts, broker, tmp_path)
    print(result)
    assert result.completed and result.failed_count == 0
    assert result.window_covered
    assert result.rate_limited == 0
    # The README measures ~100 %; a short window on a loaded machine may lose a slot or two.
    assert result.utilization >= 0.85, result
