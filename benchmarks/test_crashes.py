"""Scenario 7: jobs lost per tier when the process is killed mid-run.

``benchmarks/crash.py`` runs a child process that enqueues jobs and records each
acknowledgement and each run in a ledger, SIGKILLs it mid-run, and for final restarts
a queue on the same path; naive and improved have no path, so their queue is gone.
Several seeds kill at different moments.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from benchmarks import crash
from benchmarks.conftest import Benchmark, Mode, measure

SEEDS = [0, 1, 2]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("system", ["naive", "improved", "final"])
def test_crash(benchmark: Benchmark, mode: Mode, tmp_path: Path, system: str, seed: int) -> None:
    (outcome,) = measure(
        benchmark,
        "7 crashes",
        1,
        lambda: crash.kill_mid_run(system, tmp_path, jobs=mode.crash_jobs, seed=seed),
    )
    benchmark.extra_info.update(system=system, seed=seed, **asdict(outcome))
