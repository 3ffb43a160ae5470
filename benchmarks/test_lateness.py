"""Scenario 9: how late scheduled jobs start, in memory and on SQLite (``benchmarks/lateness.py``).

1,000 jobs with a ``run_at`` due within one second (the target's figure), and the same
1,000 due at one instant (how long the workers take to drain them: for the record).
The round with the median p99 counts.
"""

from __future__ import annotations

from dataclasses import asdict

import pytest

from benchmarks.conftest import Benchmark, Mode, measure
from benchmarks.lateness import lateness

CASES = [(store, spread) for spread in (1.0, 0.0) for store in ("memory", "sqlite")]


@pytest.mark.parametrize(
    ("store", "spread"), CASES, ids=[f"{store}-over-{spread:g}s" for store, spread in CASES]
)
def test_lateness(benchmark: Benchmark, mode: Mode, store: str, spread: float) -> None:
    runs = measure(benchmark, "9 lateness", mode.rounds, lambda: lateness(store, spread=spread))
    chosen = sorted(runs, key=lambda r: r.p99_ms)[len(runs) // 2]
    benchmark.extra_info.update(**asdict(chosen))
