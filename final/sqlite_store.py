"""The final tier's store on disk: SQLite, written by one thread in group commits.

Durability is a choice, ``durability``:

- ``"power"`` (the default): ``PRAGMA synchronous=FULL``. SQLite's documentation says
  that with FULL, in WAL mode, a transaction that has committed is durable across a
  power loss or an operating system crash, because the WAL is synced at every commit.
- ``"process"``: ``PRAGMA synchronous=NORMAL``. In WAL mode, SQLite's documentation
  says the database stays consistent and a committed transaction survives the crash of
  the application, but may be rolled back after a power loss or an operating system
  crash, because the WAL is synced only at checkpoints.

Both pragmas are read back at open, and a store that did not get what it asked for
refuses to start.

Which writes wait for the disk (see ``final/store.py`` for why):

- ``add`` and ``revived`` (acknowledgements) and ``claimed`` (the attempt count a
  crashing handler must not escape) return only once committed;
- ``retrying`` and ``settled`` return at once and ride in the next commit: losing
  them in a crash only means a job runs once more.

Group commit: every write goes to one writer thread, which takes everything that has
arrived while it was committing and commits it as one transaction. Producers and
workers that arrive together share a commit, so more producers means more jobs per
fsync, while each ``enqueue`` still returns only after its own job is on disk.

The file is ours and versioned: ``PRAGMA application_id`` marks it, ``PRAGMA
user_version`` says its schema version; a file that is not one of our queues, or is of
a newer version, is refused before anything is written to it. A lock file beside it
(``<path>.lock``, ``fcntl.flock``) refuses a second queue on the same path while the
first is open; reading it (``inspect``) needs no lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from final.job_queue import Record

logger = logging.getLogger(__name__)

APPLICATION_ID = 0x4A6F6251  # "JobQ"
SCHEMA_VERSION = 1
DURABILITY = {"power": ("FULL", 2), "process": ("NORMAL", 1)}

SCHEMA = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    payload BLOB NOT NULL,
    priority INTEGER NOT NULL,
    idempotency_key TEXT UNIQUE,
    max_retries INTEGER NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT,
    enqueued_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    due_at REAL
);
CREATE INDEX jobs_unsettled ON jobs (status) WHERE status IN ('queued', 'processing', 'retrying');
"""


class StoreError(Exception):
    """The file cannot be used as a queue: not ours, too new, locked, or unwritable."""


class DuplicateRow(Exception):
    """An insert hit the id or idempotency key of a job already on disk."""

    def __init__(self, job_id: str, first: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id
        self.first = first  # the id of the job already on disk


@dataclass
class _Batch:
    """Writes that wait together for one commit; ``error`` is set if it failed."""

    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    duplicates: list[DuplicateRow] = field(default_factory=list)


_Write = Callable[[sqlite3.Connection, _Batch], object]
_LAGGING = _Batch()  # what writes nobody waits for are handed: never read


class SQLiteStore:
    def __init__(self, path: str, durability: str = "power") -> None:
        if durability not in DURABILITY:
            raise ValueError(f"durability must be 'power' or 'process', got {durability!r}")
        self.path = path
        self._lockfile = _lock(path)
        try:
            self._writer_db = _open(path, durability)
            self._reader_db = sqlite3.connect(path, check_same_thread=False)
        except BaseException:
            self._lockfile.close()
            raise
        self._reader_lock = threading.Lock()
        # Writes for the writer thread: (write, batch to signal or None, must it
        # survive a power loss); None = stop.
        self._inbox: queue.SimpleQueue[tuple[_Write, _Batch | None, bool] | None] = (
            queue.SimpleQueue()
        )
        self._power = durability == "power"
        self._closed = False
        self._close_lock = threading.Lock()
        self._writer = threading.Thread(target=self._write_loop, name="final-store", daemon=True)
        self._writer.start()

    # -- writes: durable ones wait for their commit ---------------------------------------

    def add(self, records: Sequence[Record]) -> None:
        rows = [_row(r) for r in records]

        def insert(db: sqlite3.Connection, batch: _Batch) -> None:
            for row in rows:  # in order, stopping at the first duplicate, as enqueue_many says
                try:
                    db.execute(
                        "INSERT INTO jobs VALUES (:id, :payload, :priority, :idempotency_key,"
                        " :max_retries, :status, :attempts, :last_error, :enqueued_at,"
                        " :started_at, :finished_at, :due_at)",
                        row,
                    )
                except sqlite3.IntegrityError:
                    batch.duplicates.append(DuplicateRow(str(row["id"]), _first(db, row)))
                    return

        batch = self._wait(insert, acknowledged=True)
        if batch.duplicates:
            raise batch.duplicates[0]

    def claimed(self, record: Record) -> None:
        values = (record.attempts, _wall(record.started), record.job.id)
        # An attempt count must survive the process dying (a handler that kills it),
        # not the machine: a power loss takes the handler down too. So its commit
        # pays no fsync; see _write_loop.
        self._wait(
            lambda db, _: db.execute(
                "UPDATE jobs SET status = 'processing', attempts = ?, started_at = ?,"
                " due_at = NULL WHERE id = ?",
                values,
            )
        )

    def revived(self, record: Record) -> None:
        job_id = record.job.id
        self._wait(
            lambda db, _: db.execute(
                "UPDATE jobs SET status = 'queued', attempts = 0, finished_at = NULL WHERE id = ?",
                (job_id,),
            ),
            acknowledged=True,
        )

    # -- writes that may lag: they ride in the next commit --------------------------------

    def retrying(self, record: Record, due_in: float) -> None:
        values = (record.attempts, record.last_error, time.time() + due_in, record.job.id)
        self._later(
            lambda db, _: db.execute(
                "UPDATE jobs SET status = 'retrying', attempts = ?, last_error = ?, due_at = ?"
                " WHERE id = ?",
                values,
            )
        )

    def settled(self, record: Record) -> None:
        values = (
            record.status.value,
            record.attempts,
            record.last_error,
            _wall(record.finished),
            record.job.id,
        )
        self._later(
            lambda db, _: db.execute(
                "UPDATE jobs SET status = ?, attempts = ?, last_error = ?, finished_at = ?,"
                " due_at = NULL WHERE id = ?",
                values,
            )
        )

    # -- reads ------------------------------------------------------------------------------

    def find(self, job_id: str) -> Record | None:
        with self._reader_lock:
            row = self._reader_db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _record(row)

    def load(self) -> list[tuple[Record, float]]:
        """Every unsettled job, in the order accepted, with seconds left of its backoff."""
        with self._reader_lock:
            rows = self._reader_db.execute(
                "SELECT * FROM jobs WHERE status IN ('queued', 'processing', 'retrying')"
                " ORDER BY rowid"
            ).fetchall()
        now = time.time()
        return [(_record(row), max(0.0, (row[11] or now) - now)) for row in rows]

    def dead(self) -> list[Record]:
        with self._reader_lock:
            rows = self._reader_db.execute(
                "SELECT * FROM jobs WHERE status = 'failed' ORDER BY finished_at"
            ).fetchall()
        return [_record(row) for row in rows]

    def close(self) -> None:
        """Commit what is pending, and let go of the file. Safe from any thread, twice:
        a second call returns once the first has finished."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self._inbox.put(None)
            self._writer.join()
            self._writer_db.close()
            self._reader_db.close()
            self._lockfile.close()

    # -- the writer thread ------------------------------------------------------------------

    def _wait(self, write: _Write, acknowledged: bool = False) -> _Batch:
        """Hand a write to the writer and wait for its commit. An ``acknowledged``
        write is one the caller reports as done: it gets the durability asked for."""
        if self._closed:
            raise StoreError(f"{self.path}: the store is closed")
        batch = _Batch()
        self._inbox.put((write, batch, acknowledged and self._power))
        batch.done.wait()
        if batch.error is not None:
            raise StoreError(f"{self.path}: {batch.error}") from batch.error
        return batch

    def _later(self, write: _Write) -> None:
        if not self._closed:
            self._inbox.put((write, None, False))

    def _write_loop(self) -> None:
        db = self._writer_db
        synced = self._power  # whether the connection is at synchronous=FULL now
        while True:
            first = self._inbox.get()
            items = [first]
            while True:  # everything that arrived meanwhile shares this commit
                try:
                    items.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is None for item in items)
            writes = [item for item in items if item is not None]
            waiting = [batch for _, batch, _ in writes if batch is not None]
            # Pay for an fsync only when this commit holds an acknowledgement that
            # must survive a power loss. In WAL mode, NORMAL still survives the
            # process dying, which is all an attempt count or a lagging write needs.
            power = any(needs_power for _, _, needs_power in writes)
            if power != synced:
                db.execute(f"PRAGMA synchronous = {'FULL' if power else 'NORMAL'}")
                synced = power
            try:
                db.execute("BEGIN IMMEDIATE")
                for write, batch, _ in writes:
                    write(db, batch if batch is not None else _LAGGING)
                db.execute("COMMIT")
            except sqlite3.Error as exc:  # a full disk, a read-only file: tell the waiters
                logger.error("%s: commit of %d writes failed: %s", self.path, len(writes), exc)
                if db.in_transaction:
                    db.execute("ROLLBACK")
                for batch in waiting:
                    batch.error = exc
            for batch in waiting:
                batch.done.set()
            if stop:
                return


def _lock(path: str) -> TextIO:
    lockfile = open(f"{path}.lock", "a+")  # noqa: SIM115 - held until close()
    try:
        fcntl.flock(lockfile.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lockfile.close()
        raise StoreError(
            f"{path} is already open in another JobQueue (it holds {path}.lock); "
            "close that one first"
        ) from None
    return lockfile


def _open(path: str, durability: str) -> sqlite3.Connection:
    """Open (or create) the file, refusing what is not ours before writing anything."""
    existed = os.path.exists(path) and os.path.getsize(path) > 0
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not an SQLite database ({exc}); it was left as it is") from exc
    if existed and (app_id != APPLICATION_ID or tables == 0):
        db.close()
        raise StoreError(f"{path} is not a job queue of ours; it was left as it is")
    if version > SCHEMA_VERSION:
        db.close()
        raise StoreError(
            f"{path} has schema version {version}, newer than this code's {SCHEMA_VERSION}; "
            "upgrade the code, the file was left as it is"
        )
    pragma, expected = DURABILITY[durability]
    mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    db.execute(f"PRAGMA synchronous = {pragma}")
    synchronous = db.execute("PRAGMA synchronous").fetchone()[0]
    if mode != "wal" or synchronous != expected:
        db.close()
        raise StoreError(
            f"{path}: asked for WAL and synchronous={pragma}, got {mode} and {synchronous}"
        )
    if not existed or tables == 0:
        db.executescript(
            f"BEGIN; {SCHEMA} PRAGMA application_id = {APPLICATION_ID};"
            f" PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        )
    return db


def _row(record: Record) -> dict[str, object]:
    job = record.job
    return {
        "id": job.id,
        "payload": job.payload,
        "priority": int(job.priority),
        "idempotency_key": job.idempotency_key,
        "max_retries": record.max_retries,
        "status": record.status.value,
        "attempts": record.attempts,
        "last_error": record.last_error,
        "enqueued_at": _wall(record.enqueued),
        "started_at": _wall(record.started),
        "finished_at": _wall(record.finished),
        "due_at": None,
    }


def _first(db: sqlite3.Connection, row: dict[str, object]) -> str:
    """The id of the job on disk that an insert collided with."""
    if row["idempotency_key"] is not None:
        hit = db.execute(
            "SELECT id FROM jobs WHERE idempotency_key = ?", (row["idempotency_key"],)
        ).fetchone()
        if hit is not None:
            return str(hit[0])
    return str(row["id"])


def _record(row: tuple[Any, ...]) -> Record:
    from final.job_queue import Job, Priority, Record, Status

    job_id, payload, priority, key, max_retries, status, attempts, error = row[:8]
    enqueued_at, started_at, finished_at = row[8], row[9], row[10]
    job = Job(job_id, bytes(payload), Priority(priority), key, max_retries)
    record = Record(job, max_retries)
    record.status = Status(status)
    record.attempts = attempts
    record.last_error = error
    record.enqueued = record.ready = _mono(enqueued_at)
    record.started = None if started_at is None else _mono(started_at)
    record.finished = None if finished_at is None else _mono(finished_at)
    return record


def _wall(monotonic: float | None) -> float | None:
    return None if monotonic is None else monotonic + time.time() - time.monotonic()


def _mono(wall: float) -> float:
    return wall + time.monotonic() - time.time()
