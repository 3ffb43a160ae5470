"""Scenario 6: bytes per queued job (tracemalloc), and memory under a flood.

The flood is a producer that outruns its workers.
naive's list and the pool's work queue are unbounded: they grow for as long as the
producer is faster. improved and final hold at most a lane of 1,000 jobs per priority
and push back on the producer instead.
"""

from __future__ import annotations

import pytest

from benchmarks import scenarios
from benchmarks.conftest import Benchmark, Mode, measure

HELD = [*scenarios.IN_MEMORY, "final-sqlite"]


@pytest.mark.parametrize("system", HELD)
def test_bytes_per_job(benchmark: Benchmark, mode: Mode, system: str) -> None:
    jobs = mode.memory_jobs if system in scenarios.IN_MEMORY else mode.slow_jobs
    (per_job,) = measure(
        benchmark,
        "6 memory",
        1,
        lambda: scenarios.bytes_per_queued_job(system, jobs),
    )
    benchmark.extra_info.update(system=system, jobs=jobs, bytes_per_job=per_job)


@pytest.mark.parametrize("system", scenarios.IN_MEMORY)
def test_memory_under_flood(benchmark: Benchmark, mode: Mode, system: str) -> None:
    (samples,) = measure(
        benchmark,
        "6 memory",
        1,
        lambda: scenarios.memory_under_flood(system, mode.memory_seconds),
    )
    benchmark.extra_info.update(
        system=system,
        seconds=mode.memory_seconds,
        peak_mb=max(mb for _, mb, _ in samples),
        samples=[[round(t, 4), round(mb, 4), n] for t, mb, n in samples],
    )
