"""Scenario 4: a saturating HIGH flood with a trickle of LOW jobs beside it.

naive has no priority (one FIFO: LOW waits behind the whole backlog), improved has
strict priority (LOW waits until the flood ends), final has fairness (LOW waits at
most ``fairness + 1`` picks). Each job sleeps 1 ms on 4 workers: about 3,700 jobs/s.
"""

from __future__ import annotations

import pytest

from benchmarks import scenarios
from benchmarks.conftest import Benchmark, Mode, measure

CONFIGS = [("naive", None), ("improved", None), ("final", 1), ("final", 3), ("final", 10)]
RATES = [3_000, 6_000, 12_000]


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize(
    ("system", "fairness"),
    CONFIGS,
    ids=[t if f is None else f"{t}-fairness{f}" for t, f in CONFIGS],
)
def test_starvation(
    benchmark: Benchmark, mode: Mode, system: str, fairness: int | None, rate: int
) -> None:
    (run,) = measure(
        benchmark,
        "4 starvation",
        1,
        lambda: scenarios.starvation(system, rate, mode.flood_seconds, fairness=fairness),
    )
    benchmark.extra_info.update(tier=system, **run.summary())
