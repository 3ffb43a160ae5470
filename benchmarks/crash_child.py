"""The processes ``benchmarks/crash.py`` kills: ``python -m benchmarks.crash_child ...``.

Two programs, each a subcommand:

- ``mid-run TIER PATH LEDGER JOBS MODE``: a queue of ``TIER`` (on the file ``PATH``, or
  in memory if ``PATH`` is empty) with 2 workers whose handler appends each job's id to
  ``LEDGER`` and sleeps 2 ms. ``MODE`` ``run`` accepts ``JOBS`` jobs, printing each
  id once ``enqueue`` has returned, then ``accepted``, and waits to be killed;
  ``drain`` reopens ``PATH``, closes it (which runs what is left) and prints
  ``drained``. ``TIER`` ``final-pg`` is final on PostgreSQL, ``PATH`` its dsn: there
  ``drain`` waits until the whole queue has settled, the killed child's claims
  rescued once their lease (1 s here) has passed. ``final-process`` is final on the
  file with ``executor="process"``: the handler (``ledger_line``) runs in the queue's
  children, and finds the ledger in the job's payload.
- ``hammer PATH LEDGER FIRST LAST``: the final tier on ``PATH`` with ``WORKERS``
  workers and flaky handlers (every tenth job fails its first attempt; each attempt
  appends "id attempt" to ``LEDGER``). It enqueues ids ``FIRST`` to ``LAST - 1``,
  printing each one acknowledged (ids below ``FIRST`` were enqueued by earlier
  children), then runs everything to the end and prints ``drained``.

The ledger is written with ``os.write`` on an ``O_APPEND`` descriptor: each line
reaches the file in one system call, so a SIGKILL cannot leave half a line or a line
lost in a buffer.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import random
import threading
import time
from typing import Any

WORKERS = 4  # the hammer's workers
MIN_RUN = 0.002  # seconds a hammer handler runs at least: the duplicate bound rests on it
MAX_RUN = 0.02  # ...and at most, about


def _ledger(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)


def ledger_line(job: Any) -> None:
    """The handler of ``final-process``, importable by name: the ledger is the payload."""
    out = _ledger(job.payload.decode())
    os.write(out, (job.id + "\n").encode())
    os.close(out)
    time.sleep(0.002)


def mid_run(tier: str, path: str, ledger: str, jobs: int, mode: str) -> None:
    module = importlib.import_module(tier.partition("-")[0])
    out = _ledger(ledger)

    def handler(job: Any) -> None:
        os.write(out, (job.id + "\n").encode())
        time.sleep(0.002)

    options: dict[str, Any] = {"path": path} if path else {}
    if tier == "final-pg":
        options = {"dsn": path, "lease": 1.0}
    if tier == "final-process":
        # By its module's name: run with -m, this file is __main__, whose functions a
        # child process cannot import by name (final/processes.py says why).
        handler = importlib.import_module("benchmarks.crash_child").ledger_line
        options["executor"] = "process"
    q = module.JobQueue(handler, workers=2, **options)
    if mode == "drain":
        if tier == "final-pg":  # this handle accepted nothing: wait for the queue itself
            while (m := q.metrics()).queued + m.retrying + m.in_flight:
                time.sleep(0.05)  # a harness: polling the database is fine here
        q.close()
        print("drained", flush=True)
        return
    for i in range(jobs):
        q.enqueue(module.Job(id=str(i), payload=ledger.encode()))
        print(i, flush=True)
    print("accepted", flush=True)
    threading.Event().wait()  # until the harness kills this process


def hammer(path: str, ledger: str, first: int, last: int) -> None:
    # Imported here, so that a mid-run child of another tier loads only its own.
    from final import DuplicateJob, Job, JobQueue, current_attempt

    out = _ledger(ledger)

    def handler(job: Job) -> None:
        attempt = current_attempt().number
        os.write(out, f"{job.id} {attempt}\n".encode())
        time.sleep(random.uniform(MIN_RUN, MAX_RUN))
        if attempt == 1 and int(job.id) % 10 == 0:
            raise RuntimeError("flaky: fails its first attempt")

    q = JobQueue(handler, workers=WORKERS, path=path, max_retries=5, backoff=0.01, max_backoff=0.05)
    for i in range(first, last):
        # A duplicate was stored before the last kill, but its acknowledgement never arrived.
        with contextlib.suppress(DuplicateJob):
            q.enqueue(Job(id=str(i)))
        print(i, flush=True)
    q.join()
    print("drained", flush=True)
    q.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("mid-run", help="accept jobs and wait to be killed, or drain")
    one.add_argument("tier", choices=("naive", "improved", "final", "final-pg", "final-process"))
    one.add_argument("path", help="the queue's file; empty: in memory")
    one.add_argument("ledger")
    one.add_argument("jobs", type=int)
    one.add_argument("mode", choices=("run", "drain"))
    many = commands.add_parser("hammer", help="enqueue [first, last) and run it all, flakily")
    many.add_argument("path")
    many.add_argument("ledger")
    many.add_argument("first", type=int)
    many.add_argument("last", type=int)
    args = parser.parse_args(argv)
    if args.command == "mid-run":
        mid_run(args.tier, args.path, args.ledger, args.jobs, args.mode)
    else:
        hammer(args.path, args.ledger, args.first, args.last)


if __name__ == "__main__":
    main()
