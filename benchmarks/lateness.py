"""How late a scheduled job starts: ``python -m benchmarks.lateness`` (and ``make bench``).

1,000 jobs are scheduled with ``Job.run_at`` to fall due within one second, a moment
after they are enqueued (all of them are accepted before the first is due), and each
one's lateness is the wall-clock time its handler started minus its ``run_at``. A job
never starts early (a negative lateness would be a bug, and is counted); how late it
starts is the scheduler's wake-up, the move into the lane, and a worker taking it.

``spread`` is how long the due times are spread over: 1 s, the figure the target names,
measures the wake-up; 0, every job due at the same instant, measures instead how long the
workers take to drain 1,000 jobs at once (the last one waits for the 999 before it).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from final import Job, JobQueue

JOBS = 1_000
AHEAD = 0.5  # seconds from the enqueue to the first due time: room to accept them all


@dataclass(frozen=True, slots=True)
class Lateness:
    store: str  # "memory" or "sqlite"
    jobs: int
    spread_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    early: int  # jobs started before their run_at: must be 0


def lateness(store: str, jobs: int = JOBS, spread: float = 1.0, workers: int = 4) -> Lateness:
    """Schedule ``jobs`` no-op jobs due over ``spread`` seconds, run them, and measure
    (start - run_at) for each. ``store``: "memory", or "sqlite" (a file in a fresh
    temporary directory, ``durability="power"``)."""
    started: dict[str, float] = {}
    lock = threading.Lock()

    def handler(job: Job) -> None:
        now = time.time()
        with lock:
            started[job.id] = now

    with tempfile.TemporaryDirectory(prefix="lateness-") as workdir:
        path = os.path.join(workdir, "jobs.db") if store == "sqlite" else None
        with JobQueue(handler, workers=workers, path=path, queue_size=jobs) as q:
            base = datetime.now(UTC) + timedelta(seconds=AHEAD)
            due = {f"j{i}": base + timedelta(seconds=spread * i / jobs) for i in range(jobs)}
            q.enqueue_many(Job(id=job_id, run_at=when) for job_id, when in due.items())
            if datetime.now(UTC) >= base:
                raise RuntimeError(f"enqueueing took longer than {AHEAD}s: the figure is void")
            q.join()
    late = sorted(started[job_id] - when.timestamp() for job_id, when in due.items())
    return Lateness(
        store,
        jobs,
        spread,
        p50_ms=late[len(late) // 2] * 1000,
        p99_ms=late[min(len(late) - 1, int(0.99 * len(late)))] * 1000,
        max_ms=late[-1] * 1000,
        early=sum(1 for x in late if x < 0),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per figure (default 5)")
    args = parser.parse_args(argv)
    print(f"load average: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("| store | due over | p50 | p99 | max | early | (median round by p99, of n) |")
    print("|---|--:|--:|--:|--:|--:|---|")
    for spread in (1.0, 0.0):
        for store in ("memory", "sqlite"):
            runs = sorted(
                (lateness(store, spread=spread) for _ in range(args.rounds)),
                key=lambda r: r.p99_ms,
            )
            r = runs[len(runs) // 2]
            print(
                f"| {store} | {spread:g} s | {r.p50_ms:.2f} ms | {r.p99_ms:.2f} ms"
                f" | {r.max_ms:.2f} ms | {r.early} | p99 of rounds:"
                f" {', '.join(f'{x.p99_ms:.1f}' for x in runs)} |"
            )


if __name__ == "__main__":
    main()
