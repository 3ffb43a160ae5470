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
  has only to survive the process: it is one line in ``<path>.attempts``, a file
  mapped into memory (``final/journal.py``), folded into the database at open.
- ``retrying`` and ``settled`` may lag: they are committed a few milliseconds later,
  many at a time, and losing them in a crash only means that a job runs once more.
  The end of the attempt is in the journal at once, as its start was (one byte: the
  mark of its start's line becomes an end mark that says how it ended), so that a
  crash in those milliseconds is neither charged to an attempt that had ended nor
  undoes its end: the next start settles it as it ended (``_fold``). And a job that
  memory lets go of before its end is committed is answered for from its record
  (``released``) until it is.

Acknowledgements share commits, and lagging writes are committed a few at a time
by a background thread: see ``final/group_commit.py``. This module writes what each
commit carries, many rows to a statement.

Completed jobs are deleted ``retention`` seconds after they completed, by the same
background thread, a few rows at a time between the queue's commits (``_sweep``);
dead letters stay until they are replayed.

The file is ours and versioned: ``PRAGMA application_id`` marks it, ``PRAGMA
user_version`` says its schema version; a file that is not one of our queues, or is of
a newer version, is refused before anything is written to it. A lock on the file
itself (``fcntl.flock``) refuses a second queue on it while the first is open, under
whatever name, a symbolic or a hard link included; reading it (``inspect``) needs no
lock. The attempts journal is named after the file's resolved path, as SQLite names
its write-ahead log, so that a restart by another symbolic link finds both. A hard
link has no resolved name of its own: reopen a queue that crashed under the name it
had.
"""

from __future__ import annotations

import ctypes
import datetime
import fcntl
import functools
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from final.group_commit import LAG, GroupCommit, Pending, Write
from final.jobs import Job, Priority, Record, Status
from final.journal import AttemptsJournal, read_attempts, read_journal
from final.store import DuplicateRow, StoreError

__all__ = ["APPLICATION_ID", "LAG", "RETENTION", "SCHEMA_VERSION", "SQLiteStore", "read_journal"]

logger = logging.getLogger(__name__)

APPLICATION_ID = 0x4A6F6251  # "JobQ"
SCHEMA_VERSION = 3  # 2: the column delay; 3: the column run_at
DURABILITY = {"power": ("FULL", 2), "process": ("NORMAL", 1)}
# The column each version added, from version 2 on: UPGRADES[v - 1:] brings a file of
# version v to SCHEMA_VERSION.
UPGRADES = ("delay REAL", "run_at REAL")

# Up to this many rows go to one statement of their exact size (see _parts).
EXACT_ROWS = 32
# Completed jobs are kept this many seconds by default (7 days).
RETENTION = 604_800.0
# The sweep that deletes them looks at this many rows per statement: one short write,
# between which the queue's commits go on (while a backlog of 100,000 was swept, an
# enqueue waited 11 to 29 ms at worst, against 7 with no sweep; 256 rows: up to 200).
# One batch per LAG: up to 25,000 rows deleted a second.
SWEEP_ROWS = 128
# Seconds between two sweeps, at most (and at least LAG between two batches).
SWEEP_EVERY = 1.0

# The database files open in this process, by (device, inode), with the name each was
# opened by: a second name is refused before a descriptor is opened on the file,
# because closing one (when its flock fails) would drop the POSIX locks that SQLite's
# own connections to that file hold for this process.
_open_files: dict[tuple[int, int], str] = {}
_open_files_lock = threading.Lock()

# delay (version 2) is the backoff due_at was set for, in seconds. due_at is a
# wall-clock time, and the wall clock may step between two runs (NTP, a resumed VM):
# at a start, no retry waits longer than its own backoff, whatever due_at says. It is
# last, as ALTER TABLE puts it in a file of version 1.
# run_at (version 3) is the job's own Job.run_at, a wall-clock time: a SCHEDULED job
# waits for it, judged at each start by the clock of that moment (see load). It stays
# after the job has started, for info(). Last, for the same reason as delay.
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
    due_at REAL,
    delay REAL,
    run_at REAL
);
-- Partial: most jobs have no key, and an index entry for each NULL would be one
-- more page written in every commit.
CREATE UNIQUE INDEX jobs_key ON jobs (idempotency_key) WHERE idempotency_key IS NOT NULL;
"""
# No index on status: only a start looks for the unsettled jobs, and a scan then is
# cheaper than an index entry to move in every commit of the run.

# The writes, each one row (the job's id first, then for an end its attempt number),
# written many rows to one statement: each statement lets go of the GIL and must get
# it back, and with a dozen threads busy that wait, not SQLite, was most of a
# commit's time.
# A job just accepted has no error, start, end, due time or delay yet: those columns are
# left to their default, NULL, rather than bound, since binding a None costs as much
# as binding a value, and the INSERT of a commit binds every column of every job. So
# is run_at, unless one of the statement's jobs has one (see _statements).
INSERT = (
    "INSERT INTO jobs (id, payload, priority, idempotency_key, max_retries, status,"
    " attempts, enqueued_at{}) VALUES "
)
COLUMNS = 8  # bound by INSERT; a ninth, run_at, for a statement with a scheduled job
# The jobs not settled, as the status column says.
UNSETTLED_STATUSES = "('scheduled', 'queued', 'processing', 'retrying')"
# RETRYING and SETTLED carry the attempt's start: the journal that recorded it is
# emptied at the next start, and without it info() of a job settled in an earlier run
# had no started_at.
ASSIGNMENTS = {
    Write.RETRYING: (
        "status = 'retrying', attempts = v.column2, last_error = v.column3, due_at = v.column4,"
        " started_at = v.column5, delay = v.column6"
    ),
    Write.SETTLED: (
        "attempts = v.column2, status = v.column3, last_error = v.column4,"
        " finished_at = v.column5, due_at = NULL, started_at = v.column6"
    ),
    Write.REVIVED: "status = 'queued', attempts = 0, finished_at = NULL",
    Write.CANCELLED: "status = 'cancelled', finished_at = v.column2, due_at = NULL",
}
# An attempt the last run started, and whose end the journal does not hold: the
# process died during it.
DIED_DURING = (
    "UPDATE jobs SET status = 'processing', attempts = ?, started_at = ?, due_at = NULL"
    " WHERE id = ? AND attempts < ? AND status IN " + UNSETTLED_STATUSES
)
# An attempt the last run started and ended, whose end it did not commit: counted,
# no death is charged to it, and the job ends as its attempt did, by the journal's
# end mark. A job to be retried is queued at once (the journal has no room for its
# backoff); so is one whose mark does not say how its attempt ended (the mark of an
# earlier version): at-least-once, it runs again.
# Parameters: ?1 the attempt, ?2 the time of the fold, ?3 the error, ?4 the id.
UNSETTLED = " WHERE id = ?4 AND attempts < ?1 AND status IN " + UNSETTLED_STATUSES
ENDED = {
    Status.COMPLETED: (
        "UPDATE jobs SET status = 'completed', attempts = ?1, started_at = ?2, finished_at = ?2,"
        " due_at = NULL, last_error = NULL" + UNSETTLED
    ),
    Status.FAILED: (
        "UPDATE jobs SET status = 'failed', attempts = ?1, started_at = ?2, finished_at = ?2,"
        " due_at = NULL, last_error = ?3" + UNSETTLED
    ),
    Status.RETRYING: (
        "UPDATE jobs SET status = 'queued', attempts = ?1, started_at = ?2, due_at = NULL,"
        " last_error = ?3" + UNSETTLED
    ),
    Status.PROCESSING: (
        "UPDATE jobs SET status = 'queued', attempts = ?1, started_at = ?2, due_at = NULL"
        + UNSETTLED
    ),
}
# The error of an attempt whose end the journal holds, but not the database: the
# journal has one byte for the end, and no room for the handler's error. Worded so
# as not to read as a death charged to the job: the process ended for another's.
LOST_ERROR = {
    Status.FAILED: "attempt {n} failed for good; the process ended before its error was written",
    Status.RETRYING: "attempt {n} failed; the process ended before its error was written",
}

# A run of writes of one kind as statements (SQL, parameters), with its pending
# writes if they are adds.
_Statements = tuple[Write, list[tuple[str, list[Any]]], list[Pending]]


class SQLiteStore:
    """The jobs in an SQLite file at ``path``; see the module's docstring."""

    durable = True

    def __init__(
        self, path: str, durability: str = "power", retention: float | None = RETENTION
    ) -> None:
        """Open (or create) the queue at ``path``, fold in the last run's attempts.

        ``retention``: seconds a completed job stays in the file after it completed;
        None keeps every job. Raises ``ValueError`` for an unknown ``durability``, and
        ``StoreError`` for a file that is not ours, too new, locked by another queue,
        or unwritable.
        """
        if durability not in DURABILITY:
            raise ValueError(f"durability must be 'power' or 'process', got {durability!r}")
        self.path = path
        real = os.path.realpath(path)
        journal = f"{real}.attempts"
        companions = [f"{real}-wal", f"{real}-shm", journal]
        existed = {name for name in companions if os.path.lexists(name)}
        self._lock_fd, self._identity, created = _lock(path)
        opened: list[sqlite3.Connection | AttemptsJournal] = []
        try:
            self._writer_db = _open(path, durability)
            opened.append(self._writer_db)
            _fold(self._writer_db, journal)
            self._journal = AttemptsJournal(journal)
            opened.append(self._journal)
            self._reader_db = sqlite3.connect(path, check_same_thread=False)
        except BaseException as exc:
            # A constructor that fails leaves nothing behind: no descriptor, no lock,
            # and no file it created (a database it created is removed whole).
            for resource in reversed(opened):
                resource.close()
            for name in companions + ([path] if created else []):
                if name not in existed and os.path.lexists(name):
                    os.unlink(name)
            _unlock(self._lock_fd, self._identity)
            if isinstance(exc, OSError):  # the journal: a directory there, no room
                raise StoreError(f"{path}: cannot create the queue there ({exc})") from exc
            raise
        self._reader_lock = threading.Lock()
        self._power = durability == "power"
        self._synced = self._power  # whether the writer connection is at FULL now
        # Rows per statement at most: within SQLite's limit on parameters (9 a row).
        limit = self._writer_db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self._chunk = 1 << (min(512, limit // (COLUMNS + 1)).bit_length() - 1)
        # Settled jobs memory let go of before their ends were committed, by id: what a
        # read answers from until the disk can. The lock makes asking the journal
        # whether an end is committed, and hearing that it is, one step each.
        self._held: dict[str, Record] = {}
        self._held_lock = threading.Lock()
        self._closing = threading.Lock()  # held by the first close() until it is done
        self._closed = False
        # The sweep of completed jobs: its cutoff's age, how often it runs, and the
        # rowid the next batch starts after.
        self._retention = retention
        self._sweep_every = max(LAG, min(SWEEP_EVERY, retention or 0.0))
        self._swept_to = 0
        sweep = None if retention is None else self._sweep
        self._commits = GroupCommit(path, self._transaction, self._ended, sweep)
        self._forked = False  # this is the child of an os.fork(): see _disown_after_fork
        _stores.add(self)

    # -- writes: acknowledgements wait for their commit -----------------------------------

    def add(self, records: Sequence[Record]) -> None:
        offset = time.time() - time.monotonic()  # monotonic -> wall clock, once for all
        rows = [_row(r, offset) for r in records]
        batch = self._commits.wait(Write.ADD, rows, power=self._power)
        if batch.duplicates:
            raise batch.duplicates[0]

    def claimed(self, record: Record) -> None:
        """Write the attempt to the journal: it survives the process once this returns."""
        self._journal.started(record.job.id, record.attempts)

    def cancelled(self, record: Record) -> None:
        """Committed when this returns: a cancel that a crash undid would run the job.
        The job has no attempt running, so the journal has nothing to say of it."""
        self._commits.wait(Write.CANCELLED, (record.job.id, time.time()), power=self._power)

    def revived(self, record: Record) -> None:
        self._journal.restarted(record.job.id)
        self._commits.wait(Write.REVIVED, (record.job.id,), power=self._power)
        # Memory holds it again, and its earlier end was committed with the replay.
        with self._held_lock:
            self._held.pop(record.job.id, None)

    # -- writes that may lag: they ride in the next commit --------------------------------

    def retrying(self, record: Record, due_in: float) -> None:
        values = (
            record.job.id,
            record.attempts,
            record.last_error,
            time.time() + due_in,
            _wall(record.started),
            due_in,
        )
        self._ended_now(record, Status.RETRYING)
        self._commits.later(Write.RETRYING, values)

    def settled(self, record: Record) -> None:
        values = (
            record.job.id,
            record.attempts,
            record.status.value,
            record.last_error,
            _wall(record.finished),
            _wall(record.started),
        )
        self._ended_now(record, record.status)
        self._commits.later(Write.SETTLED, values)

    def _ended_now(self, record: Record, outcome: Status) -> None:
        """Mark the attempt ended as ``outcome`` in the journal, if its handler has
        returned.

        An attempt timed out (one with a deadline whose token is 0: see ``Record``)
        ends while its handler runs on, and a crash from then on may be that handler's
        doing: it is charged to the attempt, as if its end had not come, or a handler
        that overruns and kills the process would run again at every start, its
        budget spent and never charged.
        """
        if record.token or record.deadline is None:
            self._journal.finished(record.job.id, outcome)

    def released(self, records: Sequence[Record]) -> None:
        """Hold those of ``records`` whose end is not committed yet: reads answer from
        them until it is (see ``final/store.py``)."""
        with self._held_lock:
            for record in records:
                if self._journal.uncommitted(record.job.id, record.attempts):
                    self._held[record.job.id] = record

    # -- reads ------------------------------------------------------------------------------

    # After close, a read finds nothing on disk: the queue then answers from its memory
    # alone, as a queue without a path does, rather than reach a closed connection.

    def find(self, job_id: str) -> Record | None:
        if self._held:  # read without the lock: one dict lookup is atomic
            held = self._held.get(job_id)
            if held is not None:
                return held
        with self._reader_lock:
            if self._closed:
                return None
            row = self._reader_db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _record(row)

    def load(self) -> list[tuple[Record, float]]:
        """Every unsettled job, in the order accepted, with seconds left of its backoff,
        or until its run_at for a scheduled one: by the wall clock of this moment, so
        that a clock stepped between two runs moves a run_at by the step, no more."""
        with self._reader_lock:
            if self._closed:
                return []
            rows = self._reader_db.execute(
                f"SELECT * FROM jobs WHERE status IN {UNSETTLED_STATUSES} ORDER BY rowid"
            ).fetchall()
        now = time.time()
        return [(_record(row), _wait(now, row)) for row in rows]

    def dead(self) -> list[Record]:
        with self._reader_lock:
            if self._closed:
                return []
            rows = self._reader_db.execute(
                "SELECT * FROM jobs WHERE status = 'failed' ORDER BY finished_at"
            ).fetchall()
        with self._held_lock:
            held = list(self._held.values())
        if not held:
            return [_record(row) for row in rows]
        # The held records are newer than their rows, whatever those say.
        dead = {record.job.id: record for record in map(_record, rows)}
        for record in held:
            dead.pop(record.job.id, None)
            if record.status is Status.FAILED:
                dead[record.job.id] = record
        return sorted(dead.values(), key=lambda record: record.finished or 0.0)

    def pragma(self, name: str, value: int | None = None) -> object:
        """Read (or set, then read) a pragma of the connection that writes, whose
        settings are the ones that count (``synchronous``, ``max_page_count``): for
        tools and tests. Raises ``ValueError`` for a name that is not one."""
        if not name.isidentifier():
            raise ValueError(f"not a pragma name: {name!r}")
        if value is not None:
            self._writer_db.execute(f"PRAGMA {name} = {int(value)}")
        row = self._writer_db.execute(f"PRAGMA {name}").fetchone()
        return None if row is None else row[0]

    def close(self) -> None:
        """Commit what is pending, and let go of the files. Safe from any thread, twice:
        a second call returns once the first has finished."""
        if self._forked:
            return  # the parent's files: see _disown_after_fork
        with self._closing:
            if self._closed:
                return
            self._commits.close()  # no write is taken from now on, and the last is made
            self._journal.close()
            self._writer_db.close()
            with self._reader_lock:  # a read under way finishes first; later ones see _closed
                self._reader_db.close()
                self._closed = True
            _unlock(self._lock_fd, self._identity)

    # -- what one commit writes -------------------------------------------------------------

    def _ended(self, lagging: list[Pending]) -> None:
        """The ends of these attempts are on disk: the journal may forget them, and the
        reads need no longer answer for the jobs held until then."""
        ends = [(w.params[0], w.params[1]) for w in lagging]
        with self._held_lock:
            self._journal.ended(ends)
            if self._held:
                for job_id, attempt in ends:
                    held = self._held.get(job_id)
                    if held is not None and held.attempts == attempt:
                        del self._held[job_id]

    def _transaction(self, writes: list[Pending]) -> Exception | None:
        db = self._writer_db
        # Pay for an fsync only when this commit holds an acknowledgement that must
        # survive a power loss. In WAL mode, NORMAL still survives the process dying,
        # which is all a lagging write needs.
        power = any(w.power for w in writes)
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
                for kind, parts, adds in statements:
                    self._execute(db, kind, parts, adds)
                db.execute("COMMIT")
        except Exception as exc:  # a full disk, a read-only file: tell the waiters
            logger.error("%s: commit of %d writes failed: %s", self.path, len(writes), exc)
            if db.in_transaction:
                db.execute("ROLLBACK")
            return exc
        return None

    def _sweep(self) -> float:
        """Delete the completed jobs, among the next SWEEP_ROWS rows, that completed more
        than ``retention`` seconds ago; return the seconds until the next batch (LAG
        if the rows after them may hold more). The group commit's chore: holds the lead.

        Rows are walked in the order they were inserted (rowid, the table's own key:
        no index to maintain on the hot path, and each batch is a range of the table,
        not a scan of it). The walk stops at a row enqueued after the cutoff: what
        comes after it was enqueued later still, so it completed after the cutoff too.
        """
        assert self._retention is not None  # no sweep without it
        db = self._writer_db
        cutoff = time.time() - self._retention
        try:
            window = db.execute(
                "SELECT rowid, enqueued_at FROM jobs WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (self._swept_to, SWEEP_ROWS),
            ).fetchall()
            if window:
                if self._synced:  # a lost delete only keeps a row longer: no fsync
                    db.execute("PRAGMA synchronous = NORMAL")
                    self._synced = False
                db.execute(
                    "DELETE FROM jobs WHERE rowid > ? AND rowid <= ?"
                    " AND status IN ('completed', 'cancelled') AND finished_at < ?",
                    (self._swept_to, window[-1][0], cutoff),
                )
        except sqlite3.Error as exc:  # a full disk, a locked file: try again later
            logger.warning("%s: deleting completed jobs failed: %s", self.path, exc)
            window = []
        if len(window) < SWEEP_ROWS or window[-1][1] >= cutoff:
            self._swept_to = 0  # the next sweep starts from the oldest row again
            return self._sweep_every
        self._swept_to = window[-1][0]
        return LAG

    def _statements(self, writes: list[Pending]) -> list[_Statements]:
        """The writes as few statements: each run of writes of one kind becomes
        statements of many rows, of sizes the connection's statement cache can hold."""
        statements: list[_Statements] = []
        i = 0
        while i < len(writes):
            kind = writes[i].kind
            j = i + 1
            while j < len(writes) and writes[j].kind is kind:
                j += 1
            adds: list[Pending] = []
            if kind is Write.ADD:
                adds = writes[i:j]
                rows = [row for add in adds for row in add.params]
                width = max(map(len, rows))
                if width > COLUMNS:  # a scheduled job: every row binds its run_at
                    rows = [row if len(row) == width else (*row, None) for row in rows]
                sql: Callable[[int], str] = partial(_insert_sql, width=width)
            else:
                # One job's end once per statement: an UPDATE ... FROM matching two
                # rows would use either. Its latest write is the one that counts.
                rows = list({w.params[0]: w.params for w in writes[i:j]}.values())
                sql = partial(_update_sql, ASSIGNMENTS[kind])
            statements.append((kind, self._parts(rows, sql), adds))
            i = j
        return statements

    def _parts(self, rows: list[Any], sql: Callable[[int], str]) -> list[tuple[str, list[Any]]]:
        """Rows as statements: a few rows go in one statement of exactly their number;
        more, in statements of powers of two: a bounded set of statements to cache."""
        parts = []
        k = 0
        while k < len(rows):
            left = len(rows) - k
            size = left if left <= EXACT_ROWS else min(self._chunk, 1 << left.bit_length() - 1)
            parts.append((sql(size), [value for row in rows[k : k + size] for value in row]))
            k += size
        return parts

    def _execute(
        self,
        db: sqlite3.Connection,
        kind: Write,
        parts: list[tuple[str, list[Any]]],
        adds: list[Pending],
        alone: bool = False,
    ) -> None:
        """One run of writes. Inserts that hit a duplicate are undone and go again
        one row at a time, each add stopping at its first duplicate, so that
        enqueue_many can say how many of its jobs were accepted."""
        if kind is not Write.ADD:
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
            _insert_one_by_one(db, adds)
            if alone and not savepoint:
                db.execute("COMMIT")
        if savepoint:
            db.execute("RELEASE adds")


# Every open store of this process, for the child of an ``os.fork()`` to disown.
_stores: weakref.WeakSet[SQLiteStore] = weakref.WeakSet()


def _disown_after_fork() -> None:
    """In the child of an ``os.fork()``: never close, nor write through, the parent's files.

    The child inherits what the store holds, and all of it is the parent's: the two
    SQLite connections and the lock file (here), the mapped attempts journal
    (``final/journal.py``) and the group commit's lock (``final/group_commit.py``).
    SQLite's documentation says a connection must not be carried across a fork;
    closing one is using it (a close may checkpoint the WAL, and writes to the shared
    memory index that the parent maps too); closing the journal zeroes the mapping
    that the parent writes to; and the child's copy of the group commit's lock may be
    held by a thread that does not exist here. The store reaches the journal and the
    group commit only through ``close()``, so the hook is the store's: in the child
    ``close()`` is a no-op, and the store is never freed: one reference too many,
    never given back, keeps the interpreter's exit from closing the connections; the
    operating system closes the descriptors when the child ends, which leaves the
    parent's locks and files as they were.
    """
    for store in list(_stores):
        store._forked = True
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(store))


os.register_at_fork(after_in_child=_disown_after_fork)


def _insert_one_by_one(db: sqlite3.Connection, adds: list[Pending]) -> None:
    """Each add's rows one at a time, stopping at its first duplicate."""
    for add in adds:
        assert add.batch is not None  # an add is always waited for
        for row in add.params:
            try:
                db.execute(_insert_sql(1, len(row)), row)
            except sqlite3.IntegrityError:
                add.batch.duplicates.append(DuplicateRow(str(row[0]), _first(db, row)))
                break


@functools.cache
def _insert_sql(rows: int, width: int = COLUMNS) -> str:
    """An INSERT of ``rows`` rows of ``width`` values: COLUMNS, or one more, run_at."""
    head = INSERT.format(", run_at" if width > COLUMNS else "")
    return head + ", ".join(["(" + ", ".join(["?"] * width) + ")"] * rows)


@functools.cache
def _update_sql(assignments: str, rows: int) -> str:
    columns = assignments.count("v.column") + 1  # the id, and the values assigned
    values = ", ".join(["(" + ", ".join(["?"] * columns) + ")"] * rows)
    return f"UPDATE jobs SET {assignments} FROM (VALUES {values}) AS v WHERE jobs.id = v.column1"


def _fold(db: sqlite3.Connection, journal: str) -> None:
    """Write the attempts the last run started into the database, before anything else.

    An attempt the database does not know of yet died with the process, unless the
    journal holds its end too: then it ended, and only its end was lost, which the
    journal's end mark tells again (see ENDED). The times of a lost end are not
    known: the fold's own time stands for its start and its end, a time after both,
    so that a completed job is kept at least its retention. Committed with an fsync
    before the caller empties the journal.
    """
    latest = read_attempts(journal)
    if not latest:
        return
    now = time.time()
    was = db.execute("PRAGMA synchronous").fetchone()[0]
    db.execute("PRAGMA synchronous = FULL")
    db.execute("BEGIN IMMEDIATE")
    died = [(n, now, i, n) for i, (n, end) in latest.items() if n > 0 and end is None]
    db.executemany(DIED_DURING, died)
    for end, sql in ENDED.items():
        lost = LOST_ERROR.get(end)
        rows = [
            (n, now, None if lost is None else lost.format(n=n), i)
            for i, (n, e) in latest.items()
            if n > 0 and e is end
        ]
        db.executemany(sql, rows)
    db.execute("COMMIT")
    db.execute(f"PRAGMA synchronous = {was}")
    logger.info("%s: the attempts of the last run are folded in", journal)


def _lock(path: str) -> tuple[int, tuple[int, int], bool]:
    """Open (or create) the database file and lock it, whatever name it is given.

    Returns the locked descriptor, the file's (device, inode), and whether this call
    created the file. The lock is ``flock`` on the file itself, not on a file named
    after ``path``: a symbolic or a hard link is another name for the same file, and
    must find it locked. SQLite locks with ``fcntl`` byte ranges, which ``flock``
    leaves alone on local file systems.
    """
    with _open_files_lock:  # one constructor between the check and the registration
        try:
            known = os.stat(path)
        except OSError:
            known = None
        if known is not None and (other := _open_files.get((known.st_dev, known.st_ino))):
            raise StoreError(
                f"{path} is already open in another JobQueue of this process, as {other}; "
                "close that one first"
            )
        created = False
        try:
            # For writing, though flock needs no more than reading: a queue writes
            # its file, and one it may not write is refused here, before any other.
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                created = True
            except FileExistsError:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # no such directory, no permission
            raise StoreError(f"{path}: cannot create the queue there ({exc.strerror})") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # held by another process: no lock of this one is dropped
            raise StoreError(
                f"{path} is already open in another JobQueue, in another process (under "
                "this name or another: the lock is on the file); close that one first"
            ) from None
        stat = os.fstat(fd)
        identity = (stat.st_dev, stat.st_ino)
        _open_files[identity] = path
    return fd, identity, created


def _unlock(fd: int, identity: tuple[int, int]) -> None:
    """Let go of the file ``_lock`` locked. Its SQLite connections must be closed."""
    with _open_files_lock:
        os.close(fd)
        del _open_files[identity]


def _open(path: str, durability: str) -> sqlite3.Connection:
    """Open (or create) the file, refusing what is not ours before writing anything."""
    db: sqlite3.Connection | None = None
    try:
        # Statements of up to EXACT_ROWS rows and of powers of two, for 5 kinds of
        # write, inserts in two widths (with run_at and without).
        db = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, cached_statements=320
        )
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        if db is not None:
            db.close()  # or its descriptor, and the -wal it may have made, stay behind
        if isinstance(exc, sqlite3.OperationalError):  # read-only: no -shm can be made
            raise StoreError(f"{path}: cannot create the queue there ({exc})") from exc
        raise StoreError(f"{path} is not an SQLite database ({exc}); it was left as it is") from exc
    # Nothing in it: a new file, or one whose creation a crash cut short (read after
    # SQLite has rolled back what that crash left half written). Nothing to lose.
    fresh = app_id == 0 and version == 0 and tables == 0
    if not fresh and (app_id != APPLICATION_ID or tables == 0):
        db.close()
        raise StoreError(f"{path} is not a job queue of ours; it was left as it is")
    if version > SCHEMA_VERSION:
        db.close()
        raise StoreError(
            f"{path} has schema version {version}, newer than this code's {SCHEMA_VERSION}; "
            "upgrade the code, the file was left as it is"
        )
    if fresh:
        # The schema and the marks first, in one transaction of the default rollback
        # journal, and only then WAL: switching to WAL writes the file's first page,
        # and a crash between that and the schema left a file with no tables, which
        # every later start refused as not ours. Now a crash leaves an empty file, or
        # a hot journal SQLite rolls back to one, or a whole queue.
        db.executescript(
            f"BEGIN; {SCHEMA} PRAGMA application_id = {APPLICATION_ID};"
            f" PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        )
    elif version < SCHEMA_VERSION:
        # New columns at the end, NULL in the rows of older versions: SQLite changes
        # only the schema, not the rows, so this is instant whatever the file's size,
        # and one transaction, so a crash leaves the old version or the new, whole.
        added = "".join(f" ALTER TABLE jobs ADD COLUMN {c};" for c in UPGRADES[version - 1 :])
        db.executescript(f"BEGIN;{added} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
    pragma, expected = DURABILITY[durability]
    try:
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        db.execute(f"PRAGMA synchronous = {pragma}")
        synchronous = db.execute("PRAGMA synchronous").fetchone()[0]
    except sqlite3.OperationalError as exc:  # no -wal file can be made beside it
        db.close()
        raise StoreError(f"{path}: cannot create the queue there ({exc})") from exc
    if mode != "wal" or synchronous != expected:
        db.close()
        raise StoreError(
            f"{path}: asked for WAL and synchronous={pragma}, got {mode} and {synchronous}"
        )
    return db


def _wait(now: float, row: tuple[Any, ...]) -> float:
    """Seconds the unsettled job of ``row`` waits at a start: until its run_at if it
    is scheduled, by the wall clock ``now``; else what is left of its backoff."""
    if row[5] == "scheduled":
        return 0.0 if row[13] is None else max(0.0, row[13] - now)
    return _left(now, row[11], row[12])


def _left(now: float, due_at: float | None, delay: float | None) -> float:
    """Seconds left of a backoff due at ``due_at`` (wall clock), never more than the
    ``delay`` it was set for: a clock stepped back between two runs (or forward in the
    run that set it) would otherwise put the retry off by the step."""
    if due_at is None:
        return 0.0
    left = max(0.0, due_at - now)
    return left if delay is None else min(left, delay)


def _scheduled(record: Record) -> bool:
    """Whether a job being added waits for its run_at: the queue set its ``ready``, the
    time it enters its lane, to its run_at (the queue marks it SCHEDULED only once it
    is stored and accepted)."""
    return record.job.run_at is not None and record.ready > record.enqueued


def _row(record: Record, offset: float) -> tuple[object, ...]:
    """The values INSERT binds for ``record``: COLUMNS of them, and its run_at if it
    has one. A scheduled job is stored as such, so that a start finds it waiting."""
    job = record.job
    row = (
        job.id,
        job.payload,
        int(job.priority),
        job.idempotency_key,
        record.max_retries,
        "scheduled" if _scheduled(record) else record.status.value,
        record.attempts,
        record.enqueued + offset,
    )
    return row if job.run_at is None else (*row, job.run_at.timestamp())


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
    run_at = None if row[13] is None else datetime.datetime.fromtimestamp(row[13], datetime.UTC)
    job = Job(job_id, bytes(payload), Priority(priority), key, max_retries, run_at)
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
