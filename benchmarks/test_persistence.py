"""Scenario 5: final in memory, with durability="process" and "power"; SQLite's own limit.

Three ways to feed it: one producer calling ``enqueue``, 8 producer threads, and
``enqueue_many`` in batches of 1,000. The raw rate of one-row commits (WAL, with the
``synchronous`` setting of each durability) is the machine's physical limit for a
queue that acknowledges each job only once it is on disk.
"""

from __future__ import annotations

import statistics

import pytest

from benchmarks import scenarios
from benchmarks.conftest import Benchmark, Mode, measure


@pytest.mark.parametrize("how", scenarios.PRODUCE, ids=lambda how: how.replace(" ", "-"))
@pytest.mark.parametrize(
    "durability", [None, "process", "power"], ids=["memory", "process", "power"]
)
def test_persistence(benchmark: Benchmark, mode: Mode, durability: str | None, how: str) -> None:
    # A batch commits once: enqueue_many gets as many jobs as the in-memory runs.
    fast = durability is None or how == "enqueue_many"
    jobs = mode.fast_jobs if fast else mode.slow_jobs
    rates = measure(
        benchmark,
        "5 persistence",
        mode.rounds,
        lambda: scenarios.persistence(durability, how, jobs),
    )
    benchmark.extra_info.update(
        durability=durability or "memory",
        how=how,
        jobs=jobs,
        jobs_per_s=statistics.median(rates),
        rounds_jobs_per_s=rates,
    )


@pytest.mark.parametrize("durability", ["process", "power"])
def test_raw_commits(benchmark: Benchmark, mode: Mode, durability: str) -> None:
    n = mode.slow_jobs
    rates = measure(
        benchmark,
        "5 persistence",
        mode.rounds,
        lambda: scenarios.raw_commits(durability, n),
    )
    benchmark.extra_info.update(
        durability=durability,
        how="raw commits",
        jobs=n,
        jobs_per_s=statistics.median(rates),
        rounds_jobs_per_s=rates,
    )
