"""Watch the naive tier work, and watch it lose jobs: ``python -m naive.demo``.

Jobs of mixed priority with simulated work (random durations, a share of random
failures) go to four workers. Halfway through, a second batch is enqueued and the
queue is closed at once, as a deploy or a Ctrl+C would. The report at the end
counts what the queue cannot tell you itself: the jobs that failed and were not
retried, the jobs that close() dropped, and how long HIGH jobs waited compared
with LOW ones. Ctrl+C stops the demo cleanly at any moment.
"""

from __future__ import annotations

import argparse
import logging
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from naive.job_queue import Job, JobQueue, Priority


class SimulatedFailure(Exception):
    """What the demo's handler raises for the share of jobs chosen to fail."""


@dataclass
class Ledger:
    """The demo's own bookkeeping, kept beside the queue because naive has no metrics."""

    enqueued_at: dict[str, float] = field(default_factory=dict)
    waits: dict[Priority, list[float]] = field(default_factory=lambda: defaultdict(list))
    succeeded: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def make_handler(ledger: Ledger, rng: random.Random, failure_rate: float) -> Callable[[Job], None]:
    start_clock = time.monotonic()

    def handler(job: Job) -> None:
        started = time.monotonic()
        with ledger.lock:
            wait = started - ledger.enqueued_at[job.id]
            ledger.waits[job.priority].append(wait)
            duration = rng.uniform(0.05, 0.4)
            fails = rng.random() < failure_rate
        worker = threading.current_thread().name
        print(
            f"{started - start_clock:6.2f}s  {worker:<15} took {job.id} "
            f"{job.priority.name:<6} (waited {wait * 1000:5.0f} ms)"
        )
        time.sleep(duration)
        with ledger.lock:
            (ledger.failed if fails else ledger.succeeded).add(job.id)
        if fails:
            raise SimulatedFailure(f"{job.id} failed after {duration * 1000:.0f} ms")

    return handler


def enqueue_batch(queue: JobQueue, ledger: Ledger, rng: random.Random, prefix: str, n: int) -> None:
    for i in range(n):
        job = Job(id=f"{prefix}-{i:02d}", priority=rng.choice(list(Priority)))
        with ledger.lock:
            ledger.enqueued_at[job.id] = time.monotonic()
        queue.enqueue(job)


def report(ledger: Ledger, interrupted: bool) -> None:
    with ledger.lock:
        accepted = len(ledger.enqueued_at)
        ran = len(ledger.succeeded) + len(ledger.failed)
        never_ran = accepted - ran
        print("\n=== naive: report " + "=" * 50)
        if interrupted:
            print("(stopped by Ctrl+C)")
        print(f"accepted by enqueue     {accepted:4d}")
        print(f"succeeded               {len(ledger.succeeded):4d}")
        print(f"failed, not retried     {len(ledger.failed):4d}   <- lesson 3: gone for good")
        print(f"never ran (dropped)     {never_ran:4d}   <- lesson 5: close() said nothing")
        print("mean wait before start, by priority (lesson 2: HIGH gets no head start):")
        for priority in Priority:
            waits = ledger.waits.get(priority, [])
            mean = sum(waits) / len(waits) * 1000 if waits else 0.0
            print(f"  {priority.name:<6} {mean:7.0f} ms over {len(waits)} jobs")
        print("The queue itself could tell you none of this: it has no metrics (lesson 6).")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40, help="jobs in the first batch")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--failure-rate", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    # The handler's failures are the point of the demo, and it prints them itself.
    logging.getLogger("naive").setLevel(logging.CRITICAL)
    rng = random.Random(args.seed)
    ledger = Ledger()
    queue = JobQueue(make_handler(ledger, rng, args.failure_rate), workers=args.workers)
    interrupted = False
    try:
        print(f"naive: {args.jobs} jobs of mixed priority, {args.workers} workers\n")
        enqueue_batch(queue, ledger, rng, "first", args.jobs)
        while not queue.join(timeout=0.2):
            pass
        print(f"\nnaive: {args.jobs // 2} more jobs, then close() at once, as a deploy would\n")
        enqueue_batch(queue, ledger, rng, "second", args.jobs // 2)
        time.sleep(0.3)
    except KeyboardInterrupt:
        interrupted = True
        print("\nCtrl+C: closing; running jobs finish, queued ones are dropped")
    try:
        queue.close()
    except KeyboardInterrupt:
        print("second Ctrl+C: exiting without waiting")
    report(ledger, interrupted)


if __name__ == "__main__":
    main()
