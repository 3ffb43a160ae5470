"""Scenario 3: how many workers, for I/O-bound jobs (sleep 5 ms) and CPU-bound ones (~1 ms).

Sleeping releases the GIL, so I/O-bound throughput grows with the workers; a pure-Python
loop holds it, so CPU-bound throughput stays at one core's worth whatever the number
of workers, and pays for the switching between them.
"""

from __future__ import annotations

import statistics

import pytest

from benchmarks import scenarios
from benchmarks.conftest import Benchmark, Mode, measure

WORKERS = [1, 2, 4, 8, 16, 32, 64]


@pytest.mark.parametrize("kind", ["io", "cpu"])
def test_direct(benchmark: Benchmark, mode: Mode, kind: str) -> None:
    """The baseline beside the queues: the handler called in a loop on one thread."""
    jobs = int(mode.io_seconds / scenarios.IO_SECONDS) if kind == "io" else mode.cpu_jobs
    rates = measure(
        benchmark,
        f"3 workers {kind}",
        1 if mode.rounds < 5 else 3,
        lambda: scenarios.work_throughput("direct", kind, 1, jobs),
    )
    benchmark.extra_info.update(
        system="direct",
        kind=kind,
        workers=1,
        jobs=jobs,
        jobs_per_s=statistics.median(rates),
        spin_loops=scenarios.calibrate_spin().loops,
        spin_seconds=scenarios.calibrate_spin().seconds,
        cpus=scenarios.machine()["cpus"],
    )


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("system", scenarios.IN_MEMORY)
@pytest.mark.parametrize("kind", ["io", "cpu"])
def test_workers(benchmark: Benchmark, mode: Mode, kind: str, system: str, workers: int) -> None:
    if kind == "io":
        jobs = max(50, int(workers / scenarios.IO_SECONDS * mode.io_seconds))
    else:
        jobs = mode.cpu_jobs
    spin = scenarios.calibrate_spin()
    rates = measure(
        benchmark,
        f"3 workers {kind}",
        1 if mode.rounds < 5 else 3,
        lambda: scenarios.work_throughput(system, kind, workers, jobs),
    )
    benchmark.extra_info.update(
        system=system,
        kind=kind,
        workers=workers,
        jobs=jobs,
        jobs_per_s=statistics.median(rates),
        spin_loops=spin.loops,
        spin_seconds=spin.seconds,
        cpus=scenarios.machine()["cpus"],
    )
