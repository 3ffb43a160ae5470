"""Watch the final tier work: ``python -m final demo``.

Jobs of mixed priority with simulated work (random durations, a share of random
failures) go to four workers on a queue kept in an SQLite file. Along the way the
demo shows an idempotency key being refused, floods the LOW lane until it pushes
back with ``QueueFull`` (what an HTTP client sees as a 503), prints the queue's
metrics every second, and ends with a report: what completed, what was retried,
what waits in the dead letters and why, and how long each priority waited.
Ctrl+C stops it cleanly: running jobs finish, queued ones stay on disk.

``simulated_work`` is also the handler ``python -m final serve`` runs when it is
given none.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType

from final.arguments import integer, number
from final.job_queue import DuplicateJob, Job, JobQueue, Metrics, Priority, QueueFull
from final.store import StoreError

__all__ = ["SimulatedFailure", "main", "simulated_work"]

FAILURE_RATE = 0.15
_rng = random.Random()
_rng_lock = threading.Lock()


class SimulatedFailure(Exception):
    """What the simulated work raises for the share of attempts chosen to fail."""


def simulated_work(job: Job) -> None:
    """Sleep 20 to 200 ms, then fail one attempt in seven or so; a payload that
    contains ``fail`` fails every attempt, to send a job to the dead letters on purpose."""
    with _rng_lock:
        duration = _rng.uniform(0.02, 0.2)
        unlucky = _rng.random() < FAILURE_RATE
    time.sleep(duration)
    if b"fail" in job.payload:
        raise SimulatedFailure(f"the payload asked to fail ({duration * 1000:.0f} ms)")
    if unlucky:
        raise SimulatedFailure(f"simulated failure after {duration * 1000:.0f} ms")


def _line(start: float, m: Metrics) -> str:
    lanes = " ".join(f"{p.name[0]}={m.by_priority[p].queued:<3d}" for p in Priority)
    p99 = "   -  " if m.wait_p99 is None else f"{m.wait_p99 * 1000:6.0f}"
    return (
        f"{time.monotonic() - start:5.1f}s  queued {lanes} running {m.in_flight}  "
        f"completed {m.completed:4d}  retried {m.retried:3d}  dead {m.dead:2d}  "
        f"wait p99 {p99} ms"
    )


def _stats(
    queue: JobQueue, start: float, every: float, stop: threading.Event, interrupted: threading.Event
) -> None:
    try:
        while not stop.wait(every):
            print(_line(start, queue.metrics()), flush=True)
    except BrokenPipeError:
        # The reader has gone (`| head`): stop as Ctrl+C would; the command line
        # ends quietly once the demo returns.
        interrupted.set()


def _dead_letters(queue: JobQueue) -> list[tuple[Job, str | None]]:
    """The dead letters with their last errors: read before close(), which lets go of the file."""
    dead = []
    for job in queue.dead_letters():
        info = queue.info(job.id)
        dead.append((job, None if info is None else info.last_error))
    return dead


def _report(
    m: Metrics, dead: list[tuple[Job, str | None]], path: Path, kept: bool, interrupted: bool
) -> None:
    print("\n=== final: report " + "=" * 56)
    if interrupted:
        print("(stopped by Ctrl+C: running jobs finished, queued ones stayed on disk)")
    print(f"accepted (or replayed)  {m.submitted:5d}")
    print(f"completed               {m.completed:5d}")
    print(f"retries scheduled       {m.retried:5d}   <- a failure is retried with backoff")
    print(f"failed for good         {m.failed:5d}   <- kept in the dead letters, with why")
    print(f"lost                    {m.lost:5d}   <- with a path, nothing is: it stays on disk")
    left = m.submitted - m.completed - m.failed
    if left:
        where = f"the next JobQueue on {path} runs them" if kept else "(a temporary file)"
        print(f"left on disk            {left:5d}   <- {where}")
    print("by priority:            accepted  completed  retried  dead")
    for p in Priority:
        lane = m.by_priority[p]
        print(
            f"  {p.name:<6}                {lane.submitted:6d}     {lane.completed:6d}"
            f"   {lane.retried:6d}  {lane.failed:4d}"
        )
    if m.wait_p50 is not None and m.wait_p99 is not None:
        print(
            f"wait before start, last 1,000 attempts: p50 {m.wait_p50 * 1000:.0f} ms,"
            f" p99 {m.wait_p99 * 1000:.0f} ms"
        )
    if dead:
        print(f"dead letters ({len(dead)}), oldest first:")
        for job, error in dead[:5]:
            print(f"  {job.id}  {job.priority.name:<6} {error}")


def _run(
    queue: JobQueue,
    args: argparse.Namespace,
    rng: random.Random,
    start: float,
    interrupted: threading.Event,
) -> None:
    priorities = list(Priority)
    print(f"seeding {args.jobs} jobs of mixed priority")
    queue.enqueue_many(
        Job(payload=f"seed-{i}".encode(), priority=rng.choice(priorities)) for i in range(args.jobs)
    )
    queue.enqueue(Job(payload=b"always fail", priority=Priority.HIGH, max_retries=1))

    first = Job(payload=b"charge order 42", idempotency_key="order-42")
    queue.enqueue(first)
    try:
        queue.enqueue(Job(payload=b"charge order 42 again", idempotency_key="order-42"))
    except DuplicateJob as exc:
        print(f"idempotency: a second job with key 'order-42' refused; the first is {exc.job_id}")

    accepted = 0
    try:
        while True:
            queue.enqueue(Job(payload=b"flood", priority=Priority.LOW), timeout=0)
            accepted += 1
    except QueueFull as exc:
        print(
            f"backpressure: the LOW lane took {accepted} jobs at once, then QueueFull ({exc});"
            " over HTTP this is a 503 with Retry-After"
        )

    # A steady trickle for the rest of the run; an enqueue waits for room, a while.
    deadline = start + args.duration
    n = 0
    while time.monotonic() < deadline and not interrupted.is_set():
        job = Job(payload=f"trickle-{n}".encode(), priority=rng.choice(priorities))
        with contextlib.suppress(QueueFull):
            queue.enqueue(job, timeout=0.5)
            n += 1
        interrupted.wait(1 / args.rate)
    if interrupted.is_set():
        return
    print(f"stopped producing after {args.duration}s; waiting for the queue to settle")
    _settle(queue, args.settle, interrupted)


def _settle(queue: JobQueue, patience: float, interrupted: threading.Event) -> bool:
    """Wait for every job to settle; False if Ctrl+C or ``patience`` came first."""
    deadline = time.monotonic() + patience
    while not queue.join(timeout=0.1):  # short waits, to notice a Ctrl+C
        if interrupted.is_set():
            return False
        if time.monotonic() > deadline:
            print(f"not settled after {patience}s; close() leaves the rest on disk")
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m final demo", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=number(), default=8.0, help="seconds of producing")
    parser.add_argument("--jobs", type=integer(0), default=40, help="jobs seeded at the start")
    parser.add_argument(
        "--rate", type=number(positive=True), default=20.0, help="jobs per second afterwards"
    )
    parser.add_argument("--workers", type=integer(1), default=4)
    parser.add_argument("--queue-size", type=integer(1), default=25, help="capacity of each lane")
    parser.add_argument(
        "--every", type=number(positive=True), default=1.0, help="seconds between stats lines"
    )
    parser.add_argument("--settle", type=number(), default=15.0, help="most seconds to wait at end")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--path", type=Path, default=None, help="SQLite file to use (default: a temporary one)"
    )


def run(args: argparse.Namespace) -> int:
    # The handler's failures are the point of the demo; the report counts them. The
    # level is put back at the end, for a caller that goes on logging.
    quiet = logging.getLogger("final")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    rng = random.Random(args.seed)
    _rng.seed(args.seed)
    # Ctrl+C sets an event the demo checks, rather than raising KeyboardInterrupt in
    # the middle of whatever the queue's threads are doing; a second one quits at once.
    interrupted = threading.Event()

    def on_sigint(sig: int, frame: FrameType | None) -> None:
        if interrupted.is_set():
            os.write(2, b"\nsecond Ctrl+C: exiting now; what is on disk runs next time\n")
            os._exit(130)
        interrupted.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        with tempfile.TemporaryDirectory(prefix="final-demo-") as tmp:
            path = args.path if args.path is not None else Path(tmp) / "jobs.db"
            _demo(args, rng, path, interrupted)
    except BrokenPipeError:
        raise  # not a problem with the path: the command line ends quietly
    except (StoreError, OSError) as exc:
        # A --path that cannot be a queue (no such directory, not ours, in use): one
        # line that says so, not a traceback.
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGINT, previous)
        quiet.setLevel(level)
    return 130 if interrupted.is_set() else 0


def _demo(
    args: argparse.Namespace, rng: random.Random, path: Path, interrupted: threading.Event
) -> None:
    queue = JobQueue(
        simulated_work,
        workers=args.workers,
        queue_size=args.queue_size,
        max_retries=2,
        backoff=0.2,
        max_backoff=1.0,
        path=path,
    )
    print(
        f"final: {args.workers} workers, lanes of {args.queue_size}, up to 2 retries,"
        f" on {path}; Ctrl+C stops cleanly\n"
    )
    start = time.monotonic()
    stop = threading.Event()
    stats = threading.Thread(
        target=_stats,
        args=(queue, start, args.every, stop, interrupted),
        name="demo-stats",
        daemon=True,
    )
    stats.start()
    try:
        _run(queue, args, rng, start, interrupted)
    except BaseException:
        queue.close(timeout=0)  # before run() lets the handler's failures be logged again
        raise
    finally:
        stop.set()
        stats.join()
    if interrupted.is_set():
        print("\nCtrl+C: running jobs finish, queued ones stay on disk (again to quit now)")
    dead = _dead_letters(queue)
    queue.close(timeout=0)  # take nothing more from the lanes
    queue.close(timeout=args.settle)  # and let what runs finish
    _report(queue.metrics(), dead, path, args.path is not None, interrupted.is_set())
