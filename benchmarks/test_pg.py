"""Scenario 8: final on PostgreSQL beside procrastinate and pgqueuer, one server, one run.

Every figure is measured in interleaved rounds (final-pg, pgqueuer, procrastinate,
then again), so that a neighbour's load on the shared machine falls on all three
alike; the median round counts. Skipped when no server answers at ``PGBENCH_DSN``
or the peers extra is missing. ``benchmarks/pg_peers.py`` says how each is driven.
"""

from __future__ import annotations

import statistics
from typing import Any

import pytest

from benchmarks.conftest import Benchmark, Mode, measure

pg_peers = pytest.importorskip("benchmarks.pg_peers", reason="psycopg is not installed")
pytest.importorskip("procrastinate", reason="the peers extra is not installed")
pytest.importorskip("pgqueuer", reason="the peers extra is not installed")
pytest.importorskip("asyncpg", reason="the peers extra is not installed")

if (why := pg_peers.server_answers()) is not None:
    pytestmark = pytest.mark.skip(reason=why)


def sizes(mode: Mode) -> dict[str, Any]:
    quick = mode.name == "quick"
    return {
        "drain": 3_000 if quick else 20_000,
        "one": 500 if quick else 3_000,
        "many": 10_000 if quick else 50_000,
        "latency_s": 2.0 if quick else 10.0,
        "rounds": 2 if quick else 3,
    }


@pytest.fixture(scope="module")
def systems() -> Any:
    with pg_peers.opened() as opened:
        yield opened


def interleaved(systems: dict[str, Any], rounds: int, figure: Any) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {s: [] for s in systems}
    for _ in range(rounds):
        for name, system in systems.items():
            found[name].append(figure(system))
    return found


@pytest.mark.parametrize("figure", ["drain", "enqueue_one", "enqueue_many"])
def test_pg_rates(benchmark: Benchmark, mode: Mode, systems: Any, figure: str) -> None:
    n = sizes(mode)
    jobs = {"drain": n["drain"], "enqueue_one": n["one"], "enqueue_many": n["many"]}[figure]
    rates = measure(
        benchmark,
        "8 postgresql",
        1,
        lambda: interleaved(systems, n["rounds"], lambda s: getattr(s, figure)(jobs)),
    )[0]
    benchmark.extra_info.update(
        figure=figure,
        jobs=jobs,
        workers=pg_peers.WORKERS,
        jobs_per_s={s: statistics.median(r) for s, r in rates.items()},
        rounds_jobs_per_s=rates,
    )


def test_pg_latency(benchmark: Benchmark, mode: Mode, systems: Any) -> None:
    n = sizes(mode)
    rate = 200

    def one_round(system: Any) -> dict[str, float]:
        delays = system.latency(rate, n["latency_s"])
        return {
            "p50_ms": pg_peers.percentile(delays, 50),
            "p99_ms": pg_peers.percentile(delays, 99),
            "jobs": len(delays),
        }

    rounds = measure(
        benchmark, "8 postgresql", 1, lambda: interleaved(systems, n["rounds"], one_round)
    )[0]
    # The round with the median p99 counts, as in scenario 2.
    chosen = {s: sorted(r, key=lambda x: x["p99_ms"])[len(r) // 2] for s, r in rounds.items()}
    benchmark.extra_info.update(
        figure="latency", offered_per_s=rate, latency=chosen, rounds_latency=rounds
    )


SOAK_SECONDS = 600.0


def test_pg_soak(benchmark: Benchmark, mode: Mode, systems: Any) -> None:
    """``make bench-full`` only: final-pg for ten minutes at half its drain rate.

    The peak is a drain of 10,000 jobs measured here, just before; the soak then
    enqueues at half of it, one producer paced, with ``retention=60``. Every 30 s it
    samples the jobs completed per second, the table's dead rows, size and backlog.
    """
    if mode.name != "full":
        pytest.skip("the ten-minute soak runs in make bench-full only")
    peak = systems["final-pg"].drain(10_000)
    rate = round(peak / 2)
    samples = measure(benchmark, "8 postgresql", 1, lambda: pg_peers.soak(rate, SOAK_SECONDS))[0]
    benchmark.extra_info.update(
        figure="soak",
        peak_jobs_per_s=peak,
        offered_per_s=rate,
        seconds=SOAK_SECONDS,
        autovacuum=pg_peers.autovacuum(),
        samples=samples,
    )


def test_pg_scaling(benchmark: Benchmark, mode: Mode, systems: Any) -> None:
    """Drain jobs/s with 1, 2 and 4 worker processes of each system (``pg_scaling``),
    interleaved: for each round, each count of processes, each system in turn."""
    from benchmarks import pg_scaling

    quick = mode.name == "quick"
    jobs, rounds = (3_000, 1) if quick else (20_000, 2)
    for system in systems.values():
        system.enqueue_many(10)  # each makes its tables in its database

    def curve() -> list[dict[str, Any]]:
        return [
            {
                "system": name,
                "processes": processes,
                "jobs_per_s": pg_scaling.drain_with_processes(name, system.dsn, processes, jobs),
            }
            for _ in range(rounds)
            for processes in pg_scaling.PROCESSES
            for name, system in systems.items()
        ]

    points = measure(benchmark, "8 postgresql", 1, curve)[0]
    benchmark.extra_info.update(
        figure="scaling",
        jobs=jobs,
        threads_per_process=pg_peers.WORKERS,
        processes=list(pg_scaling.PROCESSES),
        jobs_per_s={
            name: {
                str(p): statistics.median(
                    x["jobs_per_s"] for x in points if x["system"] == name and x["processes"] == p
                )
                for p in pg_scaling.PROCESSES
            }
            for name in systems
        },
        rounds=points,
    )
