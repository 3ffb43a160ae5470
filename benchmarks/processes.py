"""Scenario 3, continued: CPU-bound handlers on threads and on processes.

``JobQueue(executor="process")`` runs each attempt in one of ``workers`` child
processes (``final/processes.py``). These figures say what that buys and what it costs:

- ``cpu_throughput``: jobs/s for handlers that spin ~20 ms in pure Python, on threads
  and on processes, measured in alternating rounds so that a machine busy with other
  things weighs on both alike.
- ``noop_throughput``: jobs/s for handlers that do nothing: the difference between the
  two executors is what one job pays to travel to a child and back.
- ``kill_delay``: how long past ``job_timeout`` the child of a hung attempt lives.

The handlers are module-level functions, importable by name, as a child needs them;
the loop count of a spin travels in the job's payload.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

from benchmarks.scenarios import _loop, _timed
from final import Job, JobQueue, current_attempt

CPU_SECONDS = 0.020  # what one CPU-bound job computes: the "20 ms of arithmetic"


def spin(job: Job) -> None:
    """Spin the number of loops the payload says: pure Python, holds the GIL."""
    _loop(int(job.payload))


def noop(job: Job) -> None:
    """Nothing: what is left is the queue's cost."""


def note_and_hang(job: Job) -> None:
    """Write this process's pid to the file the payload names, then never return."""
    Path(job.payload.decode()).write_text(str(os.getpid()))
    while not current_attempt().abandoned:  # always False in a child: it is killed
        time.sleep(3600)


@functools.cache
def spin_loops(target: float = CPU_SECONDS) -> int:
    """The loop count that takes ``target`` seconds on one thread (best of 5 runs),
    calibrated once per run, so that every figure spins the same loops."""
    loops = 100_000
    best = min(_timed(_loop, loops) for _ in range(5))
    return max(1, int(loops * target / best))


def throughput(executor: str, workers: int, jobs: list[Job]) -> float:
    """Jobs/s from the first enqueue to the last job settled, children already started
    (their start is a cost of the queue's construction, paid once)."""
    with JobQueue(spin if jobs[0].payload else noop, workers=workers, executor=executor) as q:
        begun = time.perf_counter()
        q.enqueue_many(jobs)
        q.join()
        return len(jobs) / (time.perf_counter() - begun)


def cpu_jobs(count: int, loops: int) -> list[Job]:
    return [Job(payload=str(loops).encode()) for _ in range(count)]


def kill_delay(job_timeout: float, workdir: Path) -> float:
    """Seconds between an attempt's deadline and the end of its child (1 worker).

    Measured from outside: the parent's clock at the enqueue plus ``job_timeout`` is a
    little earlier than the attempt's real deadline, so the figure is an upper bound.
    """
    note = workdir / "pid"
    note.unlink(missing_ok=True)
    with JobQueue(
        note_and_hang, workers=1, executor="process", job_timeout=job_timeout, max_retries=0
    ) as q:
        begun = time.monotonic()
        q.enqueue(Job(payload=str(note).encode()))
        while not note.exists() or not note.read_text():
            time.sleep(0.001)  # a harness: polling a file is fine here
        pid = int(note.read_text())
        while _alive(pid):
            time.sleep(0.001)
        return time.monotonic() - begun - job_timeout


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
