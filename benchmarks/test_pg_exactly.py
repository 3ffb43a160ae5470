"""The cost of exactly-once effects on PostgreSQL: ``complete(conn)`` against the plain path.

Both handlers do the same thing, insert one row into an application table on a
connection of their thread and return (``benchmarks/pg_effects.py``): ``plain``
commits the row and lets the queue complete the job in a statement of its own;
``exactly`` completes the job in the row's transaction, then the queue reads once
whether that transaction committed. One handle, ``WORKERS`` threads, a fresh queue per
round; the rounds interleave the two, and the median counts. Skipped when no server
answers at ``PGBENCH_DSN``; a database of its own, created and dropped.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from typing import Any

import pytest

from benchmarks.conftest import Benchmark, Mode, measure

pg_peers = pytest.importorskip("benchmarks.pg_peers", reason="psycopg is not installed")

if (why := pg_peers.server_answers()) is not None:
    pytestmark = pytest.mark.skip(reason=why)

GROUP = "exactly-once on postgresql"


@pytest.fixture(scope="module")
def schema_dsn() -> Iterator[str]:
    """A database of its own, created and dropped here, named apart from the peers'."""
    import os
    import urllib.parse

    import psycopg

    name = f"exactly_once_cost_{os.getpid()}"
    with psycopg.connect(pg_peers.ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        parts = urllib.parse.urlsplit(pg_peers.ADMIN_DSN)
        yield urllib.parse.urlunsplit(parts._replace(path="/" + name))
    finally:
        with psycopg.connect(pg_peers.ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_pg_exactly_once_cost(benchmark: Benchmark, mode: Mode, schema_dsn: str) -> None:
    from benchmarks.exactly_pg import WORKERS, drain_rate

    quick = mode.name == "quick"
    jobs, rounds = (2_000, 3) if quick else (10_000, 5)

    def interleaved() -> dict[str, list[float]]:
        found: dict[str, list[float]] = {"plain": [], "exactly": []}
        for _ in range(rounds):
            for handler in found:
                found[handler].append(drain_rate(schema_dsn, handler, jobs))
        return found

    rates: dict[str, Any] = measure(benchmark, GROUP, 1, interleaved)[0]
    benchmark.extra_info.update(
        figure="exactly-once cost",
        jobs=jobs,
        workers=WORKERS,
        jobs_per_s={h: statistics.median(r) for h, r in rates.items()},
        rounds_jobs_per_s=rates,
    )
