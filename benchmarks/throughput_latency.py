"""Throughput and enqueue-to-start latency of the tiers beside ThreadPoolExecutor.

``python -m benchmarks.throughput_latency`` (``make bench``) measures, in one run so
that the ratios hold on a noisy machine:

- throughput: a single producer enqueues N no-op jobs into a queue with 4 workers,
  timed from the first enqueue until every job has run (``join``); for
  ``ThreadPoolExecutor(4)``, from the first ``submit`` until every future is done;
- latency: the same systems at a steady offered load (5,000 jobs/s for 3 s by
  default), the time from ``enqueue`` (or ``submit``) returning to the handler
  starting, as p50 / p90 / p99 / max.

Each system runs ``--rounds`` times in turn (interleaved, so drift in the machine
hits all alike) and the median round is reported. ``--json PATH`` writes the figures
with a description of the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import final
import improved
import naive

WORKERS = 4


class Runner(Protocol):
    """Starts ``n`` no-op jobs on a fresh system and returns when all have run."""

    def __call__(self, n: int, on_start: Callable[[int], None] | None) -> None: ...


def run_tier(module: Any, **options: Any) -> Runner:
    def run(n: int, on_start: Callable[[int], None] | None) -> None:
        handler = _noop if on_start is None else lambda job: on_start(int(job.id))
        with module.JobQueue(handler, workers=WORKERS, **options) as q:
            for i in range(n):
                q.enqueue(module.Job(id=str(i)))
            q.join()

    return run


def run_pool(n: int, on_start: Callable[[int], None] | None) -> None:
    with ThreadPoolExecutor(WORKERS) as pool:
        if on_start is None:
            futures = [pool.submit(_noop, None) for _ in range(n)]
        else:
            futures = [pool.submit(on_start, i) for i in range(n)]
        wait(futures)


def _noop(_: object) -> None:
    pass


SYSTEMS: dict[str, Callable[[], Runner]] = {
    "ThreadPoolExecutor": lambda: run_pool,
    "naive": lambda: run_tier(naive),
    # Default options: a lane of 1,000, so the producer really meets backpressure.
    "improved": lambda: run_tier(improved),
    "final": lambda: run_tier(final),
}


def throughput(runner: Runner, n: int) -> float:
    begun = time.perf_counter()
    runner(n, None)
    return n / (time.perf_counter() - begun)


@dataclass
class Latency:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    offered_per_s: float
    achieved_per_s: float


def latency(system: str, rate: float, seconds: float) -> Latency:
    """Offer ``rate`` jobs/s for ``seconds``; time from enqueue returning to start."""
    n = int(rate * seconds)
    returned = [0.0] * n
    started = [0.0] * n

    def on_start(i: int) -> None:
        started[i] = time.perf_counter()

    # The producer paces itself against the clock, not with one sleep per job, so
    # that a late wake-up is caught up rather than accumulated.
    def produce(enqueue: Callable[[int], None]) -> float:
        begun = time.perf_counter()
        for i in range(n):
            due = begun + i / rate
            while (now := time.perf_counter()) < due:
                time.sleep(min(due - now, 0.001))
            enqueue(i)
            returned[i] = time.perf_counter()
        return time.perf_counter() - begun

    if system == "ThreadPoolExecutor":
        with ThreadPoolExecutor(WORKERS) as pool:
            elapsed = produce(lambda i: _discard(pool.submit(on_start, i)))
    else:
        module = {"naive": naive, "improved": improved, "final": final}[system]
        with module.JobQueue(lambda job: on_start(int(job.id)), workers=WORKERS) as q:
            elapsed = produce(lambda i: q.enqueue(module.Job(id=str(i))))
            q.join()
    waits = sorted(max(0.0, s - r) * 1000 for s, r in zip(started, returned, strict=True))

    def pct(p: float) -> float:
        return waits[min(len(waits) - 1, int(p * len(waits)))]

    return Latency(pct(0.50), pct(0.90), pct(0.99), waits[-1], rate, n / elapsed)


def _discard(_: object) -> None:
    pass


def machine() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50_000, help="jobs per throughput round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rate", type=float, default=5_000, help="offered jobs/s for latency")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of a latency run")
    parser.add_argument("--systems", nargs="*", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    rates: dict[str, list[float]] = {s: [] for s in args.systems}
    for _ in range(args.rounds):
        for system in args.systems:
            rates[system].append(throughput(SYSTEMS[system](), args.jobs))
    base = statistics.median(rates["ThreadPoolExecutor"]) if "ThreadPoolExecutor" in rates else 0
    print(
        f"throughput: {args.jobs:,} no-op jobs, {WORKERS} workers, one producer, "
        f"median of {args.rounds} rounds"
    )
    print(f"  {'system':<20}{'jobs/s':>12}{'x TPE':>8}   rounds")
    for system, values in rates.items():
        median = statistics.median(values)
        ratio = f"{median / base:8.2f}" if base else ""
        spread = ", ".join(f"{v:,.0f}" for v in values)
        print(f"  {system:<20}{median:>12,.0f}{ratio}   {spread}")

    lat: dict[str, list[Latency]] = {s: [] for s in args.systems}
    for _ in range(args.rounds):
        for system in args.systems:
            lat[system].append(latency(system, args.rate, args.seconds))
    print(
        f"\nlatency, enqueue returned -> handler started, {args.rate:,.0f} jobs/s offered "
        f"for {args.seconds}s, round with the median p99 of {args.rounds}"
    )
    print(f"  {'system':<20}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}{'achieved/s':>12}")
    chosen: dict[str, Latency] = {}
    for system, runs in lat.items():
        runs.sort(key=lambda r: r.p99_ms)
        r = chosen[system] = runs[len(runs) // 2]
        print(
            f"  {system:<20}{r.p50_ms:9.3f}{r.p90_ms:9.3f}{r.p99_ms:9.3f}{r.max_ms:9.2f}"
            f"{r.achieved_per_s:12,.0f}"
        )

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "settings": {k: v for k, v in vars(args).items() if k != "json"},
                    "throughput_jobs_per_s": rates,
                    "latency": {s: asdict(r) for s, r in chosen.items()},
                },
                indent=2,
            )
        )
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
