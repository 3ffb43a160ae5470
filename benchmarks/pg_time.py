"""How late final on PostgreSQL starts a job after its ``run_at``: ``python -m benchmarks.pg_time``.

Two scenarios, each in a schema of its own on ``JOBQ_TEST_DSN`` (the tests' server),
with one worker handle of 4 workers and a no-op handler; lateness is the handler's
``time.time()`` minus the job's ``run_at`` (one machine, one clock), never negative
when the queue keeps its promise:

- ``burst``: 1,000 jobs due within the same second (``run_at`` spread evenly over it),
  enqueued in one batch two seconds ahead by a handle without workers. The NOTIFY
  tells the worker handle when the first is due; the rest are claimed as they fall due.
- ``single``: one job due 300 ms after it is enqueued, 20 times in a row, nothing else
  to wake the worker handle but that job's own NOTIFY.
- ``unannounced``: 200 jobs due in the same second, enqueued before the worker handle
  started (so it never heard their NOTIFY): only its look into the database finds when
  they are due.

Prints one line per scenario: p50, p99 and the largest lateness in milliseconds, and
the smallest (negative would mean a job started early).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import threading
import time
from collections.abc import Callable

from final import Job, JobQueue
from tests.pg import DSN, Database, drop_schema, new_schema

UTC = datetime.UTC


class _Starts:
    def __init__(self, expected: int) -> None:
        self.at: dict[str, float] = {}
        self._expected = expected
        self._done = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, job: Job) -> None:
        now = time.time()
        with self._lock:
            self.at[job.id] = now
            if len(self.at) >= self._expected:
                self._done.set()

    def wait(self, timeout: float) -> None:
        if not self._done.wait(timeout):
            raise RuntimeError(f"only {len(self.at)} of {self._expected} jobs started")


def _in(seconds: float) -> datetime.datetime:
    return datetime.datetime.now(UTC) + datetime.timedelta(seconds=seconds)


def _lateness(starts: _Starts, due: dict[str, datetime.datetime]) -> list[float]:
    return sorted((starts.at[i] - at.timestamp()) * 1000 for i, at in due.items())


def burst(db: Database, n: int = 1000) -> list[float]:
    starts = _Starts(n)
    with JobQueue(starts, dsn=db.queue_dsn, workers=4) as worker:
        producer = JobQueue(lambda job: None, dsn=db.queue_dsn, workers=0)
        first = _in(2.0)
        due = {f"b{i}": first + datetime.timedelta(seconds=i / n) for i in range(n)}
        producer.enqueue_many([Job(id=i, run_at=at) for i, at in due.items()])
        starts.wait(30)
        producer.close()
        worker.join(30)
    return _lateness(starts, due)


def single(db: Database, rounds: int = 20) -> list[float]:
    lateness = []
    starts = _Starts(rounds)
    with JobQueue(starts, dsn=db.queue_dsn, workers=4) as worker:
        for i in range(rounds):
            at = _in(0.3)
            worker.enqueue(Job(id=f"s{i}", run_at=at))
            while f"s{i}" not in starts.at:
                time.sleep(0.01)  # a harness's poll; the measure is the handler's clock
            lateness.append((starts.at[f"s{i}"] - at.timestamp()) * 1000)
    return sorted(lateness)


def unannounced(db: Database, n: int = 200) -> list[float]:
    starts = _Starts(n)
    producer = JobQueue(lambda job: None, dsn=db.queue_dsn, workers=0)
    first = _in(2.5)
    due = {f"u{i}": first + datetime.timedelta(seconds=i / n) for i in range(n)}
    producer.enqueue_many([Job(id=i, run_at=at) for i, at in due.items()])
    producer.close()
    with JobQueue(starts, dsn=db.queue_dsn, workers=4):
        starts.wait(30)
    return _lateness(starts, due)


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


SCENARIOS: dict[str, Callable[[Database], list[float]]] = {
    "burst": burst,
    "single": single,
    "unannounced": unannounced,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs of each scenario")
    args = parser.parse_args()
    for round_ in range(args.rounds):  # interleaved: a load change hits every scenario
        for name, scenario in SCENARIOS.items():
            db = new_schema(DSN)
            try:
                ms = scenario(db)
            finally:
                drop_schema(db)
            print(
                f"round {round_ + 1} {name:<12} jobs {len(ms):5d}"
                f"  p50 {statistics.median(ms):6.1f} ms  p99 {_percentile(ms, 0.99):6.1f} ms"
                f"  max {ms[-1]:6.1f} ms  min {ms[0]:6.1f} ms",
                flush=True,
            )


if __name__ == "__main__":
    main()
