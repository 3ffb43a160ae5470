"""The attempts journal: every attempt counted before its handler runs, at no system call.

An attempt (``claimed``) has only to survive the process: a power loss takes the
handler down with it. Bytes stored into a file mapped with ``mmap`` are in the
operating system's page cache the instant they are stored, and survive the process
however it dies. So an attempt is one line copied into ``<path>.attempts``, mapped:
no system call, and no letting go of the GIL, where an SQLite commit per attempt
(even without fsync) measured ten times the cost and was the wall of the whole
queue, and a ``write()`` per attempt made every worker hand the GIL round.

A line is ``<attempt> <id>``, or ``<attempt>j<id as JSON>`` for an id that is not
all printable characters (a newline would end its line, a NUL the whole file); per
job, its last line counts. When the attempt ends, its line's mark becomes an end
mark that says how it ended: ``c`` completed, ``r`` to be retried, ``f`` failed for
good (``C``, ``R``, ``F`` before an id as JSON). One byte, cheaper still than the
line. The database has the end only some milliseconds later (a lagging write), and a
crash in between, another job's handler killing the process, must neither be charged
to an attempt that had ended nor undo its end: a job that completed must not run
again, nor a dead letter leave the dead letters and run past its budget. (``e`` and
``J``, an end that does not say how, are what a journal of an earlier version holds.)

At open, the database store folds the lines of the last run into the database
(``read_attempts``) and the file starts again empty; while running, it starts again
with just the attempts still open whenever it is full. An attempt is open from its
line until the database has its end.
"""

from __future__ import annotations

import json
import mmap
import os
import threading
from collections.abc import Iterable

from final.jobs import Status
from final.store import StoreError

# The size of the attempts file; when full, it starts again with the open attempts.
JOURNAL_BYTES = 1 << 22


class AttemptsJournal:
    """The mapped file of one store; safe to call from any thread."""

    def __init__(self, path: str) -> None:
        """Start ``path`` again empty (fold what it held first: see ``read_journal``)."""
        self.path = path
        self._map = _map(path)
        self._end = 0  # where the next line goes
        # Attempts written whose end is not yet committed, id -> attempt number:
        # what a rewrite of the file must keep.
        self._open: dict[str, int] = {}
        # Where the mark of each open attempt's line is, by id: the byte that
        # ``finished`` turns into an end mark, and that a rewrite reads back.
        self._marks: dict[str, int] = {}
        self._closed = False
        self._lock = threading.Lock()

    def started(self, job_id: str, attempt: int) -> None:
        """Count the attempt: it survives the process once this returns.

        Raises ``StoreError`` once closed, or when the line cannot be stored (no
        room on disk for a rewrite).
        """
        line = _line(job_id, attempt)
        with self._lock:
            self._append(line)
            self._open[job_id] = attempt
            self._marks[job_id] = self._end - len(line) + len(str(attempt))

    def finished(self, job_id: str, outcome: Status) -> None:
        """The job's running attempt ended (its end is not in the database yet): a
        crash from now on is not charged to it, and the next start settles it as
        ``outcome`` says: ``Status.COMPLETED``, ``Status.FAILED`` (for good) or
        ``Status.RETRYING``; an attempt's first end is the one that counts. One
        byte; nothing once closed. Raises ``KeyError`` for another status."""
        ends = ENDS[outcome._value_]  # by its value: an Enum's own hash is Python code
        with self._lock:
            mark = self._marks.get(job_id)
            if mark is not None and not self._closed:
                byte = self._map[mark]
                self._map[mark] = ends.get(byte, byte)

    def restarted(self, job_id: str) -> None:
        """A replay from the dead letters: its attempts so far are of a life that ended
        there, and must not be folded into this one. Attempt 0 says so."""
        line = _line(job_id, 0)
        with self._lock:
            self._append(line)
            self._open.pop(job_id, None)
            self._marks.pop(job_id, None)

    def ended(self, attempts: Iterable[tuple[str, int]]) -> None:
        """These attempts' ends are in the database: the journal may forget them."""
        with self._lock:
            for job_id, attempt in attempts:
                if self._open.get(job_id) == attempt:
                    del self._open[job_id]
                    del self._marks[job_id]

    def uncommitted(self, job_id: str, attempt: int) -> bool:
        """Whether the database does not have the end of this attempt yet."""
        with self._lock:
            return self._open.get(job_id) == attempt

    def close(self) -> None:
        """Let go of the file; emptied when every attempt's end is in the database."""
        with self._lock:
            self._closed = True
            if not self._open:
                self._map[: self._end] = bytes(self._end)
            self._map.close()

    def _append(self, line: bytes) -> None:
        """One line into the file. Holds the lock, so lines are never interleaved."""
        if self._closed:
            raise StoreError(f"{self.path}: the store is closed")
        end = self._end + len(line)
        try:
            if end > len(self._map):
                self._rewrite()
                end = self._end + len(line)
            self._map[self._end : end] = line
        except (OSError, ValueError) as exc:  # no room on disk; a line longer than the file
            raise StoreError(f"{self.path}: {exc}") from exc
        self._end = end

    def _rewrite(self) -> None:
        """Start the file again with just the open attempts. Holds the lock.

        Filled beside it and renamed over it, so that a crash leaves the old file
        or the new one, never half of either.
        """
        fresh = f"{self.path}.new"
        parts: list[bytes] = []
        marks: dict[str, int] = {}
        end = 0
        for job_id, n in self._open.items():
            # Running, or ended as its mark says, its end not committed yet.
            line = _line(job_id, n, MEANINGS[chr(self._map[self._marks[job_id]])])
            marks[job_id] = end + len(str(n))
            parts.append(line)
            end += len(line)
        lines = b"".join(parts)
        mapped = _map(fresh, minimum=2 * len(lines))
        mapped[: len(lines)] = lines
        os.replace(fresh, self.path)
        self._map.close()
        self._map, self._end = mapped, len(lines)
        self._marks = marks


def read_journal(journal: str) -> dict[str, int]:
    """The attempts running, by the journal at ``journal``: per job whose last line
    says an attempt began, that attempt's number. Safe while a queue writes to it."""
    return {job_id: n for job_id, (n, end) in read_attempts(journal).items() if end is None}


def read_attempts(journal: str) -> dict[str, tuple[int, Status | None]]:
    """The latest attempt of each job in the attempts journal at ``journal`` (empty if
    there is none), and how it ended: per job, its last line. The end is None while
    the attempt runs; ``Status.COMPLETED``, ``Status.FAILED`` (for good) or
    ``Status.RETRYING`` once it ended; ``Status.PROCESSING`` for an end that does not
    say how (the mark of an earlier version). Safe while a queue writes to it: a line
    being written is not finished, and is left out."""
    try:
        with open(journal, "rb") as f:
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return {}
    latest: dict[str, tuple[int, Status | None]] = {}
    text = text.split("\0", 1)[0]  # the unused rest of the file is zeros
    lines = text.split("\n")  # an id holds neither unquoted (see _line)
    for line in lines[:-1]:  # the last is empty, or unfinished
        digits = len(line) - len(line.lstrip("0123456789"))
        try:
            attempt, mark, rest = int(line[:digits]), line[digits], line[digits + 1 :]
            end = MEANINGS[mark]
            latest[json.loads(rest) if mark in ESCAPED else rest] = (attempt, end)
        except (ValueError, IndexError, KeyError):
            continue  # damaged by a power loss: that attempt was not made durable
    return latest


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


# The marks: the begin mark (" ", or "j" before an id as JSON) and, per way an
# attempt ends, the end mark that replaces it, a byte for a byte.
BEGIN = {False: " ", True: "j"}
END_MARKS = {
    Status.COMPLETED: {False: "c", True: "C"},
    Status.RETRYING: {False: "r", True: "R"},
    Status.FAILED: {False: "f", True: "F"},
}
# Per outcome (its value), begin mark -> end mark, as the bytes ``finished`` reads
# and stores.
ENDS = {
    outcome.value: {ord(BEGIN[escaped]): ord(mark) for escaped, mark in marks.items()}
    for outcome, marks in END_MARKS.items()
}
# What each mark says of its attempt: None while it runs, else how it ended; "e" and
# "J" are the end mark of an earlier version, which did not say how.
MEANINGS: dict[str, Status | None] = {
    " ": None,
    "j": None,
    "e": Status.PROCESSING,
    "J": Status.PROCESSING,
    **{mark: outcome for outcome, marks in END_MARKS.items() for mark in marks.values()},
}
# The marks before an id as JSON.
ESCAPED = frozenset("jJCRF")


def _line(job_id: str, attempt: int, end: Status | None = None) -> bytes:
    """``<attempt> <id>`` when an attempt begins (``<attempt>c<id>`` once it completed,
    and so on: see END_MARKS), or ``<attempt>j<id as JSON>`` (``C``...) for an id that
    is not all printable characters.

    Any id the queue accepts must come back whole, or a handler that kills the
    process is never counted: a line ends at a newline, and the file's unused rest
    is zeros, so a NUL would end the whole journal there. JSON writes every control
    character (and every other non-printable one) as an escape.
    """
    escaped = not job_id.isprintable()
    mark = BEGIN[escaped] if end is None else END_MARKS[end][escaped]
    return f"{attempt}{mark}{json.dumps(job_id) if escaped else job_id}\n".encode()
