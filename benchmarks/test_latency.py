"""Scenario 2: enqueue-to-start latency against offered load, up to each system's knee.

Each system is offered 1,000 jobs/s, then more, until it saturates: the producer falls
behind the offered rate, or a backlog grows during the run (the last tenth of the jobs
wait far longer than the first). The first saturated point is kept (it is the knee);
higher loads of that system are skipped.
"""

from __future__ import annotations

from dataclasses import asdict

import pytest

from benchmarks import scenarios
from benchmarks.conftest import Benchmark, Mode, measure, need
from benchmarks.test_throughput import SYSTEMS

RATES = [1_000, 2_000, 5_000, 10_000, 20_000, 50_000]
CASES = [(s, r) for s in SYSTEMS for r in RATES]
_saturated: set[str] = set()


@pytest.mark.parametrize(("system", "rate"), CASES, ids=[f"{s}-{r}" for s, r in CASES])
def test_latency(benchmark: Benchmark, mode: Mode, system: str, rate: int) -> None:
    need(system)
    if system in _saturated:
        pytest.skip(f"{system} saturated at a lower load")
    runs = measure(
        benchmark,
        "2 latency",
        mode.latency_rounds,
        lambda: scenarios.latency(system, rate, mode.latency_seconds),
    )
    chosen = sorted(runs, key=lambda r: r.p99_ms)[len(runs) // 2]
    if chosen.saturated():
        _saturated.add(system)
    benchmark.extra_info.update(system=system, saturated=chosen.saturated(), **asdict(chosen))
