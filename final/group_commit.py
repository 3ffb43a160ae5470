"""Group commit, led by whoever needs it, and the flusher of the writes that may lag.

A thread that needs a commit and finds none under way commits everything pending as
one transaction, on its own thread; writes that arrive meanwhile wait, each on a
lock of its own, and the leader hands the lead to the first of them when it is done.
Producers that arrive together share a commit (and an fsync), so more producers
means more jobs per commit, while each ``enqueue`` still returns only after its own
job is on disk; and a lone producer pays no hand-off to another thread. Lagging
writes are committed apart, by one background thread, ``LAG`` seconds after the
first of them arrived (or in the next acknowledgement's commit, if one is under way
by then).

What a commit is, this module does not know: its owner passes a ``transaction``
that writes a list of ``Pending`` writes (``final/sqlite_store.py``'s SQL). Nor what
a ``chore`` is: some other write of the owner's (the sweep of completed jobs), which
the flusher makes when it is due, holding the lead as a commit does, so that the
queue's commits go on between two of them and none waits for more than one.
"""

from __future__ import annotations

import enum
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from final.store import DuplicateRow, StoreError

# How long the first lagging write waits for the flusher's commit. Short, so that a
# crash reruns few jobs; long enough that a busy queue's commit carries many.
LAG = 0.005


class Write(enum.Enum):
    """The kinds of write a store makes; consecutive writes of one kind share statements."""

    ADD = "add"  # new jobs: acknowledged
    REVIVED = "revived"  # a replay from the dead letters: acknowledged
    CANCELLED = "cancelled"  # a job called off before it started: acknowledged
    RETRYING = "retrying"  # the end of an attempt that will be retried: may lag
    SETTLED = "settled"  # the end of a job: may lag


# The acknowledgements that take the lagging writes along (see GroupCommit._lead).
_CARRY = frozenset({Write.REVIVED, Write.CANCELLED})


def _held_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass(slots=True)
class Batch:
    """One caller's writes, waiting for the commit that carries them."""

    # Released by a leader when the writes are committed, or when it is this caller's
    # turn to lead the next commit: one wake-up for each caller, none for the others.
    turn: threading.Lock = field(default_factory=_held_lock)
    done: bool = False
    error: BaseException | None = None
    duplicates: list[DuplicateRow] = field(default_factory=list)


@dataclass(slots=True)
class Pending:
    """A write waiting for a commit.

    ``params`` are the row's values, the job's id first (for ``ADD``, a list of
    rows); for a lagging write, the attempt number second. ``batch`` is whoever waits
    for it (None: it may lag), and ``power`` whether it must survive a power loss.
    """

    kind: Write
    params: Any
    batch: Batch | None
    power: bool


# Writes a transaction: None when committed, or the error that undid it.
Transaction = Callable[[list[Pending]], BaseException | None]
# Told of the lagging writes each commit has made durable.
Committed = Callable[[list[Pending]], None]
# The owner's chore, made holding the lead: returns the seconds until it is due again.
Chore = Callable[[], float]


class GroupCommit:
    """The commits of one store; ``wait`` and ``later`` are safe from any thread."""

    def __init__(
        self,
        name: str,
        transaction: Transaction,
        committed: Committed,
        chore: Chore | None = None,
    ) -> None:
        """``name`` goes into errors and the flusher thread's name; ``chore``, if any,
        is first due at once."""
        self._name = name
        self._transaction = transaction
        self._on_committed = committed
        # One lock guards everything below; both conditions are built on it. It is
        # not held while a transaction runs (see _lead).
        self._mutex = threading.Lock()
        # Writes not yet committed, in order: acknowledgements, which their callers
        # wait for, and lagging writes, which nobody waits for.
        self._pending: list[Pending] = []
        self._lagging_writes: list[Pending] = []
        self._lagging_since: float | None = None  # when the oldest lagging write came
        self._committing = False  # a thread leads a commit (held until none waits)
        self._crowd = 0  # acknowledgements the last commit carried
        self._closed = False
        # Notified when the last leader lets go; the flusher waits on it at close.
        self._committed = threading.Condition(self._mutex)
        # Notified when a lagging write arrives to find the flusher idle, and at
        # close; the flusher waits on it.
        self._lagging = threading.Condition(self._mutex)
        self._flusher_idle = False
        self._chore = chore
        self._chore_at = math.inf if chore is None else time.monotonic()  # when due
        self._flusher = threading.Thread(target=self._flush_loop, name="final-store", daemon=True)
        self._flusher.start()

    def wait(self, kind: Write, params: Any, power: bool) -> Batch:
        """Add a write and return once it is committed; ``power``: with an fsync.

        Raises ``StoreError`` once closed, or when the commit failed.
        """
        batch = Batch()
        with self._mutex:
            if self._closed:
                raise StoreError(f"{self._name}: the store is closed")
            self._pending.append(Pending(kind, params, batch, power))
            lead = not self._committing
            self._committing = True
        if not lead:
            batch.turn.acquire()  # the leader wakes us: committed, or ours to lead
        if not batch.done:
            self._lead(lagging=False)
        if batch.error is not None:
            raise StoreError(f"{self._name}: {batch.error}") from batch.error
        return batch

    def later(self, kind: Write, params: Any) -> None:
        """Add a write that may lag; dropped once closed (losing it reruns a job)."""
        with self._mutex:
            if self._closed:
                return
            self._lagging_writes.append(Pending(kind, params, None, False))
            if self._lagging_since is None:
                self._lagging_since = time.monotonic()
                if self._flusher_idle:
                    self._lagging.notify()

    def close(self) -> None:
        """Refuse writes from now on, and return once what was pending is committed.
        Safe from any thread, twice."""
        with self._mutex:
            self._closed = True
            self._lagging.notify()
        self._flusher.join()  # it commits what is left, and leaves

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
        wait for this one to end), and for a replay or a cancel: the end of that job's
        earlier life (an attempt to be retried) may still lag, and must not land after it.
        """
        if self._crowd > 1:
            # The last commit carried several callers: more are on their way back with
            # their next write. Letting them run first (a sleep of 0 hands over the
            # GIL) puts them in this commit rather than the next.
            time.sleep(0)
        writes = self._take(lagging)
        error: BaseException | None = None
        try:
            error = self._transaction(writes)
        except BaseException as exc:  # the waiters must hear of it, whatever it is
            error = exc
            raise
        finally:
            self._hand_on(writes, error)

    def _take(self, lagging: bool) -> list[Pending]:
        """The writes this commit carries (see _lead)."""
        with self._mutex:
            writes, self._pending = self._pending, []
            self._crowd = len(writes)
            since = self._lagging_since
            overdue = since is not None and time.monotonic() - since >= LAG
            if lagging or overdue or any(w.kind in _CARRY for w in writes):
                writes = self._lagging_writes + writes
                self._lagging_writes = []
                self._lagging_since = None
        return writes

    def _hand_on(self, writes: list[Pending], error: BaseException | None) -> None:
        """Wake the callers committed, and pass the lead to the next, if any."""
        ended = [w for w in writes if w.batch is None] if error is None else []
        if ended:
            self._on_committed(ended)
        with self._mutex:
            for write in writes:
                if write.batch is not None:
                    write.batch.error = error
                    write.batch.done = True
                    write.batch.turn.release()
            self._pass_lead()

    def _pass_lead(self) -> None:
        """To the first caller waiting, if any; else nobody leads. Holds the lock."""
        if self._pending:
            successor = self._pending[0].batch
            assert successor is not None  # acknowledgements: each has a waiter
            successor.turn.release()
        else:
            self._committing = False
            self._committed.notify_all()

    def _flush_loop(self) -> None:
        """Commit the lagging writes once the oldest has waited LAG seconds, and make
        the last commit at close.

        While writes keep lagging, this thread wakes every LAG seconds on its own,
        which is cheaper than being told of every one; after a quiet LAG it sleeps
        until a lagging write arrives to find it idle, and is told of that one, or
        until the chore is due.
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
                if self._chore_at <= time.monotonic() and not self._committing:
                    self._chore_from_flusher()
                    continue
                if self._lagging_since is None:
                    self._flusher_idle = quiet
                    self._lagging.wait(self._idle_wait(quiet))
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

    def _idle_wait(self, quiet: bool) -> float | None:
        """How long the flusher may sleep with no lagging write: until the chore is due,
        at most LAG unless ``quiet``; None, for ever. Holds the lock."""
        wait = self._chore_at - time.monotonic()
        if wait <= 0:  # due, but a commit is under way: after it, not in a busy loop
            wait = LAG
        if not quiet:
            wait = min(wait, LAG)
        return None if wait == math.inf else wait

    def _chore_from_flusher(self) -> None:
        """Take the lead and make the chore. Holds the lock, and lets go of it
        meanwhile; the lead passes on as after a commit."""
        assert self._chore is not None  # never due without one
        self._committing = True
        self._mutex.release()
        again = LAG
        try:
            again = self._chore()
        finally:
            self._mutex.acquire()
            self._chore_at = time.monotonic() + again
            self._pass_lead()

    def _lead_from_flusher(self) -> None:
        """Take the lead and commit the lagging writes. Holds the lock, and lets go
        of it meanwhile."""
        self._committing = True
        self._mutex.release()
        try:
            self._lead(lagging=True)
        finally:
            self._mutex.acquire()
