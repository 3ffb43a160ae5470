"""The final tier beyond one process: one queue in PostgreSQL, shared by many processes.

``JobQueue(handler, dsn=..., queue="default", workers=N, lease=30.0)`` returns a
``SharedQueue``: same methods, same exceptions, ``isinstance(q, JobQueue)`` holds,
and every process on every machine that names the same database and ``queue`` works
on one queue. ``workers=0`` is a handle that enqueues and looks up, and runs nothing.

The design choice: a class of its own, not the in-process queue with a shared store
behind its store seam. The seam (``final/store.py``) is a *journal*: the queue decides
everything in memory, under its lock, and tells the store afterwards. That is exactly
what cannot be shared. Which job runs next, whether a key is taken, whether a job is
still running: in memory each is one process's opinion, and two processes would each
hold their own. Here every such decision is a statement that the database settles
for everyone at once (``final/pg_engine.py``):

- the lanes become the claim, ``SELECT ... FOR UPDATE SKIP LOCKED`` in priority order,
  which also counts the attempt (a handler that kills its process has spent one);
- the record's token becomes the claim's token: every settle, retry, dead letter or
  give-back carries it, and changes nothing once another process has the job;
- the dictionary of idempotency keys becomes a unique index, so a key used through one
  handle is refused through any other;
- "a worker thread is alive" becomes a heartbeat row, and the rescue of the jobs of a
  process that stopped heartbeating replaces the SQLite store's recovery at start.

Bending the in-process queue to ask the database before each of its moves would have
left a learner reading two programs interleaved. So this module keeps only the pieces
that mean the same thing in both: ``FairPicker`` (fairness, counted per process),
the token bucket of ``final/rate_limit.py`` (its rule and its burst of a tenth of a
second, now computed in SQL on a row every process takes from), ``backoff_delay``,
``Attempt`` and ``current_attempt()``, ``Metrics``, the checks of
``final/validation.py`` and the exceptions. Read the two side by side: each public
method here does what the in-process one does, with a statement where that one takes
its lock.

What each process opens (four connections with workers, one without):

1. the API connection (autocommit, synchronous commit): ``enqueue``, ``status``,
   ``info``, ``dead_letters``, ``retry_dead``, ``join``'s polls, behind a lock;
2. the claim connection (autocommit, ``synchronous_commit = off``): claims, settles,
   give-backs. An asynchronous commit is visible to every session at once; only a
   crash of the *server* in the next fraction of a second undoes it, and what it then
   forgets is a completion or a counted attempt: the job runs again, which
   at-least-once allows. The acknowledgement, ``enqueue``, always waits for the disk;
3. the upkeep connection: heartbeats every ``lease / 3``, a rescue every ``lease / 2``;
4. the listening connection: ``LISTEN`` for the one NOTIFY each enqueue transaction
   sends, re-opened when it drops. Polling (every second) stays on underneath it;
5. only where the server runs with autovacuum off: for a moment now and then, one
   more, on which the upkeep vacuums the jobs table (see ``_vacuum_if_off``).

After ``os.fork()`` the child's handle is closed (``QueueClosed``, naming the fork):
its connections are the parent's sockets, and one word from the child would corrupt
the parent's conversation with the server.

Fairness across processes. Each process counts its own picks (``FairPicker`` over the
lanes' waiting counts, read before each claim), and when it owes a lower lane its
turn, it claims from that lane. A LOW job at the head of its lane is claimed once any
process owes LOW, and each owes it after ``fairness`` of its own picks from above:
with P processes claiming, it waits at most ``P * fairness + 1`` picks of the queue.
(The counts are read a moment before the claim, so a lane that emptied meanwhile
costs a pick: the bound is in picks made, as the in-process one, give or take that.
While no lower lane can be owed within a claim, the counts are read by the claim's
own statement instead, and the picks replayed on them: the same counts, one round
trip fewer.)

Time. Every time that two machines could disagree on (a lease, a deadline, a backoff's
end, when a job was enqueued) is the database server's ``now()``. A process measures
only its own durations with its own clock: ``job_timeout`` is its local timer, as in
the in-process queue (the slot back at once, the late result ignored); the claim also
sets a deadline of ``job_timeout + lease`` in the database, which the rescue enforces
if that process is alive but its timer never fired.

Bounds, and what each costs:

- ``queue_size`` is counted in the database before each insert (in the insert's own
  statement for one job; one more round trip for a batch), so across processes it is
  approximate: jobs enqueued between a count and its insert may pass it. The bound
  keeps what it counts small. A blocked producer polls.
- ``rate_limit`` is one token bucket per queue, a row every claim of a rate-limited
  queue locks for a moment; an unlimited queue never touches it. Every process of the
  queue should give the same rate (each refills the bucket at its own).
- ``join`` polls the ids this handle accepted; ``max_retries`` is fixed at enqueue, by
  the handle that enqueued the job.
- ``metrics()`` counts this handle's own work; its gauges (``queued``, ``retrying``,
  ``in_flight``, ``dead``) are the whole queue's, read from the database.

What it still gets wrong, or leaves to you:

- A job runs at least once, not exactly once: a lease that expires under a live
  worker (cut off from the database for longer than ``lease``) lets another process
  run it too. The fence only keeps the first from reporting; its side effects are
  its own to make idempotent, except a write to this database: a handler that calls
  ``current_attempt().complete(conn)`` in the transaction of its write commits the
  write and the completion together, or neither, and the fence (the completion
  matches the claim and locks the row until the commit) refuses a lost attempt's
  (``ClaimLost``). The same goes the other way: ``enqueue(job, connection=conn)``
  inserts the job in the application's transaction, to exist only if it commits.
- ``close(timeout)`` leaves what it did not settle in the database, for the other
  processes (none of it is ``lost``): a last process that closes leaves it for the
  next one to start.
- ``retention`` prunes completed and cancelled rows in batches, on the upkeep
  connection at each rescue round.

Jobs in time. A job with a ``run_at`` is a row like any other, ``'scheduled'`` until
the database's clock reaches it: it holds no claim, no worker and no lane room, and
it keeps its time across restarts. The claim takes it once due, in its line by its
due time. A claimer learns when to wake without polling for it: the enqueue's NOTIFY
says in how many seconds its first job is due, and after each wait that ended on
time (a poll, a due time) the claimer asks the database when the next one is due
(``NEXT_DUE``, one step down the waiting index per lane), so that a job scheduled
before this process started, or announced while its listening connection was down,
starts on time too. ``cancel`` is one statement that only a job not yet claimed
matches, so it and a claim cannot both win. ``close()`` does not wait for jobs whose
``run_at`` has not come: they wait in the database. ``periodic`` is the in-process
queue's (``final/periodic.py``), over the public ``enqueue`` and ``status``.
"""

from __future__ import annotations

import atexit
import contextlib
import heapq
import logging
import math
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from final.errors import (
    ClaimLost,
    DuplicateJob,
    NotADeadLetter,
    QueueClosed,
    QueueFull,
    UnknownJob,
)
from final.fairness import FairPicker
from final.job_queue import (
    _COUNTERS,
    Attempt,
    Handler,
    JobQueue,
    LaneMetrics,
    Metrics,
    _check_executor,
    _current,
    _forked,
    _log_failure,
    _queues,
    _refuse_from_handler,
    backoff_delay,
)
from final.jobs import Job, JobInfo, Priority, Record, Status, failure_text
from final.processes import ProcessPool
from final.sqlite_store import RETENTION
from final.store import Store, StoreError
from final.validation import check_int, check_job, check_seconds, check_timeout

if TYPE_CHECKING:
    import psycopg

    from final import pg_engine

__all__ = ["SharedQueue"]

logger = logging.getLogger(__name__)

_POLL = 1.0  # seconds between claims when no notification comes: the backstop
_LANES = [int(p) for p in Priority]
_told_vacuum_off = False  # the warning that autovacuum is off: once per process
_STATUS = {status.value: status for status in Status}  # the rows' statuses are its values


class SharedQueue(JobQueue):
    """A ``JobQueue`` whose jobs live in PostgreSQL; built by ``JobQueue(dsn=...)``."""

    def __init__(
        self,
        handler: Handler,
        *,
        workers: int = 4,
        queue_size: int = 1000,
        max_retries: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        job_timeout: float | None = None,
        fairness: int = 10,
        rate_limit: float | None = None,
        path: str | os.PathLike[str] | None = None,
        durability: str = "power",
        history: int = 100_000,
        retention: float | None = RETENTION,
        store: Store | None = None,
        dsn: str | None = None,
        queue: str = "default",
        lease: float = 30.0,
        executor: str = "thread",
    ) -> None:
        """Raises ``ValueError`` for a malformed ``dsn`` or option, a ``dsn`` with a
        ``path`` or ``store``; ``StoreError`` when the server does not answer, or its
        tables are of another version (``SchemaMismatch``, which says what to do)."""
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {type(handler).__name__}")
        self._dsn = _check_target(dsn, path, store)
        _check_options(
            workers, queue_size, max_retries, backoff, max_backoff, job_timeout, fairness
        )
        _check_shared(queue, rate_limit, lease, retention, executor, handler)
        self._retention = retention
        self._handler, self._executor = handler, executor
        self._workers = workers
        self._max_retries = max_retries
        self._queue_size = queue_size
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._job_timeout = job_timeout
        self._queue = queue
        self._lease = lease
        self._rate = rate_limit
        self._burst = 0.0 if rate_limit is None else max(1.0, rate_limit / 10)
        self._init_shared_state(fairness)
        self._api = self._connect()
        _queues.add(self)  # see _after_fork
        try:
            from final.pg_schema import ensure_schema

            with self._api_lock:
                ensure_schema(self._api)
            self._where = self._call(self._engine_where)  # kept: complete() may run cut off
            if workers:
                self._start_workers()
        except BaseException:
            self._close_connections()
            raise

    def _init_shared_state(self, fairness: int) -> None:
        self._mutex = threading.Lock()
        self._wake = threading.Condition(self._mutex)  # dispatcher: a slot, a hint, a stop
        self._work = threading.Condition(self._mutex)  # workers: a claimed job, a stop
        self._stopped = threading.Condition(self._mutex)  # upkeep: a stop
        self._api_lock = threading.Lock()  # the API connection, one statement at a time
        self._reopen_lock = threading.Lock()  # one thread re-opens the claim connection
        self._settle_lock = threading.Lock()  # completions waiting to share one statement
        self._settle_done = threading.Condition(self._settle_lock)
        self._settle_queue: list[list[Any]] = []  # [id, token, held or None]
        self._settling = False  # a worker is settling a batch now
        self._buffer: deque[Attempt] = deque()  # claimed, not started: given back at close
        self._in_flight: dict[Attempt, float | None] = {}  # started, with local deadlines
        self._waiting = {p: 0 for p in Priority}  # lanes' waiting counts, for fairness
        self._picker = FairPicker(fairness, {p: _Count(self._waiting, p) for p in Priority})
        self._token_due: float | None = None  # rate_limit: when the bucket has a token again
        self._due: list[float] = []  # a heap: when retries this process scheduled fall due
        self._accepted: set[str] = set()  # ids this handle accepted and has not seen settle
        self._hinted = True  # claim at once at start: jobs may be waiting already
        # When the first job known to wait for a time (a run_at, a backoff) is due, as
        # a time.monotonic() value: lowered by each enqueue's wake-up that says so, and
        # by a look in the database after each wait that ended on time; raised only
        # when it has come, and then looked up again (min-only: no wake-up is lost).
        self._next_due = math.inf
        self._look_ahead = True
        self._closing = False
        self._stopping = False  # no more claims; workers leave after their attempt
        self._left = False  # deregistered, connections closed
        self._live_workers = 0  # worker threads not running an attempt that timed out
        self._forked = False
        self._vacuuming: threading.Thread | None = None  # see _vacuum_if_off
        self._counts = {p: dict.fromkeys(_COUNTERS, 0) for p in Priority}
        self._busy = 0.0
        self._began = time.monotonic()
        self._threads: set[threading.Thread] = set()
        self._conns: list[psycopg.Connection[Any]] = []
        self._process = 0
        self._pool: ProcessPool | None = None  # executor="process": the children
        # The application's connections found to see this queue's tables.
        self._seen_connections: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()

    def _connect(self, *, keep: bool = True, **settings: str) -> psycopg.Connection[Any]:
        """A new autocommit connection; clear errors for a bad dsn or a silent server."""
        import psycopg

        try:
            conn = psycopg.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=10,
                # A half-open connection looks alive and delivers nothing: probe it.
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
            )
        except psycopg.ProgrammingError as error:  # what libpq says of a malformed dsn
            raise ValueError(f"dsn is not a valid PostgreSQL connection URI: {error}") from None
        except psycopg.OperationalError as error:
            raise StoreError(f"PostgreSQL does not answer at the given dsn: {error}") from error
        from final import pg_engine

        for name, value in settings.items():
            pg_engine.set_config(conn, name, value)
        if keep:  # closed by close(); the caller closes the others
            self._conns.append(conn)
        return conn

    def _start_workers(self) -> None:
        from final import pg_engine

        self._engine = pg_engine
        self._start_pool()
        self._claimer = self._connect(synchronous_commit="off", lock_timeout="5s")
        self._upkeep = self._connect(synchronous_commit="off")
        self._process = pg_engine.register(self._upkeep, self._queue, self._lease)
        # Listening before the first claim: a job enqueued from now on wakes us.
        self._listening = self._connect()
        pg_engine.listen(self._listening, self._queue)
        for _ in range(self._workers):
            self._spawn_worker()
        self._spawn(self._dispatcher, "dispatcher")
        self._upkeeping = self._spawn(self._upkeeper, "upkeep")
        self._spawn(self._listener, "listener")
        ref = weakref.ref(self)

        def close_at_exit() -> None:
            if (queue := ref()) is not None:
                queue.close()

        self._atexit_hook = close_at_exit
        atexit.register(close_at_exit)

    def _spawn(self, target: Any, role: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=f"final-shared-{role}", daemon=True)
        self._threads.add(thread)
        thread.start()
        return thread

    def _spawn_worker(self) -> None:
        with self._mutex:
            self._live_workers += 1
        self._spawn(self._worker, "worker")

    # -- the contract ------------------------------------------------------------------

    def enqueue(
        self,
        job: Job,
        timeout: float | None = None,
        *,
        connection: psycopg.Connection[Any] | None = None,
    ) -> None:
        """Commit ``job`` to the shared queue; on return it is in the database.

        A job with a ``run_at`` still to come is ``SCHEDULED`` until the database's
        clock reaches it, and holds no lane room meanwhile; one already past is queued.

        With ``connection`` (the application's own psycopg connection, not in
        autocommit mode unless inside ``with connection.transaction():``), it is
        inserted in that connection's transaction instead,
        never in one of its own: see ``enqueue_many``.

        Raises ``DuplicateJob`` when its id or idempotency key is taken by a job of
        the queue (whoever enqueued it), ``QueueClosed`` once ``close()`` has begun,
        ``StoreError`` when the server cannot be reached (nothing was accepted),
        ``TypeError`` or ``ValueError`` for a malformed job. ``timeout`` is checked
        and otherwise unused: the table has no lane to fill.
        """
        self.enqueue_many([job], timeout, connection=connection)

    def enqueue_many(
        self,
        jobs: Iterable[Job],
        timeout: float | None = None,
        *,
        connection: psycopg.Connection[Any] | None = None,
    ) -> None:
        """Commit ``jobs`` in order, as many as their lanes have room for in one
        transaction (and one wake-up of the other processes), waiting for room.

        ``timeout`` applies to each wait for room. If a job cannot be accepted
        (``QueueFull``, ``DuplicateJob``, ``QueueClosed``, ``StoreError``), the jobs
        before it stay accepted, and the exception's ``accepted`` says how many.

        ``connection``: the application's psycopg connection to the queue's database
        (the queue's tables in its ``search_path``), not in autocommit mode unless a
        ``with connection.transaction():`` block is open on it. The jobs
        are inserted in its transaction (opened by this call if no statement opened it
        yet): no process sees or claims them before it commits, a rollback leaves
        none, and the other processes are woken at the commit. A refused job raises
        ``DuplicateJob`` and leaves the transaction usable, the jobs before it in it.
        ``join`` waits for these jobs once the transaction has committed; a ``join``
        that looks before the commit, or after a rollback, finds no such job and does
        not wait for it (it never waits for a job that will not exist). ``ValueError``
        for a connection in autocommit mode outside a transaction, closed, or seeing
        other queue tables.
        """
        jobs = list(jobs)
        for job in jobs:
            check_job(job)
            _check_no_nul(job)
        check_timeout(timeout)
        if connection is not None:
            self._check_connection(connection)
        accepted = 0
        if len(jobs) == 1 and jobs[0].run_at is None and connection is None:
            try:  # the fast way runs on the queue's own connection: never the caller's
                if self._insert_one(jobs[0]):
                    return
            except (QueueClosed, StoreError) as error:
                error.accepted = 0
                raise
        while accepted < len(jobs):
            try:
                fit = self._room_for(jobs[accepted:], timeout)
                self._insert(jobs[accepted : accepted + fit], connection)
            except (QueueFull, QueueClosed, DuplicateJob, StoreError) as error:
                error.accepted = accepted + getattr(error, "accepted", 0)
                raise
            accepted += fit

    def _insert_one(self, job: Job) -> bool:
        """One job due now, its lane's bound checked in the insert's own statement:
        one round trip where counting first takes two. False when it was not
        inserted (its lane is full, or its id or key is taken): the caller then
        takes the longer way, which waits for room or says what is taken."""
        from final import pg_engine

        if self._closing:
            raise QueueClosed("the queue is closed; enqueue through another handle")
        max_retries = self._max_retries if job.max_retries is None else job.max_retries
        new = pg_engine.NewJob(
            job.id, job.payload, int(job.priority), max_retries, job.idempotency_key
        )
        if not self._call(pg_engine.enqueue_one, self._queue, new, self._queue_size):
            return False
        with self._mutex:
            self._accepted.add(job.id)
            self._counts[job.priority]["submitted"] += 1
        return True

    def _room_for(self, jobs: list[Job], timeout: float | None) -> int:
        """How many of ``jobs`` (from the first) their lanes have room for; waits
        (polling, up to ``timeout``) until the first one fits.

        The lanes are counted in the database, so the bound holds across processes
        only up to the jobs enqueued between a count and its insert: approximate,
        and cheap because the bound itself keeps what it counts small.
        """
        from final import pg_engine

        endtime = None if timeout is None else time.monotonic() + timeout
        pause = 0.005
        while True:
            if self._closing:
                raise QueueClosed("the queue is closed; enqueue through another handle")
            lanes = [int(p) for p in Priority]
            counts = self._call(pg_engine.waiting, self._queue, self._queue_size, lanes)
            room = {p: self._queue_size - counts.get(int(p), 0) for p in Priority}
            fit = 0
            for job in jobs:
                if room[job.priority] <= 0:
                    break
                room[job.priority] -= 1
                fit += 1
            if fit:
                return fit
            left = None if endtime is None else endtime - time.monotonic()
            if left is not None and left <= 0:
                raise QueueFull(f"the {jobs[0].priority.name} lane is full")
            time.sleep(
                pause if left is None else min(pause, left)
            )  # a poll: room is made elsewhere
            pause = min(0.1, pause * 2)

    def _insert(self, jobs: list[Job], connection: psycopg.Connection[Any] | None) -> None:
        """Insert ``jobs`` in one transaction (``connection``'s, if given);
        ``DuplicateJob`` (with ``accepted``) for the first whose id or key is taken,
        the ones before it inserted."""
        from final import pg_engine

        new = [
            pg_engine.NewJob(
                job.id,
                job.payload,
                int(job.priority),
                self._max_retries if job.max_retries is None else job.max_retries,
                job.idempotency_key,
                job.run_at,
            )
            for job in jobs
        ]
        if connection is None:
            refused = self._call(pg_engine.enqueue, self._queue, new)
        else:
            refused = _on_callers(pg_engine.enqueue, connection, self._queue, new)
        accepted = len(jobs) if refused is None else refused.index
        with self._mutex:
            for job in jobs[:accepted]:
                # In the caller's transaction too: join() takes a job that is not in
                # the table (not committed yet, or rolled back) as settled.
                self._accepted.add(job.id)
                self._counts[job.priority]["submitted"] += 1
        if refused is None:
            return
        job = jobs[refused.index]
        if refused.by == "key":
            key, holder = job.idempotency_key, refused.holder
            message = f"idempotency key {key!r} was used by job {holder}"
        else:
            message = f"a job with id {job.id!r} was accepted before"
        error = DuplicateJob(refused.holder, message)
        error.accepted = accepted
        raise error

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every job this handle accepted has settled, wherever it ran.

        A job enqueued in the caller's transaction counts once it has committed: one
        not in the table when ``join`` looks (uncommitted, rolled back) is not waited for.

        ``False`` if ``timeout`` passed first. The jobs are polled in the database,
        every 10 ms at first, slowing to every 250 ms.
        """
        _refuse_from_handler(self, "join")
        return self._wait_settled(timeout, scheduled=True)

    def _wait_settled(self, timeout: float | None, *, scheduled: bool) -> bool:
        """``join``; without ``scheduled``, jobs whose run_at has not come do not count."""
        from final import pg_engine

        endtime = None if timeout is None else time.monotonic() + timeout
        pause = 0.01
        while True:
            with self._mutex:
                ids = list(self._accepted)
            left = self._call(pg_engine.unsettled, self._queue, ids, scheduled) if ids else set()
            with self._mutex:
                # Without scheduled, those not due are dropped too: close() leaves them.
                self._accepted.difference_update(set(ids) - left)
                if not self._accepted:
                    return True
            if endtime is not None and time.monotonic() >= endtime:
                return False
            wait = pause if endtime is None else min(pause, max(0.0, endtime - time.monotonic()))
            time.sleep(wait)  # a poll: the settle happened in some other process
            pause = min(0.25, pause * 2)

    def close(self, timeout: float | None = None) -> None:
        """Stop: wait for this handle's jobs to settle, then give back and leave.

        Without ``timeout``, waits (as ``join``) for every job this handle accepted,
        while its workers keep claiming, except the jobs whose ``run_at`` has not come:
        they wait in the database for whichever process runs then. With ``timeout``,
        for at most that long.
        Then it stops claiming, gives back the jobs it claimed and did not start (no
        attempt counted, their place in line kept), lets the attempts running finish
        and settle (never abandoned), leaves the table of processes and closes its
        connections. Jobs left unsettled stay in the database for other processes
        (none is ``lost``), and ``join`` stops waiting for them. Lookups still answer
        after ``close``, each on a connection of its own. Safe to call twice.
        """
        _refuse_from_handler(self, "close")
        if self._forked:
            return
        self._periodic_schedules().close()
        first = not self._closing
        self._closing = True
        if first and self._workers:
            self._wait_settled(timeout, scheduled=False)
        with self._mutex:
            if self._stopping:
                if timeout is None:  # a second close() waits for the attempts in flight
                    self._stopped.wait_for(lambda: self._left)
                return
            self._stopping = True
            # What has not settled is the queue's now, run by other processes: join()
            # no longer waits for it.
            self._accepted.clear()
            unstarted = list(self._buffer)
            self._buffer.clear()
            self._wake.notify_all()
            self._work.notify_all()
            self._stopped.notify_all()
        if self._workers:
            self._give_back(unstarted)
            atexit.unregister(self._atexit_hook)
            endtime = None if timeout is None else time.monotonic() + timeout
            for thread in list(self._threads):
                if thread is not threading.current_thread() and thread is not self._upkeeping:
                    thread.join(None if endtime is None else max(0.0, endtime - time.monotonic()))
            with self._mutex:
                if self._live_workers:
                    return  # attempts still run: the last worker out leaves (see _worker)
        self._leave()

    def _leave(self) -> None:
        """Leave the table of processes and close the connections; once, when idle."""
        with self._mutex:
            if self._left:
                return
            self._left = True
            self._stopped.notify_all()
        if self._workers:
            if self._upkeeping is not threading.current_thread():
                self._upkeeping.join()
            try:
                self._engine.deregister(self._claimer, self._process)
            except Exception:  # the rescue forgets a silent process after its lease
                logger.warning("could not leave the table of processes", exc_info=True)
        self._close_connections()

    def metrics(self) -> Metrics:
        """This handle's counters, and the whole queue's gauges read from the database.

        Counters, which only grow: ``submitted``, ``started``, ``completed``,
        ``failed``, ``retried``, ``timed_out``, ``lost``, and ``cancelled``, the
        jobs this handle's ``cancel()`` called off. Gauges: ``queued`` (a job whose
        ``run_at`` or backoff has come is queued), ``scheduled``, ``retrying``,
        ``in_flight``, ``dead``. The cancelled jobs the database still keeps, whoever
        cancelled them, are not a counter (``retention`` prunes them, so their number
        goes down): ``status()`` of each, or ``python -m final inspect --dsn``.
        """
        from final import pg_engine

        counts = self._call(pg_engine.counts, self._queue)
        dead: int = self._call(pg_engine.dead_count, self._queue)
        with self._mutex:
            lanes = {
                p: LaneMetrics(
                    **_handle_counts(self._counts[p]),
                    queued=counts.get((int(p), "queued"), 0),
                    retrying=counts.get((int(p), "retrying"), 0),
                    in_flight=counts.get((int(p), "processing"), 0),
                    scheduled=counts.get((int(p), "scheduled"), 0),
                )
                for p in Priority
            }
            now = time.monotonic()
            busy = self._busy + sum(
                now - a._record.started for a in self._in_flight if a._record.started
            )
            elapsed = (now - self._began) * max(1, self._workers)
        totals = {name: sum(getattr(m, name) for m in lanes.values()) for name in _COUNTERS}
        return Metrics(
            **_handle_counts(totals),
            queued=sum(m.queued for m in lanes.values()),
            retrying=sum(m.retrying for m in lanes.values()),
            in_flight=sum(m.in_flight for m in lanes.values()),
            abandoned=0,
            dead=dead,
            by_priority=lanes,
            wait_p50=None,
            wait_p99=None,
            utilization=min(1.0, busy / elapsed) if elapsed > 0 else 0.0,
            scheduled=sum(m.scheduled for m in lanes.values()),
        )

    def info(self, job_id: str) -> JobInfo | None:
        """Status, attempts, last error and times of any job of the queue; None if unknown."""
        from final import pg_engine

        stored = self._call(pg_engine.find, self._queue, job_id)
        return None if stored is None else _info(stored)

    def dead_letters(self) -> list[Job]:
        """Every dead letter of the queue, whichever process ran it, oldest first."""
        return [_job(stored) for stored in self._dead_rows()]

    def dead_letter_info(self) -> list[JobInfo]:
        """What ``info`` says of each dead letter of the queue, oldest first."""
        return [_info(stored) for stored in self._dead_rows()]

    def _dead_rows(self) -> list[pg_engine.StoredJob]:
        from final import pg_engine

        dead: list[pg_engine.StoredJob] = self._call(pg_engine.dead_letters, self._queue)
        return dead

    def retry_dead(self, job_id: str) -> None:
        """Put any dead letter of the queue back in line with a fresh retry budget.

        Raises ``KeyError`` (``NotADeadLetter``) for an id that is not a dead letter,
        ``QueueClosed`` once ``close()`` has begun.
        """
        from final import pg_engine

        if self._closing:
            raise QueueClosed("the queue is closed; replay the job from another handle")
        stored = self._call(pg_engine.find, self._queue, job_id)
        if not self._call(pg_engine.revive, self._queue, job_id):
            raise NotADeadLetter(job_id)
        with self._mutex:
            self._accepted.add(job_id)
            if stored is not None:
                self._counts[Priority(stored.priority)]["submitted"] += 1

    def cancel(self, job_id: str) -> bool:
        """Call off a job of the queue that has not started, whoever enqueued it.

        ``True``: it was queued, scheduled or waiting out a backoff, and now it is
        ``CANCELLED`` and never runs (its idempotency key stays used until
        ``retention`` prunes it). ``False``: it is running or has settled, and
        nothing changed. Raises ``UnknownJob`` (a ``KeyError``) for an id the queue does not know.
        One statement decides against the claim: if a worker of any process takes
        the job at the same instant, exactly one of the two wins (whichever locks the
        row first; a cancel that finds it locked answers ``False`` at once rather
        than wait, so a handler's open ``complete(connection)`` transaction holds up
        neither this call nor the lookups behind it). Answers after ``close()`` too,
        as the lookups do.
        """
        from final import pg_engine

        cancelled, priority = self._call(pg_engine.cancel_in_lane, self._queue, job_id)
        if cancelled is None:
            raise UnknownJob(job_id)
        if cancelled:
            with self._mutex:
                self._counts[Priority(priority)]["cancelled"] += 1
        return bool(cancelled)

    def recent_failures(self, limit: int = 20) -> list[JobInfo]:
        """What ``info`` says of the queue's jobs whose latest attempt failed, whichever
        process ran them, newest first, at most ``limit`` (an int >= 1): the retries
        and the dead letters. Raises ``ValueError`` for a bad ``limit``."""
        from final import pg_engine

        check_int("limit", limit, minimum=1)
        return [
            _info(stored) for stored in self._call(pg_engine.recent_failures, self._queue, limit)
        ]

    def __enter__(self) -> SharedQueue:
        return self

    # -- the round trips ---------------------------------------------------------------

    def _call(self, function: Any, *args: Any) -> Any:
        """Run an engine function on the API connection, once reconnected if it dropped."""
        import psycopg

        if self._forked:
            raise _forked()
        with self._api_lock:
            if self._left:
                # Closed: lookups still answer, each on a connection of its own.
                with self._connect(keep=False) as conn:
                    return function(conn, *args)
            try:
                return function(self._api, *args)
            except psycopg.OperationalError as error:
                # An acknowledged job is committed: only this round trip is in doubt,
                # and it is the caller's to repeat (an enqueue's id makes that safe).
                logger.warning("lost the connection to PostgreSQL (%s); reconnecting", error)
                self._reopen_api()
                raise StoreError(f"PostgreSQL connection lost mid-call: {error}") from error

    def _after_fork(self) -> None:
        """In the child of an ``os.fork()``: the handle and its connections are the parent's.

        The child shares the parent's sockets to the server; one query from the child
        (or the goodbye that closing a connection sends) would land in the middle of
        the parent's conversation and corrupt it. So the child never touches them:
        every call that would raises ``QueueClosed`` before it does, ``close()`` is a
        no-op, and the exit hook is dropped. psycopg itself never closes, at garbage
        collection, a connection opened by another process.
        """
        self._forked = True
        hook = getattr(self, "_atexit_hook", None)  # a handle without workers has none
        if hook is not None:
            atexit.unregister(hook)

    def _reopen_api(self) -> None:
        try:
            self._api.close()
            self._conns.remove(self._api)
            self._api = self._connect()
        except StoreError:
            logger.warning("PostgreSQL still does not answer; the next call tries again")

    def _close_connections(self) -> None:
        """The database's, and the pipes to the children (executor="process"): busy
        children leave once their attempt ends."""
        if self._pool is not None:
            self._pool.close()
        with self._api_lock:  # not under a lookup that is using the API connection
            for conn in self._conns:
                conn.close()

    # -- claiming and running ----------------------------------------------------------

    def _dispatcher(self) -> None:
        """Claim as many jobs as there are idle workers; wake on a hint, a slot, a
        poll, or the time a job waiting for one is due."""
        import psycopg

        while True:
            with self._mutex:
                self._time_out_overdue()
                free = self._workers - len(self._in_flight) - len(self._buffer)
                if self._stopping:
                    return
                if (free <= 0 or not self._hinted) and not self._wake.wait(self._next_wait()):
                    self._look_ahead = True  # a poll, or a due time: what is due next?
                self._hinted = True  # a poll after every wait, notified or not
                free = self._workers - len(self._in_flight) - len(self._buffer)
                if self._stopping:
                    return
                look_ahead, self._look_ahead = self._look_ahead, False
            try:
                claimed = self._claim(free) if free > 0 else []
                if look_ahead:
                    self._note_due(self._engine.next_due(self._claimer, self._queue, _LANES))
            except psycopg.Error as error:
                # A claim whose answer was lost may have committed: those jobs come
                # back through the rescue after the lease, the attempt counted.
                logger.warning("claim failed (%s); trying again", error)
                self._reopen_claimer()
                time.sleep(_POLL)
                continue
            if free <= 0:
                continue
            with self._mutex:
                self._hinted = len(claimed) == free  # a full claim: there may be more
                self._buffer.extend(claimed)
                self._work.notify(len(claimed))

    def _note_due(self, seconds: float | None) -> None:
        """A job waiting for a time is due in ``seconds`` (None: no such job is known)."""
        if seconds is None:
            return
        with self._mutex:
            due = time.monotonic() + seconds
            if due < self._next_due:
                self._next_due = due
                self._wake.notify()  # the dispatcher may sleep towards a later time

    def _next_wait(self) -> float:
        """Seconds until the next poll, local deadline, retry of ours due, or job
        waiting for a time due. Under the lock."""
        now = time.monotonic()
        if self._next_due <= now:
            self._next_due = math.inf  # it has come: claim it, then look ahead again
            return 0.0
        while self._due and self._due[0] <= now:
            heapq.heappop(self._due)  # a retry of ours fell due: the claim after this wait
        times = [d for d in self._in_flight.values() if d is not None] + self._due[:1]
        times.append(self._next_due)
        if self._token_due is not None:
            times.append(self._token_due)
            self._token_due = None
        return max(0.0, min([_POLL, *(t - now for t in times)]))

    def _claim(self, free: int) -> list[Attempt]:
        """Claim ``free`` jobs: fair picks lane by lane, within the shared rate limit."""
        engine = self._engine
        if self._rate is not None:
            wanted = free
            free = engine.take_tokens(self._claimer, self._queue, free, self._rate, self._burst)
            if free < wanted:  # the bucket ran dry: try again when a token has come
                self._token_due = time.monotonic() + 1.0 / self._rate
            if not free:
                return []
        if self._picker.fairness and self._picker.strict_for(free):
            return self._claim_strict(free)
        picks: dict[Priority, int] = {}
        if self._picker.fairness:  # strict priority needs no count: the claim's order is it
            # No pick takes more than ``free`` from a lane: counting further is waste.
            counts = engine.waiting(self._claimer, self._queue, free, [int(p) for p in Priority])
            for p in Priority:
                self._waiting[p] = counts.get(int(p), 0)
        for _ in range(free if self._picker.fairness else 0):
            lane = self._picker.pick()
            if lane is None:
                break
            picks[lane] = picks.get(lane, 0) + 1
            self._waiting[lane] -= 1
        if not picks:  # nothing due by the counts; a plain claim catches what just came
            picks = {Priority.HIGH: 0}
        timeout = None if self._job_timeout is None else self._job_timeout + self._lease
        claims: list[pg_engine.Claim] = []
        for lane, n in picks.items():
            claims += engine.claim(
                self._claimer,
                self._queue,
                self._process,
                n or free,
                timeout,
                None if n == 0 else int(lane),
            )
        if self._rate is not None:
            engine.refund_tokens(self._claimer, self._queue, free - len(claims), self._burst)
        claims.sort(key=lambda c: (-c.priority, c.ready_at, c.seq))
        return [self._attempt(c) for c in claims]

    def _claim_strict(self, free: int) -> list[Attempt]:
        """Claim ``free`` jobs when no lower lane can be owed within them: strict
        priority, with the lanes' counts read in the same statement, and the picks
        replayed on them, so that fairness counts exactly what it would have counted
        (one round trip where counting first takes two)."""
        engine = self._engine
        timeout = None if self._job_timeout is None else self._job_timeout + self._lease
        lanes = [int(p) for p in Priority]
        claims, counts = engine.claim_counting(
            self._claimer, self._queue, self._process, free, timeout, lanes
        )
        for p in Priority:
            self._waiting[p] = counts.get(int(p), 0)
        for _ in claims:
            lane = self._picker.pick()
            if lane is not None:
                self._waiting[lane] -= 1
        if self._rate is not None:
            engine.refund_tokens(self._claimer, self._queue, free - len(claims), self._burst)
        return [self._attempt(c) for c in claims]

    def _attempt(self, claim: pg_engine.Claim) -> Attempt:
        job = Job(
            claim.id,
            claim.payload,
            Priority(claim.priority),
            claim.idempotency_key,
            claim.max_retries,
            claim.run_at,
        )
        record = Record(
            job, claim.max_retries, Status.PROCESSING, claim.attempts, token=claim.token
        )
        return _SharedAttempt(job, claim.attempts, None, record, claim.token, self)

    def _worker(self) -> None:
        _current.queue = self
        while True:
            with self._mutex:
                while not self._buffer and not self._stopping:
                    self._work.wait()
                if not self._buffer:
                    self._live_workers -= 1
                    last = self._live_workers == 0
                    break
                attempt = self._buffer.popleft()
                now = time.monotonic()
                attempt._record.started = now
                if self._job_timeout is not None:
                    attempt.deadline = now + self._job_timeout
                self._in_flight[attempt] = attempt.deadline
                if attempt.deadline is not None:
                    self._wake.notify()  # the dispatcher times attempts out: a sooner wake-up
                self._counts[attempt.job.priority]["started"] += 1
            if not self._run_attempt(attempt):
                return  # timed out: a fresh worker took this one's place
        if last:
            self._leave()  # close(timeout) returned before this attempt ended

    def _run_attempt(self, attempt: Attempt) -> bool:
        """Run the handler, settle the attempt; False when it had timed out meanwhile."""
        _current.attempt = attempt
        error: BaseException | None = None
        try:
            self._handler(attempt.job)
        except BaseException as exc:  # SystemExit too: it must not take the worker along
            error = exc
        finally:
            _current.attempt = None
        with self._mutex:
            self._busy += time.monotonic() - (attempt._record.started or 0.0)
            if attempt.abandoned:
                return False
            attempt._record.token = 0  # settled: a timeout cannot take it now
        try:
            if isinstance(attempt, _SharedAttempt) and attempt.completed_on is not None:
                self._after_complete_in(attempt, error)
            elif error is None:
                self._complete(attempt)
            else:
                self._fail_attempt(attempt, failure_text(error), error)
        finally:
            with self._mutex:
                self._in_flight.pop(attempt, None)
                self._wake.notify()
        return True

    def _complete(self, attempt: Attempt) -> None:
        """Settle a success; those that end while one is on its way share the next one.

        One statement settles every completion waiting for it (the engine's COMPLETE
        takes arrays): at no-op speed four workers end together, and four settles
        become one round trip. Each worker still returns only once its own is done.
        """
        job = attempt.job
        mine: list[Any] = [job.id, attempt._token, None]
        with self._settle_lock:
            self._settle_queue.append(mine)
            while mine[2] is None and self._settling:
                self._settle_done.wait()
            if mine[2] is None:  # no settle on its way: this worker takes the line
                self._settling = True
                batch, self._settle_queue = self._settle_queue, []
        if mine[2] is None:
            held: set[str] = set()
            try:
                claims = [(e[0], e[1]) for e in batch]
                held = self._settle_claim(self._engine.complete, claims) or set()
            finally:
                with self._settle_lock:
                    for entry in batch:
                        entry[2] = entry[0] in held
                    self._settling = False
                    self._settle_done.notify_all()
        if mine[2]:
            with self._mutex:
                self._counts[job.priority]["completed"] += 1

    # -- exactly-once effects: the application's own transaction -----------------------

    def _check_connection(self, conn: psycopg.Connection[Any]) -> None:
        """``ValueError`` unless ``conn`` is an open, transactional connection that sees
        the queue's own tables; asked of the server once per connection."""
        import psycopg

        if not isinstance(conn, psycopg.Connection):
            raise TypeError(f"connection must be a psycopg Connection, got {type(conn).__name__}")
        if conn.closed:
            raise ValueError("connection is closed")
        # An autocommit connection inside ``with conn.transaction():`` has a transaction
        # open (psycopg sent BEGIN): that one the jobs can share.
        idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        if conn.autocommit and idle:
            raise ValueError(
                "connection is in autocommit mode outside any transaction: each statement"
                " would commit on its own, so the jobs could not share the application's"
                " transaction (open one with `with connection.transaction():`)"
            )
        if conn in self._seen_connections:
            return
        theirs = _on_callers(self._engine_where, conn)
        if theirs[0] is None:
            raise ValueError(
                "connection sees no queue tables: is it on the queue's database,"
                " with the queue's schema in its search_path?"
            )
        if theirs != self._where:  # the server may have restarted: ask again once
            self._where = self._call(self._engine_where)
        if theirs != self._where:
            raise ValueError(
                "connection sees other queue tables than this queue's: another server,"
                " database or search_path"
            )
        self._seen_connections[conn] = True

    @staticmethod
    def _engine_where(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
        from final import pg_engine

        return pg_engine.where_am_i(conn)

    def _complete_in(self, attempt: _SharedAttempt, conn: psycopg.Connection[Any]) -> None:
        """``Attempt.complete(connection)`` on this queue: see ``_SharedAttempt``."""
        from final import pg_engine

        self._check_connection(conn)
        job = attempt.job
        if attempt.abandoned:
            raise ClaimLost(job.id, f"job {job.id}: this attempt timed out; roll back")
        first = attempt.completed_on
        if first is not None and first is not conn and not _ended(first):
            # Its transaction holds the job's row locked: the statement below, on
            # another connection of this same thread, would wait for it for ever.
            raise RuntimeError(
                f"job {job.id}: complete() was called on another connection whose"
                " transaction is still open; complete on the connection that holds the"
                " effect, once"
            )
        pair = [(job.id, attempt._token)]
        if _on_callers(pg_engine.complete, conn, self._queue, pair):
            attempt.completed_on = conn
            return
        if first is conn and _on_callers(pg_engine.completed_here, conn, self._queue, job.id):
            return  # called twice in one transaction: the first one stands
        raise ClaimLost(
            job.id, f"job {job.id}: this attempt lost its claim (another has the job); roll back"
        )

    def _after_complete_in(self, attempt: _SharedAttempt, error: BaseException | None) -> None:
        """After a handler that called ``complete(connection)``: the job is what the
        database says. Its transaction committed: completed, and nothing more to do
        (an exception raised after the commit changes nothing). It rolled back: the
        attempt failed, and the job is retried as after any failure."""
        import psycopg

        conn, job = attempt.completed_on, attempt.job
        assert conn is not None
        if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            logger.warning(
                "job %s: the handler returned with the transaction of complete() still open;"
                " its commit or rollback decides the job, and this worker waits for it",
                job.id,
            )
        try:
            held = self._engine.held(self._claimer, self._queue, job.id, attempt._token)
        except psycopg.Error:
            held = True  # unknown: the fenced failure below retries until it knows
        if not held:
            if error is not None:
                logger.info("job %s: completed; the later %r changes nothing", job.id, error)
            with self._mutex:
                self._counts[job.priority]["completed"] += 1
            return
        reason = "the transaction of complete() did not commit"
        if error is not None:
            reason = f"{type(error).__name__}: {error}"
        self._fail_attempt(attempt, reason, error)

    def _fail_attempt(self, attempt: Attempt, reason: str, error: BaseException | None) -> None:
        job, number = attempt.job, attempt.number
        last = number > attempt._record.max_retries
        _log_failure(job.id, number, reason, error, last)
        if last:
            held = bool(self._settle_claim(self._engine.fail, job.id, attempt._token, reason))
            counter = "failed"
        else:
            delay = backoff_delay(number, self._backoff, self._max_backoff)
            held = bool(
                self._settle_claim(self._engine.retry, job.id, attempt._token, reason, delay)
            )
            counter = "retried"
            with self._mutex:
                heapq.heappush(self._due, time.monotonic() + delay)
        if held:
            with self._mutex:
                self._counts[job.priority][counter] += 1

    def _settle_claim(self, function: Any, *args: Any) -> Any:
        """A fenced move on the claim connection; falsy (logged) when the claim was lost.

        A move that fails with the connection is tried again on a new one until it
        goes through (or the handle has left): this process is alive, so no rescue
        would ever take the job back. A move is fenced, so trying it twice is safe;
        if the first try committed and only its answer was lost, the second finds
        the claim cleared and reports it moved on. A retry or dead letter whose row
        another transaction holds (a handler's ``complete()`` left open) fails at once
        (``NOWAIT``) and is tried again the same way, the connection free meanwhile.
        """
        import psycopg

        # complete and give_back take (id, token) pairs: the log names the ids only.
        jobs = args[0] if isinstance(args[0], str) else ", ".join(i for i, _ in args[0])
        pause = 0.05
        while True:
            try:
                held = function(self._claimer, self._queue, *args)
                break
            except psycopg.Error as error:
                logger.warning("could not settle job %s (%s); trying again", jobs, error)
                self._reopen_claimer()
                if self._left:
                    return False  # the rescue will, once this process's lease has passed
                time.sleep(pause)  # the server is away: nothing to wait on but time
                pause = min(self._lease / 3, pause * 2)
        if isinstance(held, set):  # a batch of (id, token) pairs: name the ones refused
            refused = ", ".join(i for i, _ in args[0] if i not in held)
        else:
            refused = "" if held else jobs
        if refused:
            logger.warning("job %s: the claim moved on; this attempt's result is ignored", refused)
        return held

    def _reopen_claimer(self) -> None:
        """A new claim connection if this one was lost and the server answers again."""
        with self._reopen_lock:
            if not (self._claimer.closed or self._claimer.broken) or self._left:
                return
            with contextlib.suppress(StoreError):  # still down: the next failure tries again
                self._claimer = self._connect(synchronous_commit="off", lock_timeout="5s")

    def _time_out_overdue(self) -> None:
        """Fail the attempts past ``job_timeout`` and replace their workers. Under the lock."""
        now = time.monotonic()
        for attempt, deadline in list(self._in_flight.items()):
            if deadline is None or deadline > now or attempt.abandoned:
                continue
            attempt._record.token = 0  # abandoned: its late end is ignored
            del self._in_flight[attempt]
            self._live_workers -= 1  # its thread is no longer one of the workers
            self._counts[attempt.job.priority]["timed_out"] += 1
            reason = f"timed out after {self._job_timeout}s"
            threading.Thread(
                target=self._fail_attempt, args=(attempt, reason, None), daemon=True
            ).start()
            if not self._stopping:
                self._live_workers += 1
                self._spawn(self._worker, "worker")

    def _give_back(self, attempts: list[Attempt]) -> None:
        pairs = [(a.job.id, a._token) for a in attempts]
        if pairs:
            self._settle_claim(self._engine.give_back, pairs)

    def _upkeeper(self) -> None:
        """Heartbeat every lease / 3; rescue lost attempts every lease / 2 (any process may)."""
        import psycopg

        last_rescue = 0.0
        while not self._left:  # heartbeats go on while the last attempts finish
            try:
                if not self._engine.heartbeat(self._upkeep, self._process):
                    logger.warning("this process was declared dead; its claims are fenced off")
                    self._process = self._engine.register(self._upkeep, self._queue, self._lease)
                now = time.monotonic()
                if now - last_rescue >= self._lease / 2:
                    last_rescue = now
                    for rescued in self._engine.rescue(self._upkeep, self._queue):
                        logger.warning(
                            "rescued job %s (%s): %s", rescued.id, rescued.reason, rescued.status
                        )
                    if self._retention is not None:  # a batch per commit: vacuum keeps up
                        self._engine.prune(self._upkeep, self._queue, self._retention)
                self._vacuum_if_off()
            except psycopg.Error as error:
                logger.warning("heartbeat failed (%s); reconnecting", error)
                if self._upkeep.closed or self._upkeep.broken:
                    with contextlib.suppress(StoreError):  # still down: the next round tries
                        self._upkeep = self._connect(synchronous_commit="off")
            with self._mutex:
                self._stopped.wait_for(lambda: self._left, min(self._lease / 3, 5.0))

    def _vacuum_if_off(self) -> None:
        """Vacuum the jobs table ourselves when the server's autovacuum will not.

        Every job leaves three or four dead row versions behind; with autovacuum off
        nothing reclaims them, and every claim's index scan walks over more of them
        each minute. So each upkeep round reads the table's dead rows, and past the
        trigger the table sets for autovacuum starts one ``VACUUM`` on a connection
        of its own (a thread: the heartbeats go on meanwhile). Vacuuming that often
        keeps each pass small. With autovacuum on, this is one cheap read a round.
        """
        global _told_vacuum_off
        due = self._engine.vacuum_due(self._upkeep)
        if due is None:
            return
        if not _told_vacuum_off:
            _told_vacuum_off = True
            logger.warning(
                "autovacuum is off on this PostgreSQL server (or for jobq_jobs): the"
                " queue's processes vacuum jobq_jobs themselves, a small pass whenever"
                " its dead rows pass a thousand plus a hundredth of its live ones; turn"
                " autovacuum on (ALTER SYSTEM SET autovacuum = on; SELECT"
                " pg_reload_conf()) and the server does it better"
            )
        if not due or self._stopping:
            return
        if self._vacuuming is not None:
            if self._vacuuming.is_alive():
                return  # one pass at a time
            self._threads.discard(self._vacuuming)
        self._vacuuming = self._spawn(self._vacuum, "vacuum")

    def _vacuum(self) -> None:
        import psycopg

        try:
            with self._connect(keep=False) as conn:
                self._engine.vacuum(conn)
        except (psycopg.Error, StoreError) as error:
            logger.warning("could not vacuum jobq_jobs (%s); the next round tries again", error)

    def _listener(self) -> None:
        """Wake the dispatcher at each NOTIFY; re-open the connection when it drops."""
        import psycopg

        conn: psycopg.Connection[Any] | None = self._listening
        while not self._stopping:
            try:
                if conn is None or conn.closed:
                    conn = self._connect()
                    self._engine.listen(conn, self._queue)
                for notice in conn.notifies(timeout=0.5, stop_after=1):
                    if (due := _seconds(notice.payload)) is not None:
                        self._note_due(due)  # jobs due later: wake then, not now
                        continue
                    with self._mutex:
                        self._hinted = True
                        self._wake.notify()
            except (psycopg.Error, StoreError) as error:
                if self._stopping:
                    return  # closed under us by close()
                logger.warning("listening connection dropped (%s); re-opening", error)
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(_POLL)  # polling carries on meanwhile


def _check_options(
    workers: int,
    queue_size: int,
    max_retries: int,
    backoff: float,
    max_backoff: float,
    job_timeout: float | None,
    fairness: int,
) -> None:
    """The in-process queue's rules, except that ``workers=0`` is a handle that runs nothing."""
    check_int("workers", workers, minimum=0)
    check_int("queue_size", queue_size, minimum=1)
    check_int("max_retries", max_retries, minimum=0)
    check_seconds("backoff", backoff)
    check_seconds("max_backoff", max_backoff)
    if max_backoff < backoff:
        raise ValueError(f"max_backoff ({max_backoff!r}) must be >= backoff ({backoff!r})")
    if job_timeout is not None:
        check_seconds("job_timeout", job_timeout, positive=True)
    check_int("fairness", fairness, minimum=0)


def _check_target(dsn: object, path: object, store: object) -> str:
    """Return ``dsn``; raise ``ValueError`` unless it is a non-empty string and no
    ``path`` or ``store`` is named too."""
    if not isinstance(dsn, str) or not dsn:
        raise ValueError(f"dsn must be a PostgreSQL connection URI, got {dsn!r}")
    if path is not None or store is not None:
        raise ValueError("give a dsn or a path (or store), not both: they are two queues")
    return dsn


def _check_shared(
    queue: str,
    rate_limit: float | None,
    lease: float,
    retention: float | None,
    executor: str = "thread",
    handler: object = None,
) -> None:
    _check_executor(executor, handler)
    if not isinstance(queue, str) or not queue:
        raise ValueError(f"queue must be a non-empty name, got {queue!r}")
    if rate_limit is not None:
        check_seconds("rate_limit", rate_limit, positive=True)
    check_seconds("lease", lease, positive=True)
    if retention is not None:
        check_seconds("retention", retention)


def _seconds(payload: str) -> float | None:
    """The seconds a wake-up's payload says its jobs are due in; None: due now."""
    try:
        return float(payload) if payload else None
    except ValueError:  # not ours (someone else's NOTIFY on the channel): a hint
        return None


def _handle_counts(counts: dict[str, int]) -> dict[str, int]:
    """This handle's counters (a copy)."""
    return dict(counts)


@dataclass(slots=True, eq=False)
class _SharedAttempt(Attempt):
    """An attempt of a ``SharedQueue``, which can complete in the handler's transaction."""

    _owner: SharedQueue = field(repr=False)
    completed_on: psycopg.Connection[Any] | None = None  # set by complete(connection)

    def complete(self, connection: psycopg.Connection[Any]) -> None:
        """Record the job's completion in the handler's open transaction on ``connection``.

        ``connection``: a psycopg connection to the queue's database, with a
        transaction open or to open (see ``enqueue_many``). The job becomes
        ``COMPLETED`` when that transaction commits, together with what else it
        wrote, and not before; the handler's return (or exception) after
        the commit changes nothing more. If the transaction rolls back, or the process
        dies before its commit, the attempt did not complete: the job is retried.

        The statement is fenced by this attempt's claim and locks the job's row until
        the commit, so no rescue can take the job meanwhile. Raises ``ClaimLost`` when
        the claim has moved on (the lease passed and another process took the job, or
        ``job_timeout`` abandoned this attempt): roll the transaction back, its effects
        must not commit. ``ValueError`` for a connection in autocommit mode outside a
        ``with connection.transaction():`` block, closed, or seeing other tables than
        the queue's. Called again in the same transaction, it does nothing; called on
        another connection while the first one's transaction is open, it raises
        ``RuntimeError`` (it would wait for that transaction's lock for ever).

        End the transaction before the handler returns. While it is open the job's row
        stays locked, and the move of this attempt the queue makes on its own (the
        retry or dead letter after ``job_timeout``, or after a handler that returned
        with the transaction still open) cannot happen: it is refused at once (the row
        is locked ``NOWAIT``) and tried again after a pause that doubles up to a third
        of ``lease``, until the transaction ends. The thread that settles it (the
        worker, or the one that timed it out) waits meanwhile; the connection the other
        workers claim and settle on does not. ``cancel()`` and the lookups do not wait
        either: the cancel skips the locked row, the lookups only read.
        """
        self._owner._complete_in(self, connection)


def _ended(conn: psycopg.Connection[Any]) -> bool:
    """Whether ``conn`` has no transaction open (or is closed)."""
    import psycopg

    return conn.closed or conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def _on_callers(function: Any, conn: psycopg.Connection[Any], *args: Any) -> Any:
    """Run an engine function on the application's connection: a lost server is a
    ``StoreError``, as on the queue's own; every other error is the caller's to see."""
    import psycopg

    try:
        return function(conn, *args)
    except psycopg.OperationalError as error:
        if not (conn.broken or conn.closed):
            raise  # a lock timeout, a cancelled statement: the connection still stands
        raise StoreError(f"PostgreSQL connection lost mid-call: {error}") from error


class _Count:
    """A lane as ``FairPicker`` sees it: the number of its jobs due in the database."""

    def __init__(self, waiting: dict[Priority, int], p: Priority) -> None:
        self._waiting, self._p = waiting, p

    def __len__(self) -> int:
        return max(0, self._waiting[self._p])


def _info(stored: pg_engine.StoredJob) -> JobInfo:
    return JobInfo(
        stored.id,
        Priority(stored.priority),
        _STATUS[stored.status],
        stored.attempts,
        stored.max_retries,
        stored.last_error,
        stored.idempotency_key,
        stored.enqueued_at.timestamp(),
        None if stored.started_at is None else stored.started_at.timestamp(),
        None if stored.finished_at is None else stored.finished_at.timestamp(),
        None if stored.run_at is None else stored.run_at.timestamp(),
    )


def _check_no_nul(job: Job) -> None:
    """PostgreSQL's text cannot hold a NUL, which a file can: refused by name, here,
    rather than by the database in the middle of an insert."""
    for name, value in (("Job.id", job.id), ("Job.idempotency_key", job.idempotency_key)):
        if value is not None and "\x00" in value:
            raise ValueError(f"{name} must not contain NUL (\\x00) in PostgreSQL")


def _job(stored: pg_engine.StoredJob) -> Job:
    return Job(
        stored.id,
        stored.payload,
        Priority(stored.priority),
        stored.idempotency_key,
        stored.max_retries,
        stored.run_at,
    )


JobQueue._shared = SharedQueue
