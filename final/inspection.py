"""Look into a queue's SQLite file without touching it: ``python -m final inspect``.

The file is opened read-only (an SQLite ``mode=ro`` URI) and the queue's lock on it
is not taken, so this works while a server runs on the file: in WAL mode a reader sees
the last committed state and never blocks the writer. The attempts journal beside it
(``<path>.attempts``, named after the resolved path) is read too: a job with an
attempt there that the database does not know of is counted as processing, with that
attempt. What it shows may lag the running queue by a few milliseconds for the writes
allowed to lag (a retry scheduled, a job settled); accepted jobs and started attempts
are always there.
(This module is not called ``inspect``: that would shadow the standard library's.)
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from final.jobs import Priority, Status
from final.sqlite_store import APPLICATION_ID, SCHEMA_VERSION, read_journal
from final.store import StoreError

__all__ = ["DeadLetter", "Snapshot", "format_snapshot", "read", "read_pg"]

# The names the HTTP API uses too: Status's values, and Priority's names in lower case,
# by the value the file keeps.
STATUSES = tuple(status.value for status in Status)
PRIORITY_NAMES = {priority.value: priority.name.lower() for priority in Priority}


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    priority: str
    attempts: int
    last_error: str | None
    finished_at: float | None  # time.time()


@dataclass(frozen=True, slots=True)
class Snapshot:
    path: str
    counts: dict[str, dict[str, int]]  # status -> priority -> jobs
    oldest_queued: float | None  # time.time() of the oldest job still waiting, if any
    dead: list[DeadLetter]  # oldest first, at most the limit asked for
    dead_total: int


def read(path: str | Path, *, limit: int = 20) -> Snapshot:
    """Counts by status and priority, and the first ``limit`` dead letters, of the
    queue file at ``path``. ``StoreError`` if it is missing or not a queue of ours."""
    path = Path(path)
    db = _open_read_only(path)
    try:
        # Read before the database: an attempt started after this read shows as not
        # started, never the other way round.
        started = read_journal(f"{os.path.realpath(path)}.attempts")  # as the store names it
        # One read transaction, so the counts and the dead letters agree.
        db.execute("BEGIN")
        counts = _counts(db, started)
        oldest = db.execute(
            "SELECT min(enqueued_at) FROM jobs WHERE status IN ('queued', 'retrying')"
        ).fetchone()[0]
        dead_total = db.execute("SELECT count(*) FROM jobs WHERE status = 'failed'").fetchone()[0]
        dead = [
            DeadLetter(job_id, _priority_name(priority), attempts, error, at)
            for job_id, priority, attempts, error, at in db.execute(
                "SELECT id, priority, attempts, last_error, finished_at FROM jobs"
                " WHERE status = 'failed' ORDER BY finished_at LIMIT ?",
                (limit,),
            )
        ]
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot read: {exc}") from exc
    finally:
        db.close()
    return Snapshot(str(path), counts, oldest, dead, dead_total)


def read_pg(dsn: str, queue: str = "default", *, limit: int = 20) -> Snapshot:
    """The same snapshot of a queue in PostgreSQL, read in one read-only transaction:
    it creates nothing, and takes no lock a worker would wait on. ``StoreError`` if the
    server does not answer or the database holds no queue tables."""
    import psycopg

    from final import pg_engine

    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            conn.read_only = True
            if not pg_engine.tables_present(conn):
                raise StoreError("the database has no queue tables (jobq_version is missing)")
            by_status = pg_engine.status_counts(conn, queue)
            oldest = pg_engine.oldest_waiting(conn, queue)
            dead_rows = pg_engine.dead_letters(conn, queue)
    except psycopg.Error as exc:
        raise StoreError(f"cannot read the queue in PostgreSQL: {exc}") from exc
    counts = {status: dict.fromkeys(PRIORITY_NAMES.values(), 0) for status in STATUSES}
    for (status, priority), n in by_status.items():
        counts.setdefault(status, dict.fromkeys(PRIORITY_NAMES.values(), 0))
        counts[status][_priority_name(priority)] += n
    dead = [
        DeadLetter(
            d.id,
            _priority_name(d.priority),
            d.attempts,
            d.last_error,
            None if d.finished_at is None else d.finished_at.timestamp(),
        )
        for d in dead_rows[:limit]
    ]
    return Snapshot(f"queue {queue!r} in PostgreSQL", counts, oldest, dead, len(dead_rows))


def _open_read_only(path: Path) -> sqlite3.Connection:
    """``path`` opened read-only, once it is known to be a queue this code can read."""
    if not path.exists():
        raise StoreError(f"{path}: no such file")
    if not path.is_file():
        raise StoreError(f"{path}: not a file (give the queue's file, not its directory)")
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open read-only: {exc}") from exc
    try:
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if app_id != APPLICATION_ID:
            raise StoreError(f"{path} is not a job queue of ours")
        if version > SCHEMA_VERSION:
            raise StoreError(f"{path} has schema version {version}, newer than {SCHEMA_VERSION}")
    except sqlite3.DatabaseError as exc:
        db.close()
        raise StoreError(f"{path} is not an SQLite database ({exc})") from exc
    except StoreError:
        db.close()
        raise
    return db


def _priority_name(value: int) -> str:
    return PRIORITY_NAMES.get(value, str(value))


def _counts(db: sqlite3.Connection, started: dict[str, int]) -> dict[str, dict[str, int]]:
    """Jobs by status and priority, an attempt the journal has and the database not yet
    counted as processing (running now, or ended moments ago, its end not yet committed),
    and a scheduled job whose run_at has come as queued: the queue writes nothing when
    one falls due, so the file says scheduled until its attempt starts."""
    counts = {status: dict.fromkeys(PRIORITY_NAMES.values(), 0) for status in STATUSES}
    # A file of a version before run_at (3) is read as it is: it has no scheduled job.
    columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    shown = "status"
    if "run_at" in columns:
        shown = "CASE WHEN status = 'scheduled' AND run_at <= ? THEN 'queued' ELSE status END"
    rows = db.execute(
        f"SELECT {shown} AS shown, priority, count(*) FROM jobs GROUP BY shown, priority",
        (time.time(),) if "run_at" in columns else (),
    )
    for status, priority, n in rows:
        counts.setdefault(status, dict.fromkeys(PRIORITY_NAMES.values(), 0))
        counts[status][_priority_name(priority)] = n
    unsettled = db.execute(
        "SELECT id, status, priority, attempts FROM jobs"
        " WHERE status IN ('scheduled', 'queued', 'processing', 'retrying')"
    )
    for job_id, status, priority, attempts in unsettled:
        if started.get(job_id, 0) > attempts and status != "processing":
            counts[status][_priority_name(priority)] -= 1
            counts["processing"][_priority_name(priority)] += 1
    return counts


def _printable(text: str) -> str:
    """``text`` as it may reach a terminal: an id or an error may hold any character, and a
    control character (an escape sequence, a carriage return, a newline) would redraw the
    table or the terminal itself. Those are written as ``repr`` writes them; the rest as is."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def format_snapshot(snapshot: Snapshot, *, now: float) -> str:
    """The snapshot as a table for a terminal."""
    priorities = list(PRIORITY_NAMES.values())
    lines = [f"{snapshot.path}", f"  {'status':<11}" + "".join(f"{p:>8}" for p in priorities)]
    lines[1] += f"{'total':>8}"
    for status, by_priority in snapshot.counts.items():
        cells = "".join(f"{by_priority.get(p, 0):8d}" for p in priorities)
        lines.append(f"  {status:<11}{cells}{sum(by_priority.values()):8d}")
    if snapshot.oldest_queued is not None:
        lines.append(f"  oldest waiting job: enqueued {now - snapshot.oldest_queued:.1f}s ago")
    lines.append(f"dead letters: {snapshot.dead_total}")
    for d in snapshot.dead:
        when = (
            "?"
            if d.finished_at is None
            else datetime.fromtimestamp(d.finished_at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        )
        job_id, error = _printable(d.id), _printable(d.last_error or "")
        lines.append(f"  {job_id}  {d.priority:<6} {d.attempts} attempts  {when}  {error}")
    if snapshot.dead_total > len(snapshot.dead):
        lines.append(f"  ... and {snapshot.dead_total - len(snapshot.dead)} more (--limit)")
    return "\n".join(lines)
