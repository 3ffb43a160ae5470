"""Handlers for ``executor="process"`` tests: importable by name, as a child needs them.

Each one that a test must watch writes a line to the file named by the job's payload
(``pid number time_left``), so that the test, in the parent, knows which child ran
which attempt, without sharing memory with it.
"""

from __future__ import annotations

import os
import signal
import time

from final import Job, current_attempt


def _note(job: Job) -> None:
    """Append ``pid attempt-number time-left`` to the file the payload names."""
    attempt = current_attempt()
    left = attempt.time_left()
    with open(job.payload, "a") as file:
        file.write(f"{os.getpid()} {attempt.number} {'-' if left is None else left}\n")


def noop(job: Job) -> None:
    """Nothing: what a job costs besides its work."""


def note(job: Job) -> None:
    _note(job)


def note_and_hang(job: Job) -> None:
    """Never returns by itself: only its child's end stops it."""
    _note(job)
    while True:
        time.sleep(3600)


def note_and_wait_for_go(job: Job) -> None:
    """Returns once the file ``<payload>.go`` exists: the test says when."""
    _note(job)
    go = job.payload + b".go"
    while not os.path.exists(go):
        time.sleep(0.01)  # another process's file: nothing to wait on but its existence


def note_and_hang_once(job: Job) -> None:
    """The first attempt hangs (until its child is killed); a retry returns."""
    _note(job)
    while current_attempt().number == 1:
        time.sleep(3600)


def note_and_exit(job: Job) -> None:
    _note(job)
    os._exit(1)


def note_and_segfault(job: Job) -> None:
    _note(job)
    os.kill(os.getpid(), signal.SIGSEGV)  # what a crash in C code does to a process
    time.sleep(3600)


def fork_and_return(job: Job) -> None:
    """Forks, and the fork returns into the child's loop, as a careless library's might;
    the child writes the fork's pid to the payload's file and waits for it to end.
    With no payload, it does nothing."""
    if not job.payload:
        return
    pid = os.fork()
    if pid == 0:
        return
    with open(job.payload, "a") as file:
        file.write(f"{pid}\n")
    os.waitpid(pid, 0)


def fail(job: Job) -> None:
    raise ValueError(f"no good: {job.id}")


def die_if_poison(job: Job) -> None:
    """A poison job kills its child every time; the others succeed."""
    if job.payload == b"poison":
        os._exit(1)


def spin(job: Job) -> None:
    """About 20 ms of pure-Python arithmetic on an idle core: CPU-bound, holds the GIL."""
    total = 0
    for i in range(int(job.payload or b"300000")):
        total += i * i % 7


def complete_in_child(job: Job) -> None:
    """Asks to complete in a transaction: a child has no claim to fence it with."""
    current_attempt().complete(object())
