"""Handlers whose effect is one row in an application table, for the exactly-once proof.

``python -m final worker --handler benchmarks.pg_effects:exactly`` (or ``:plain``) runs
them in worker processes; ``benchmarks/exactly_pg.py`` runs them in-process too. The
job's payload is ``SECONDS``, how long the handler holds on after writing its row (a
handler that does more after its write: it widens the window a crash can fall in).

- ``exactly``: inserts the row and completes the job in one transaction
  (``current_attempt().complete(conn)``), then commits: the row exists if and only if
  the job completed.
- ``plain``: inserts the row and commits it, then returns, and the queue completes the
  job in a transaction of its own: at-least-once, so a crash between the two leaves
  the row and runs the job again.

Both write ``(mode, job, attempt, pid)`` to ``jobq_effects``, on a connection of the
calling thread (the database named by ``$JOBQ_EFFECTS_DSN``, else ``EFFECTS_DSN``, set
by an in-process caller), re-opened when it broke.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psycopg

from final import Job, current_attempt

DSN_ENV = "JOBQ_EFFECTS_DSN"
EFFECTS_DSN: str | None = None  # for handlers run in this process
TABLE = "CREATE TABLE IF NOT EXISTS jobq_effects (mode text, job text, attempt int, pid int)"
INSERT = "INSERT INTO jobq_effects VALUES (%s, %s, %s, %s)"

_local = threading.local()
_opened: list[psycopg.Connection[Any]] = []  # every thread's, for close_connections()
_lock = threading.Lock()


def _connection() -> psycopg.Connection[Any]:
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    if conn is None or conn.closed or conn.broken:
        dsn = EFFECTS_DSN or os.environ[DSN_ENV]
        conn = psycopg.connect(dsn, autocommit=False, connect_timeout=10)
        _local.conn = conn
        with _lock:
            _opened.append(conn)
    return conn


def close_connections() -> None:
    """Close the connections the handlers opened in this process (once its queue closed)."""
    with _lock:
        for conn in _opened:
            conn.close()
        _opened.clear()


def _hold(job: Job) -> None:
    seconds = float(job.payload or b"0")
    if seconds:
        time.sleep(seconds)


def exactly(job: Job) -> None:
    """Insert the effect row and complete the job in one transaction."""
    attempt = current_attempt()
    conn = _connection()
    with conn.transaction():  # an exception (ClaimLost too) rolls it back
        conn.execute(INSERT, ("exactly", job.id, attempt.number, os.getpid()))
        _hold(job)
        attempt.complete(conn)


def plain(job: Job) -> None:
    """Insert the effect row and commit it; the queue completes the job afterwards."""
    attempt = current_attempt()
    conn = _connection()
    with conn.transaction():
        conn.execute(INSERT, ("plain", job.id, attempt.number, os.getpid()))
    _hold(job)
