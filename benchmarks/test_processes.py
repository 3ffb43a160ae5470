"""Scenario 3, continued: CPU-bound jobs on threads and on processes (final's executor).

Each figure measures both executors in alternating rounds, in one run, so that their
ratio holds even on a machine that other work slows down.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import pytest

from benchmarks import processes, scenarios
from benchmarks.conftest import Benchmark, Mode, measure
from final import Job

WORKERS = [1, 2, 4, 8]
EXECUTORS = ("thread", "process")


def _side_by_side(rounds: list[dict[str, float]]) -> dict[str, object]:
    """Median jobs/s per executor, and the median of the per-round ratios."""
    return {
        "jobs_per_s": {e: statistics.median(r[e] for r in rounds) for e in EXECUTORS},
        "ratio": statistics.median(r["process"] / r["thread"] for r in rounds),
        "rounds": rounds,
    }


@pytest.mark.parametrize("workers", WORKERS)
def test_cpu_bound_on_threads_and_on_processes(
    benchmark: Benchmark, mode: Mode, workers: int
) -> None:
    """~20 ms of pure Python per job: threads share one core's worth, processes all."""
    loops = processes.spin_loops()
    count = 60 if mode.name == "quick" else 200

    def both() -> dict[str, float]:
        return {
            e: processes.throughput(e, workers, processes.cpu_jobs(count, loops)) for e in EXECUTORS
        }

    rounds = measure(benchmark, "3 processes", 3 if mode.name == "quick" else 5, both)
    benchmark.extra_info.update(
        figure="cpu",
        workers=workers,
        jobs=count,
        cpu_seconds=processes.CPU_SECONDS,
        cpus=scenarios.machine()["cpus"],
        **_side_by_side(rounds),
    )


def test_noop_jobs_on_threads_and_on_processes(benchmark: Benchmark, mode: Mode) -> None:
    """What a job pays to travel to a child and back: no-op jobs, 2 workers."""
    count = 5_000 if mode.name == "quick" else 20_000
    jobs = [Job() for _ in range(count)]

    def both() -> dict[str, float]:
        return {e: processes.throughput(e, 2, list(jobs)) for e in EXECUTORS}

    # The same jobs every round: each round is a queue of its own, new to their ids.
    rounds = measure(benchmark, "3 processes", 3, both)
    figures = _side_by_side(rounds)
    rates = figures["jobs_per_s"]
    assert isinstance(rates, dict)
    benchmark.extra_info.update(
        figure="noop",
        workers=2,
        jobs=count,
        overhead_us=1e6 * (1 / rates["process"] - 1 / rates["thread"]),
        **figures,
    )


def test_a_hung_attempt_s_child_is_killed_soon_after_its_timeout(benchmark: Benchmark) -> None:
    """Seconds past ``job_timeout`` (0.2 s) before the hung attempt's child is gone."""
    with tempfile.TemporaryDirectory() as tmp:
        delays = measure(benchmark, "3 processes", 5, lambda: processes.kill_delay(0.2, Path(tmp)))
    benchmark.extra_info.update(
        figure="kill", job_timeout=0.2, delay_s=statistics.median(delays), worst_s=max(delays)
    )
