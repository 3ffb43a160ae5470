"""Scenario 1: no-op jobs through each system, one producer, 1 / 2 / 4 / 8 workers.

Each figure is the median of ``mode.rounds`` rounds, with every round's jobs per second
beside it. ``final-sqlite`` also runs with ``enqueue_many`` (batches of 1,000), the way
to feed a durable queue fast.
"""

from __future__ import annotations

import statistics

import pytest

from benchmarks import scenarios
from benchmarks.conftest import Benchmark, Mode, measure, need

SYSTEMS = [*scenarios.SYSTEMS, "persistqueue", "litequeue", "huey-memory", "huey-sqlite"]
CASES = [(s, False) for s in SYSTEMS] + [("final-sqlite", True), ("final-sqlite-process", True)]


@pytest.mark.parametrize("workers", [1, 2, 4, 8])
@pytest.mark.parametrize(
    ("system", "batch"), CASES, ids=[s + ("-enqueue_many" if b else "") for s, b in CASES]
)
def test_throughput(
    benchmark: Benchmark, mode: Mode, system: str, batch: bool, workers: int
) -> None:
    need(system)
    jobs = mode.fast_jobs if system in scenarios.IN_MEMORY else mode.slow_jobs
    if batch:
        jobs = mode.fast_jobs  # a batch commits once: as many jobs as the in-memory runs
    rates = measure(
        benchmark,
        "1 throughput",
        mode.rounds,
        lambda: scenarios.throughput(system, jobs, workers, batch=batch),
    )
    benchmark.extra_info.update(
        system=system,
        batch=batch,
        workers=workers,
        jobs=jobs,
        durable=scenarios.is_durable(system),
        jobs_per_s=statistics.median(rates),
        rounds_jobs_per_s=rates,
    )
