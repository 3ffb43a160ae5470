"""The benchmark suite's settings: ``--full`` for longer runs, and the machine in the JSON.

``make bench`` runs ``pytest benchmarks --benchmark-json=...`` in the quick mode (under
ten minutes on two cores); ``make bench-full`` adds ``--full``. ``make test`` never
collects this folder: its ``testpaths`` is ``tests``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import pytest

from benchmarks import scenarios


@dataclass(frozen=True)
class Mode:
    """How big each scenario runs."""

    name: str
    rounds: int  # rounds of each throughput figure; the median is reported
    fast_jobs: int  # jobs per round for an in-memory system
    slow_jobs: int  # jobs per round for a system that commits to disk
    latency_seconds: float  # length of one latency point
    latency_rounds: int  # rounds per latency point; the round with the median p99 counts
    cpu_jobs: int  # jobs per CPU-bound workers figure
    io_seconds: float  # about how long one I/O-bound workers figure runs
    flood_seconds: float  # length of one starvation flood
    memory_jobs: int  # jobs held for bytes-per-job
    memory_seconds: float  # length of the memory flood
    crash_jobs: int


QUICK = Mode("quick", 3, 20_000, 1_500, 1.0, 1, 300, 0.4, 2.0, 10_000, 1.0, 200)
FULL = Mode("full", 5, 100_000, 10_000, 3.0, 3, 1_000, 1.5, 10.0, 50_000, 3.0, 1_000)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--full", action="store_true", help="longer runs: steadier figures")


@pytest.fixture(scope="session")
def mode(request: pytest.FixtureRequest) -> Mode:
    return FULL if request.config.getoption("--full") else QUICK


T = TypeVar("T")


class Benchmark(Protocol):
    """The part of pytest-benchmark's ``benchmark`` fixture the suite uses."""

    group: str | None
    extra_info: dict[str, Any]

    def pedantic(self, target: Callable[[], object], *, rounds: int, iterations: int) -> object: ...


def measure(
    benchmark: Benchmark, group: str, rounds: int, once: Callable[[], T], **info: Any
) -> list[T]:
    """Time ``rounds`` calls of ``once`` as one benchmark; return what each call returned.

    The time pytest-benchmark reports is the whole scenario's; the figures of
    interest (jobs per second, percentiles, bytes) go into ``extra_info``, with ``info``.
    """
    results: list[T] = []
    benchmark.group = group
    benchmark.pedantic(lambda: results.append(once()), rounds=rounds, iterations=1)
    benchmark.extra_info.update(info)
    return results


def need(system: str) -> None:
    """Skip a figure whose system is a peer that is not installed."""
    if system not in scenarios.SYSTEMS and not scenarios.peers_available():
        pytest.skip("the peers extra is not installed: pip install -e '.[peers]'")


def pytest_benchmark_update_machine_info(
    config: pytest.Config, machine_info: dict[str, Any]
) -> None:
    machine_info["description"] = scenarios.machine()


def pytest_benchmark_update_json(
    config: pytest.Config, benchmarks: list[Any], output_json: dict[str, Any]
) -> None:
    output_json["mode"] = "full" if config.getoption("--full") else "quick"
