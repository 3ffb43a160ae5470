"""The figures the targets are judged on, measured interleaved: round 1 of every system,
then round 2 of every system, and so on.

The other files run each system's rounds back to back, which is what the curves need;
but on a machine shared with other work, a burst of load during one system's rounds
would tilt its ratio to the others. Interleaving spreads such bursts over all of them,
so these ratios are the ones the report and the README quote.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict

from benchmarks import scenarios
from benchmarks.conftest import Benchmark, Mode, measure

# (name in the report, system, batch)
THROUGHPUT = [
    ("ThreadPoolExecutor", "ThreadPoolExecutor", False),
    ("naive", "naive", False),
    ("improved", "improved", False),
    ("final", "final", False),
    ("final-sqlite", "final-sqlite", False),
    ("final-sqlite enqueue_many", "final-sqlite", True),
    ("final-sqlite-process", "final-sqlite-process", False),
    ("persistqueue", "persistqueue", False),
    ("litequeue", "litequeue", False),
    ("huey-memory", "huey-memory", False),
    ("huey-sqlite", "huey-sqlite", False),
]
# (system, offered jobs/s): the loads the latency targets name.
LATENCY = [(s, 5_000) for s in scenarios.IN_MEMORY] + [("final-sqlite", 2_000)]


def rounds(
    benchmark: Benchmark,
    mode: Mode,
    figure: str,
    rates: dict[str, list[float]],
    one_round: Callable[[], None],
    **info: str,
) -> None:
    """Run ``one_round`` (which appends to ``rates``) at least 5 times; record the medians,
    and ``info``."""
    measure(benchmark, "0 headline", max(mode.rounds, 5), one_round, **info)
    benchmark.extra_info.update(
        figure=figure,
        workers=scenarios.WORKERS,
        jobs_per_s={name: statistics.median(r) for name, r in rates.items()},
        rounds_jobs_per_s=rates,
    )


def test_headline_throughput(benchmark: Benchmark, mode: Mode) -> None:
    cases = [c for c in THROUGHPUT if c[1] in scenarios.systems()]
    rates: dict[str, list[float]] = {name: [] for name, _, _ in cases}

    def one_round() -> None:
        for name, system, batch in cases:
            if batch:
                jobs = mode.fast_jobs  # as many as the pool's: a batch commits once
            else:
                jobs = mode.fast_jobs if system in scenarios.IN_MEMORY else mode.slow_jobs
            rates[name].append(scenarios.throughput(system, jobs, batch=batch))

    rounds(benchmark, mode, "throughput", rates, one_round, pool=scenarios.POOL_DRIVEN)


def test_headline_latency(benchmark: Benchmark, mode: Mode) -> None:
    runs: dict[str, list[scenarios.Latency]] = {s: [] for s, _ in LATENCY}

    def one_round() -> None:
        for system, rate in LATENCY:
            runs[system].append(scenarios.latency(system, rate, mode.latency_seconds))

    measure(benchmark, "0 headline", 3, one_round)
    chosen = {s: sorted(r, key=lambda x: x.p99_ms)[len(r) // 2] for s, r in runs.items()}
    benchmark.extra_info.update(
        figure="latency",
        workers=scenarios.WORKERS,
        # the round with the median p99 of each system
        latency={s: {**asdict(r), "saturated": r.saturated()} for s, r in chosen.items()},
        rounds_p99_ms={s: [x.p99_ms for x in r] for s, r in runs.items()},
    )


# (name in the report, what runs): durability "power" throughout, the default.
PERSISTENCE: list[tuple[str, Callable[[int], float]]] = [
    ("raw commits", lambda n: scenarios.raw_commits("power", n)),
    ("1 producer", lambda n: scenarios.persistence("power", "1 producer", n)),
    ("8 producers", lambda n: scenarios.persistence("power", "8 producers", 4 * n)),
    ("ceiling, 1 producer", lambda n: scenarios.group_commit_ceiling("power", 1, n)),
    ("ceiling, 8 producers", lambda n: scenarios.group_commit_ceiling("power", 8, 4 * n)),
]


def test_headline_persistence(benchmark: Benchmark, mode: Mode) -> None:
    """Final on disk against the disk's own limit and against group commit's best case."""
    rates: dict[str, list[float]] = {name: [] for name, _ in PERSISTENCE}

    def one_round() -> None:
        for name, run in PERSISTENCE:
            rates[name].append(run(mode.slow_jobs))

    rounds(benchmark, mode, "persistence", rates, one_round)
