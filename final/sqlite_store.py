"""The final tier's store on disk: SQLite for the jobs, an append-only file for attempts.

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

What each write must survive, and what it pays (see ``final/store.py`` for why):

- ``add`` and ``revived`` are acknowledgements: they return once committed with the
  durability asked for (an fsync under ``"power"``).
- ``claimed``, the attempt count a handler that kills the process must not escape,
  has only to survive the process: a power loss takes the handler down with it.
  Bytes stored into a file mapped with ``mmap`` are in the operating system's page
  cache the instant they are stored, and survive the process however it dies. So an
  attempt is one line copied into ``<path>.attempts``, mapped: no system call, and
  no letting go of the GIL, where an SQLite commit per attempt (even without fsync)
  measured ten times the cost and was the wall of the whole queue, and a ``write()``
  per attempt made every worker hand the GIL round. At open, the lines of the last
  run are folded into the database and the file starts again empty; while running,
  it starts again with just the attempts still open whenever it is full.
- ``retrying`` and ``settled`` may lag: they are committed a few milliseconds later,
  many at a time, and losing them in a crash only means that a job runs once more.

Group commit, led by whoever needs it: a thread that needs a commit and finds none
under way commits everything pending as one transaction, on its own thread; writes that
arrive meanwhile wait, each on a lock of its own, and the leader hands the lead to the
first of them when it is done. Producers that arrive together share a commit (and an
fsync), so more producers means more jobs per commit, while each ``enqueue`` still
returns only after its own job is on disk; and a lone producer pays no hand-off to
another thread. Lagging writes are committed apart, by one background thread, ``LAG``
seconds after the first of them arrived (or in the next acknowledgement's commit, if
one is under way by then).

The file is ours and versioned: ``PRAGMA application_id`` marks it, ``PRAGMA
user_version`` says its schema version; a file that is not one of our queues, or is of
a newer version, is refused before anything is written to it. A lock file beside it
(``<path>.lock``, ``fcntl.flock``) refuses a second queue on the same path while the
first is open; reading it (``inspect``) needs no lock.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import mmap
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TextIO

from final.jobs import Job, Priority, Record, Status
from final.store import DuplicateRow, StoreError

logger = logging.getLogger(__name__)

APPLICATION_ID = 0x4A6F6251  # "JobQ"
SCHEMA_VERSION = 1
DURABILITY = {"power": ("FULL", 2), "process": ("NORMAL", 1)}

# How long the first lagging write waits for the flusher's commit. Short, so that a
# crash reruns few jobs; long enough that a busy queue's commit carries many.
LAG = 0.005
# Up to this many rows go to one statement of their exact size (see _statements).
EXACT_ROWS = 32
# The size of the attempts file; when full, it starts again with the open attempts.
JOURNAL_BYTES = 1 << 22

SCHEMA = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    payload BLOB NOT NULL,
    priority INTEGER NOT NULL,
    idempotency_key TEXT,
    max_retries INTEGER NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT,
    enqueued_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    due_at REAL
);
-- Partial: most jobs have no key, and an index entry for each NULL would be one
-- more page written in every commit.
CREATE UNIQUE INDEX jobs_key ON jobs (idempotency_key) WHERE idempotency_key IS NOT NULL;
"""
# No index on status: only a start looks for the unsettled jobs, and a scan then is
# cheaper than an index entry to move in every commit of the run.

# The writes, each one row (a tuple, the job's id first), written many rows to one
# statement: each statement lets go of the GIL and must get it back, and with a
# dozen threads busy that wait, not SQLite, was most of a commit's time.
INSERT = "INSERT INTO jobs VALUES "
RETRYING = "status = 'retrying', attempts = v.column2, last_error = v.column3, due_at = v.column4"
SETTLED = (
    "status = v.column2, attempts = v.column3, last_error = v.column4,"
    " finished_at = v.column5, due_at = NULL"
)
REVIVED = "status = 'queued', attempts = 0, finished_at = NULL"
# An attempt the last run started, and whose end it did not commit: the process died
# during it (or just after, before the end was written; at-least-once allows that).
DIED_DURING = (
    "UPDATE jobs SET status = 'processing', attempts = ?, started_at = ?, due_at = NULL"
    " WHERE id = ? AND attempts < ? AND status IN ('queued', 'processing', 'retrying')"
)


def _held_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass(slots=True)
class _Batch:
    """One caller's writes, waiting for the commit that carries them."""

    # Released by a leader when the writes are committed, or when it is this caller's
    # turn to lead the next commit: one wake-up for each caller, none for the others.
    turn: threading.Lock = field(default_factory=_held_lock)
    done: bool = False
    error: BaseException | None = None
    duplicates: list[DuplicateRow] = field(default_factory=list)


# A write waiting for a commit: an SQL statement and its parameters (for INSERT, a
# list of rows), the batch of whoever waits for it (None: it may lag), and whether it
# must survive a power loss. Consecutive writes of one statement, from any number
# of callers, go to SQLite in one executemany: each call into SQLite lets go of the
# GIL, and getting it back, with a dozen threads busy, is what a commit waits for most.
_Pending = tuple[str, Any, _Batch | None, bool]
# A run of writes of one kind as statements (SQL, parameters), with its pending
# writes if they are adds.
_Statements = tuple[str, list[tuple[str, list[Any]]], list[_Pending]]


class SQLiteStore:
    def __init__(self, path: str, durability: str = "power") -> None:
        if durability not in DURABILITY:
            raise ValueError(f"durability must be 'power' or 'process', got {durability!r}")
        self.path = path
        self._lockfile = _lock(path)
        try:
            self._writer_db = _open(path, durability)
            self._journal_path = f"{path}.attempts"
            _fold(self._writer_db, self._journal_path)
            self._journal = _map(self._journal_path)
            self._reader_db = sqlite3.connect(path, check_same_thread=False)
        except BaseException:
            self._lockfile.close()
            raise
        self._reader_lock = threading.Lock()
        self._power = durability == "power"
        self._synced = self._power  # whether the writer connection is at FULL now
        # Rows per statement at most: within SQLite's limit on parameters (12 a row).
        limit = self._writer_db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self._chunk = 1 << (min(512, limit // 12).bit_length() - 1)

        # One lock guards everything below; both conditions are built on it. It is
        # not held while SQLite commits (see _lead).
        self._mutex = threading.Lock()
        # Writes not yet committed, in order: acknowledgements, which their callers
        # wait for, and lagging writes, which nobody waits for.
        self._pending: list[_Pending] = []
        self._lagging_writes: list[_Pending] = []
        self._lagging_since: float | None = None  # when the oldest lagging write came
        self._committing = False  # a thread leads a commit (held until none waits)
        self._crowd = 0  # acknowledgements the last commit carried
        self._closed = False
        # Attempts written to the journal whose end (retrying or settled) is not yet
        # committed, id -> attempt number: what a rewrite of the journal must keep.
        self._open: dict[str, int] = {}
        self._journal_end = 0  # where the next line goes
        # Notified when the last leader lets go; the flusher waits on it at close.
        self._committed = threading.Condition(self._mutex)
        # Notified when a lagging write arrives to find the flusher idle, and at
        # close; the flusher waits on it.
        self._lagging = threading.Condition(self._mutex)
        self._flusher_idle = False
        self._shut = threading.Event()  # set once close() has let go of the files
        self._flusher = threading.Thread(target=self._flush_loop, name="final-store", daemon=True)
        self._flusher.start()

    # -- writes: acknowledgements wait for their commit -----------------------------------

    def add(self, records: Sequence[Record]) -> None:
        offset = time.time() - time.monotonic()  # monotonic -> wall clock, once for all
        batch = self._wait(INSERT, [_row(r, offset) for r in records], acknowledged=True)
        if batch.duplicates:
            raise batch.duplicates[0]

    def claimed(self, record: Record) -> None:
        """Write the attempt to the journal: it survives the process once this returns."""
        job_id, attempt = record.job.id, record.attempts
        line = _journal_line(job_id, attempt)
        with self._mutex:
            if self._closed:
                raise StoreError(f"{self.path}: the store is closed")
            self._append(line)
            self._open[job_id] = attempt

    def revived(self, record: Record) -> None:
        job_id = record.job.id
        # Attempt 0 in the journal first: its old attempts there are of a life that
        # ended in the dead letters, and must not be folded into this one.
        line = _journal_line(job_id, 0)
        with self._mutex:
            if self._closed:
                raise StoreError(f"{self.path}: the store is closed")
            self._append(line)
            self._open.pop(job_id, None)
        self._wait(REVIVED, (job_id,), acknowledged=True)

    # -- writes that may lag: they ride in the next commit --------------------------------

    def retrying(self, record: Record, due_in: float) -> None:
        self._later(
            RETRYING, (record.job.id, record.attempts, record.last_error, time.time() + due_in)
        )

    def settled(self, record: Record) -> None:
        values = (
            record.job.id,
            record.status.value,
            record.attempts,
            record.last_error,
            _wall(record.finished),
        )
        self._later(SETTLED, values)

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
        """Commit what is pending, and let go of the files. Safe from any thread, twice:
        a second call returns once the first has finished."""
        with self._mutex:
            first = not self._closed
            self._closed = True  # no write is taken from now on
            self._lagging.notify()
        if not first:
            self._shut.wait()
            return
        self._flusher.join()  # it commits what is left, and leaves
        if not self._open:  # every attempt's end is committed: the journal says nothing
            self._journal[: self._journal_end] = bytes(self._journal_end)
        self._journal.close()
        self._writer_db.close()
        self._reader_db.close()
        self._lockfile.close()
        self._shut.set()

    # -- group commit -----------------------------------------------------------------------

    def _wait(self, what: str, params: Any, acknowledged: bool = False) -> _Batch:
        """Add a write and return once it is committed. An ``acknowledged`` write is
        one the caller reports as done: it gets the durability asked for."""
        batch = _Batch()
        with self._mutex:
            if self._closed:
                raise StoreError(f"{self.path}: the store is closed")
            self._pending.append((what, params, batch, acknowledged and self._power))
            lead = not self._committing
            self._committing = True
        if not lead:
            batch.turn.acquire()  # the leader wakes us: committed, or ours to lead
        if not batch.done:
            self._lead(lagging=False)
        if batch.error is not None:
            raise StoreError(f"{self.path}: {batch.error}") from batch.error
        return batch

    def _later(self, sql: str, params: Any) -> None:
        with self._mutex:
            if self._closed:
                return
            self._lagging_writes.append((sql, params, None, False))
            if self._lagging_since is None:
                self._lagging_since = time.monotonic()
                if self._flusher_idle:
                    self._lagging.notify()

    def _lead(self, lagging: bool) -> None:
        """Commit the pending acknowledgements as one transaction, and the lagging
        writes too if ``lagging``, from this thread, which holds the lead.

        Writes that arrive meanwhile gather for the next commit: with many producers,
        each commit (and each fsync) carries many jobs, and no write is handed to
        another thread. At the end, the callers committed are woken, each by its own
        lock, and the lead passes to the first caller still waiting, if any: waking
        them all on one condition made every commit a stampede for the GIL.

        An acknowledgement does not carry the lagging writes: a lone INSERT is one
        statement, its own transaction, where each more statement is one more wait
        for the GIL on the path every enqueue waits on. Except when they are overdue
        (the flusher found a commit under way: better they ride in this one than it
        wait for this one to end), and for a replay: the end of that job's earlier
        life may still lag, and must not land after it.
        """
        if self._crowd > 1:
            # The last commit carried several callers: more are on their way back with
            # their next write. Letting them run first (a sleep of 0 hands over the
            # GIL) puts them in this commit rather than the next.
            time.sleep(0)
        with self._mutex:
            writes, self._pending = self._pending, []
            self._crowd = len(writes)
            since = self._lagging_since
            overdue = since is not None and time.monotonic() - since >= LAG
            if lagging or overdue or any(what is REVIVED for what, *_ in writes):
                writes = self._lagging_writes + writes
                self._lagging_writes = []
                self._lagging_since = None
        error: BaseException | None = None
        try:
            error = self._transaction(writes)
        except BaseException as exc:  # the waiters must hear of it, whatever it is
            error = exc
            raise
        finally:
            with self._mutex:
                for what, params, batch, _ in writes:
                    if batch is not None:
                        batch.error = error
                        batch.done = True
                        batch.turn.release()
                    elif error is None:
                        # The end of an attempt is on disk: the journal may forget it.
                        job_id = params[0]
                        attempt = params[1] if what is RETRYING else params[2]
                        if self._open.get(job_id) == attempt:
                            del self._open[job_id]
                if self._pending:
                    successor = self._pending[0][2]
                    assert successor is not None  # acknowledgements: each has a waiter
                    successor.turn.release()
                else:
                    self._committing = False
                    self._committed.notify_all()

    def _transaction(self, writes: list[_Pending]) -> Exception | None:
        db = self._writer_db
        # Pay for an fsync only when this commit holds an acknowledgement that must
        # survive a power loss. In WAL mode, NORMAL still survives the process dying,
        # which is all a lagging write needs.
        power = any(needs_power for *_, needs_power in writes)
        statements = self._statements(writes)
        try:
            if power != self._synced:
                db.execute(f"PRAGMA synchronous = {'FULL' if power else 'NORMAL'}")
                self._synced = power
            if len(statements) == 1 and len(statements[0][1]) == 1:
                # One statement is a transaction of its own: no BEGIN and COMMIT,
                # which are two more round trips through the GIL.
                self._execute(db, *statements[0], alone=True)
            else:
                db.execute("BEGIN IMMEDIATE")
                for what, parts, adds in statements:
                    self._execute(db, what, parts, adds)
                db.execute("COMMIT")
        except Exception as exc:  # a full disk, a read-only file: tell the waiters
            logger.error("%s: commit of %d writes failed: %s", self.path, len(writes), exc)
            if db.in_transaction:
                db.execute("ROLLBACK")
            return exc
        return None

    def _statements(self, writes: list[_Pending]) -> list[_Statements]:
        """The writes as few statements: each run of writes of one kind becomes
        statements of many rows, of sizes the connection's statement cache can hold."""
        statements: list[_Statements] = []
        i = 0
        while i < len(writes):
            what = writes[i][0]
            j = i + 1
            while j < len(writes) and writes[j][0] is what:
                j += 1
            adds: list[_Pending] = []
            if what is INSERT:
                adds = writes[i:j]
                rows = [row for _, rows, _, _ in adds for row in rows]
                sql: Callable[[int], str] = _insert_sql
            else:
                # One job's end once per statement: an UPDATE ... FROM matching two
                # rows would use either. Its latest write is the one that counts.
                rows = list({params[0]: params for _, params, _, _ in writes[i:j]}.values())
                sql = partial(_update_sql, what)
            parts = []
            k = 0
            while k < len(rows):
                left = len(rows) - k
                # A few rows go in one statement of exactly their number; more, in
                # statements of powers of two: a bounded set of statements to cache.
                size = left if left <= EXACT_ROWS else min(self._chunk, 1 << left.bit_length() - 1)
                parts.append((sql(size), [value for row in rows[k : k + size] for value in row]))
                k += size
            statements.append((what, parts, adds))
            i = j
        return statements

    def _execute(
        self,
        db: sqlite3.Connection,
        what: str,
        parts: list[tuple[str, list[Any]]],
        adds: list[_Pending],
        alone: bool = False,
    ) -> None:
        """One run of writes. Inserts that hit a duplicate are undone and go again
        one row at a time, each add stopping at its first duplicate, so that
        enqueue_many can say how many of its jobs were accepted."""
        if what is not INSERT:
            for sql, params in parts:
                db.execute(sql, params)
            return
        # A statement is all or nothing; several need a savepoint to be so together.
        savepoint = len(parts) > 1
        if savepoint:
            db.execute("SAVEPOINT adds")
        try:
            for sql, params in parts:
                db.execute(sql, params)
        except sqlite3.IntegrityError:
            if savepoint:
                db.execute("ROLLBACK TO adds")
            elif alone:
                db.execute("BEGIN IMMEDIATE")
            for _, rows, batch, _ in adds:
                assert batch is not None  # an add is always waited for
                for row in rows:
                    try:
                        db.execute(_insert_sql(1), row)
                    except sqlite3.IntegrityError:
                        batch.duplicates.append(DuplicateRow(str(row[0]), _first(db, row)))
                        break
            if alone and not savepoint:
                db.execute("COMMIT")
        if savepoint:
            db.execute("RELEASE adds")

    def _flush_loop(self) -> None:
        """Commit the lagging writes once the oldest has waited LAG seconds, and make
        the last commit at close.

        While writes keep lagging, this thread wakes every LAG seconds on its own,
        which is cheaper than being told of every one; after a quiet LAG it sleeps
        until a lagging write arrives to find it idle, and is told of that one.
        """
        quiet = False
        with self._mutex:
            while True:
                if self._closed:
                    while self._committing:
                        self._committed.wait()
                    if self._lagging_writes:
                        self._lead_from_flusher()
                    return
                if self._lagging_since is None:
                    self._flusher_idle = quiet
                    self._lagging.wait(None if quiet else LAG)
                    self._flusher_idle = False
                    quiet = self._lagging_since is None
                    continue
                quiet = False
                remaining = self._lagging_since + LAG - time.monotonic()
                if remaining > 0:
                    self._lagging.wait(remaining)
                elif not self._committing:
                    self._lead_from_flusher()
                else:
                    # The next acknowledgement's commit takes them along; if none
                    # comes, try again in a while. Waiting for this commit to end
                    # instead would wake this thread at every commit of a busy queue.
                    self._lagging.wait(LAG)

    def _lead_from_flusher(self) -> None:
        """Take the lead and commit the lagging writes. Holds the lock, and lets go
        of it meanwhile."""
        self._committing = True
        self._mutex.release()
        try:
            self._lead(lagging=True)
        finally:
            self._mutex.acquire()

    # -- the attempts journal ---------------------------------------------------------------

    def _append(self, line: bytes) -> None:
        """One line into the journal. Holds the lock, so lines are never interleaved."""
        end = self._journal_end + len(line)
        try:
            if end > len(self._journal):
                self._rewrite_journal()
                end = self._journal_end + len(line)
            self._journal[self._journal_end : end] = line
        except (OSError, ValueError) as exc:  # no room on disk; a line longer than the file
            raise StoreError(f"{self._journal_path}: {exc}") from exc
        self._journal_end = end

    def _rewrite_journal(self) -> None:
        """Start the journal again with just the open attempts. Holds the lock.

        Filled beside it and renamed over it, so that a crash leaves the old file
        or the new one, never half of either.
        """
        fresh = f"{self._journal_path}.new"
        lines = b"".join(_journal_line(job_id, n) for job_id, n in self._open.items())
        journal = _map(fresh, minimum=2 * len(lines))
        journal[: len(lines)] = lines
        os.replace(fresh, self._journal_path)
        self._journal.close()
        self._journal, self._journal_end = journal, len(lines)


def _map(path: str, minimum: int = 0) -> mmap.mmap:
    """A new, zeroed journal file of JOURNAL_BYTES (or more), mapped for writing."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        size = max(JOURNAL_BYTES, minimum)
        # Blocks reserved now: a full disk fails here, at open, and not as a SIGBUS
        # when a worker stores into a page the file system cannot back.
        os.posix_fallocate(fd, 0, size)
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


def _journal_line(job_id: str, attempt: int) -> bytes:
    """``<attempt> <id>``, or ``<attempt>j<id as JSON>`` for an id holding a newline."""
    if "\n" in job_id:
        return f"{attempt}j{json.dumps(job_id)}\n".encode()
    return f"{attempt} {job_id}\n".encode()


@functools.cache
def _insert_sql(rows: int) -> str:
    return INSERT + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * rows)


@functools.cache
def _update_sql(assignments: str, rows: int) -> str:
    columns = assignments.count("v.column") + 1  # the id, and the values assigned
    values = ", ".join(["(" + ", ".join(["?"] * columns) + ")"] * rows)
    return f"UPDATE jobs SET {assignments} FROM (VALUES {values}) AS v WHERE jobs.id = v.column1"


def read_journal(journal: str) -> dict[str, int]:
    """The latest attempt of each job in the attempts journal at ``journal`` (empty if
    there is none): per job, its last line. Safe while a queue writes to it: a line
    being written is not finished, and is left out."""
    try:
        with open(journal, "rb") as f:
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return {}
    latest: dict[str, int] = {}
    text = text.split("\0", 1)[0]  # the unused rest of the file is zeros
    lines = text.split("\n")  # ids may hold other line breaks, never "\n" unquoted
    for line in lines[:-1]:  # the last is empty, or unfinished
        digits = len(line) - len(line.lstrip("0123456789"))
        try:
            attempt, mark, rest = int(line[:digits]), line[digits], line[digits + 1 :]
            latest[json.loads(rest) if mark == "j" else rest] = attempt
        except (ValueError, IndexError):
            continue  # damaged by a power loss: that attempt was not made durable
    return latest


def _fold(db: sqlite3.Connection, journal: str) -> None:
    """Write the attempts the last run started into the database, before anything else.

    An attempt the database does not know of yet died with the process (or ended,
    and its end was lost). Committed with an fsync before the caller empties the
    journal.
    """
    latest = read_journal(journal)
    if not latest:
        return
    started = time.time()
    was = db.execute("PRAGMA synchronous").fetchone()[0]
    db.execute("PRAGMA synchronous = FULL")
    db.execute("BEGIN IMMEDIATE")
    db.executemany(DIED_DURING, [(n, started, i, n) for i, n in latest.items() if n > 0])
    db.execute("COMMIT")
    db.execute(f"PRAGMA synchronous = {was}")
    logger.info("%s: the attempts of the last run are folded in", journal)


def _lock(path: str) -> TextIO:
    try:
        lockfile = open(f"{path}.lock", "a+")  # noqa: SIM115 - held until close()
    except OSError as exc:  # no such directory, no permission
        raise StoreError(f"{path}: cannot create the queue there ({exc.strerror})") from exc
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
        # Statements of up to EXACT_ROWS rows and of powers of two, for 4 kinds of write.
        db = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, cached_statements=256
        )
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


def _row(record: Record, offset: float) -> tuple[object, ...]:
    job = record.job
    return (
        job.id,
        job.payload,
        int(job.priority),
        job.idempotency_key,
        record.max_retries,
        record.status.value,
        record.attempts,
        record.last_error,
        record.enqueued + offset,
        None,  # started_at
        None,  # finished_at
        None,  # due_at
    )


def _first(db: sqlite3.Connection, row: tuple[object, ...]) -> str:
    """The id of the job on disk that an insert collided with."""
    job_id, key = str(row[0]), row[3]
    if key is not None:
        hit = db.execute("SELECT id FROM jobs WHERE idempotency_key = ?", (key,)).fetchone()
        if hit is not None:
            return str(hit[0])
    return job_id


def _record(row: tuple[Any, ...]) -> Record:
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
