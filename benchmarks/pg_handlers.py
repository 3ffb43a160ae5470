"""The handler of the worker processes in the PostgreSQL process tests and crash harness.

``python -m final worker --handler benchmarks.pg_handlers:run`` runs ``run``; the job's
payload says what it does, words separated by spaces:

- ``flaky``: the first attempt fails (after writing a ``fail`` line);
- ``kill``: the process kills itself with SIGKILL mid-attempt (a poison job);
- ``hold1:PATH``: the first attempt waits until the file ``PATH`` exists;
- ``sleep:SECONDS``: the attempt takes that long.

Every attempt appends ``PID ID ATTEMPT TIME start`` to the ledger, the file named by
``$JOBQ_LEDGER`` (``TIME`` is ``time.time()``: the processes share one clock), then
``PID ID ATTEMPT TIME end`` when it returns. Why a file and not a table: a line is
one ``os.write`` on an ``O_APPEND`` descriptor, so it lands whole, after every other
process's lines, and once the call has returned it is the kernel's: a SIGKILL a
moment later cannot take it back. A row written on the handler's own connection
would need a commit per run and could be cut off with the process mid-statement.
No ``fsync``: it guards against the machine failing, which these tests do not do.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from final import Job, current_attempt

LEDGER_ENV = "JOBQ_LEDGER"

_fd: int | None = None


def _write(line: str) -> None:
    global _fd
    if _fd is None:
        _fd = os.open(os.environ[LEDGER_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(_fd, (line + "\n").encode())


def run(job: Job) -> None:
    """Do what ``job.payload`` says (see the module docstring), writing the ledger."""
    number = current_attempt().number
    words = job.payload.decode().split()
    _write(f"{os.getpid()} {job.id} {number} {time.time():.6f} start")
    for word in words:
        kind, _, argument = word.partition(":")
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif kind == "hold1" and number == 1:
            while not Path(argument).exists():
                time.sleep(0.01)  # another process releases it: a file is all we share
        elif kind == "sleep":
            time.sleep(float(argument))
        elif kind == "flaky" and number == 1:
            _write(f"{os.getpid()} {job.id} {number} {time.time():.6f} fail")
            raise RuntimeError("flaky: fails its first attempt")
    _write(f"{os.getpid()} {job.id} {number} {time.time():.6f} end")


@dataclass(frozen=True)
class Entry:
    pid: int
    job_id: str
    attempt: int
    time: float
    event: str  # start, fail or end


def read_ledger(path: Path) -> list[Entry]:
    """The ledger's entries in the order they were written."""
    entries = []
    for line in path.read_text().splitlines():
        pid, job_id, attempt, at, event = line.split()
        entries.append(Entry(int(pid), job_id, int(attempt), float(at), event))
    return entries


def starts(entries: list[Entry]) -> Counter[str]:
    """How many attempts of each job started."""
    return Counter(e.job_id for e in entries if e.event == "start")
