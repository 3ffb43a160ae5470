"""What persistence costs: the final tier on disk beside ThreadPoolExecutor and raw SQLite.

``python -m benchmarks.persistence`` measures, in one run:

- the machine's limit: one-row SQLite commits per second in WAL mode, with the same
  ``synchronous`` setting as each durability;
- end to end (enqueue to all settled), no-op jobs, 4 workers: ``enqueue_many`` in
  batches of 1,000, a single producer calling ``enqueue``, and 8 producer threads
  calling ``enqueue``, for ``durability="power"`` and ``"process"``, beside
  ``ThreadPoolExecutor(4)`` on the same jobs;
- latency from ``enqueue`` returning to the handler starting, at a steady offered
  load (2,000 jobs/s by default), default durability.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from functools import partial
from pathlib import Path

from final import Job, JobQueue

WORKERS = 4
SYNCHRONOUS = {"power": "FULL", "process": "NORMAL"}


def raw_commits(directory: Path, durability: str, n: int) -> float:
    path = directory / f"raw-{durability}-{time.monotonic_ns()}.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(f"PRAGMA synchronous = {SYNCHRONOUS[durability]}")
    db.execute("CREATE TABLE t (id TEXT PRIMARY KEY, payload BLOB)")
    begun = time.perf_counter()
    for i in range(n):
        db.execute("BEGIN")
        db.execute("INSERT INTO t VALUES (?, ?)", (str(i), b""))
        db.execute("COMMIT")
    rate = n / (time.perf_counter() - begun)
    db.close()
    return rate


def pool(n: int) -> float:
    begun = time.perf_counter()
    with ThreadPoolExecutor(WORKERS) as executor:
        wait([executor.submit(_noop, None) for _ in range(n)])
    return n / (time.perf_counter() - begun)


def final_on_disk(directory: Path, durability: str, n: int, how: str) -> float:
    path = directory / f"{how}-{durability}-{time.monotonic_ns()}.db"
    begun = time.perf_counter()
    with JobQueue(_noop, workers=WORKERS, path=str(path), durability=durability) as q:
        if how == "enqueue_many":
            for start in range(0, n, 1000):
                q.enqueue_many(Job(id=str(i)) for i in range(start, min(n, start + 1000)))
        elif how == "1 producer":
            for i in range(n):
                q.enqueue(Job(id=str(i)))
        else:
            producers = int(how.split()[0])

            def produce(p: int) -> None:
                for i in range(p, n, producers):
                    q.enqueue(Job(id=str(i)))

            threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        q.join()
    return n / (time.perf_counter() - begun)


def latency(directory: Path, rate: float, seconds: float) -> list[float]:
    n = int(rate * seconds)
    returned = [0.0] * n
    started = [0.0] * n

    def handler(job: Job) -> None:
        started[int(job.id)] = time.perf_counter()

    path = directory / f"latency-{time.monotonic_ns()}.db"
    with JobQueue(handler, workers=WORKERS, path=str(path)) as q:
        begun = time.perf_counter()
        for i in range(n):
            due = begun + i / rate
            while (now := time.perf_counter()) < due:
                time.sleep(min(due - now, 0.001))
            q.enqueue(Job(id=str(i)))
            returned[i] = time.perf_counter()
        q.join()
    return sorted((s - r) * 1000 for s, r in zip(started, returned, strict=True))


def _noop(_: object) -> None:
    pass


def median_of(rounds: int, measure: Callable[[], float]) -> tuple[float, list[float]]:
    values = [measure() for _ in range(rounds)]
    return statistics.median(values), values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=2_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    n = args.jobs
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        tpe, _ = median_of(args.rounds, lambda: pool(n))
        print(f"ThreadPoolExecutor({WORKERS}): {tpe:,.0f} jobs/s ({n:,} no-op jobs)")
        for durability in ("power", "process"):
            raw, _ = median_of(args.rounds, partial(raw_commits, directory, durability, 2000))
            print(f"\ndurability={durability!r}: raw one-row commits {raw:,.0f}/s")
            single = 0.0
            for how in ("enqueue_many", "1 producer", "8 producers"):
                jobs = n if how != "1 producer" else min(n, int(raw * 2))
                rate, values = median_of(
                    args.rounds, partial(final_on_disk, directory, durability, jobs, how)
                )
                note = f"{rate / tpe:5.2f}x TPE"
                if how == "1 producer":
                    single = rate
                    note += f", {rate / raw:4.2f}x raw commits"
                elif how == "8 producers" and single:
                    note += f", {rate / single:4.1f}x one producer"
                spread = ", ".join(f"{v:,.0f}" for v in values)
                print(f"  {how:<13}{rate:>10,.0f} jobs/s   {note}   ({spread})")
        waits = latency(directory, args.rate, args.seconds)
        pct = {p: waits[min(len(waits) - 1, int(p / 100 * len(waits)))] for p in (50, 90, 99)}
        print(
            f"\nlatency at {args.rate:,.0f} jobs/s offered, durability='power': "
            f"p50 {pct[50]:.2f} ms, p90 {pct[90]:.2f} ms, p99 {pct[99]:.2f} ms, "
            f"max {waits[-1]:.2f} ms"
        )


if __name__ == "__main__":
    main()
