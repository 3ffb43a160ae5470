"""The final tier: fairness, status by id, dead letters, idempotency, crash recovery.

It keeps everything the improved tier fixed (lessons 1 to 6: backpressure, priority,
retries with backoff, timeouts, graceful shutdown, metrics) and fixes what improved
still got wrong:

7. Starvation. Strict priority, except that after ``fairness`` picks in a row from
   higher lanes while a lower lane waits, the lower lane's oldest job goes next
   (see ``final/fairness.py`` for the exact bound and why a count of picks).
8. Status and dead letters. ``status(job_id)`` and ``info(job_id)`` follow a job by
   its id. A job that fails for good is ``FAILED`` and waits in ``dead_letters()``
   (``dead_letter_info()`` for their ``info``) until ``retry_dead(job_id)`` replays
   it with a fresh retry budget. A job may wait for its ``run_at`` (``SCHEDULED``:
   it holds no worker and no lane room meanwhile), and ``cancel(job_id)`` calls off
   a job that has not started (``CANCELLED``).
9. Idempotency. A job may carry an ``idempotency_key``; enqueueing a second job with
   a key already used raises ``DuplicateJob``, which names the first job's id. A job
   may also carry its own ``max_retries``.
10. Crashes. With a ``path``, every accepted job is in SQLite before ``enqueue``
    returns (``final/sqlite_store.py``), and a new queue on the same path runs every
    job that had not settled, with its attempts, backoff, dead letters and keys:
    at-least-once delivery. Attempts are counted on disk before the handler runs,
    so a handler that kills the process ends in the dead letters after
    ``max_retries + 1`` tries. Without a ``path`` the ``MemoryStore`` keeps nothing,
    as in the improved tier. ``close(timeout)`` leaves what it did not run on disk.
    The queue tells its store every step of a job's life, and asks it one question,
    whether it is ``durable`` (``final/store.py``); ``store=`` gives it one of your own.

It also adds what a service needs around those fixes:

11. Rate limiting, batches, and metrics to run it by. ``rate_limit`` (attempts
    started per second, a token bucket: see ``final/rate_limit.py``),
    ``enqueue_many``, and metrics per priority with queue-wait percentiles and
    worker utilisation.
12. Bounded memory. The queue remembers ``history`` settled jobs (100,000 by
    default), letting go of the oldest in batches once it holds a sixteenth more.
    Without a ``path``, ``status`` of a job it has let go of is ``None``, and its
    idempotency key may be used again; a dead letter let go of this way is logged at
    WARNING. Jobs not yet settled are never let go of. The file is bounded too: a
    completed job is deleted ``retention`` seconds after it completed (7 days;
    ``None`` keeps every job), and its key may then be used again, once memory has
    let go of it as well. Dead letters stay until they are replayed.
13. Throughput, with more to do per job. A job here costs more than in improved (a
    record, a key, a place in the history, a store to tell), so besides improved's
    one hold of the lock per job and notifies paid only for a waiter: a full lane
    wakes its producers once half of it is free (``_refill``), so that each wake-up
    brings a batch, one commit on disk; and an attempt is known by a token in the
    job's record, 0 once it has timed out, so the running set holds the records
    that ``status`` reads too.
14. A package of modules, one idea each. What improved keeps in one file, final
    splits: the job as data (``final/jobs.py``), the exceptions (``final/errors.py``),
    the rules for every value (``final/validation.py``), fairness, the rate limit,
    the store's contract (``final/store.py``) and the store on disk
    (``final/sqlite_store.py``, ``final/group_commit.py``, ``final/journal.py``).
    Imports go one way, down, with no cycle (``make lint`` checks it); this module
    is the queue alone.

What it still gets wrong, or leaves to you:

15. At least once, never exactly once. A job can run again after a crash or a
    timeout, so handlers must be idempotent.
16. One process. Several machines need a shared database and a claim protocol
    between them: ``JobQueue(dsn=...)`` is that queue, a class of its own built on
    this one's pieces (``final/shared_queue.py`` says why not behind the store).
"""

from __future__ import annotations

import atexit
import heapq
import itertools
import logging
import math
import os
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from final.errors import DuplicateJob, NotADeadLetter, QueueClosed, QueueFull, UnknownJob
from final.fairness import FairPicker
from final.jobs import Job, JobInfo, Priority, Record, Status, failure_text
from final.periodic import Schedules
from final.processes import ProcessPool, check_importable
from final.rate_limit import TokenBucket
from final.sqlite_store import RETENTION, SQLiteStore
from final.store import DuplicateRow, MemoryStore, Store, StoreError
from final.validation import check_int, check_job, check_seconds, check_timeout

__all__ = [
    "Attempt",
    "DuplicateJob",
    "Job",
    "JobInfo",
    "JobQueue",
    "LaneMetrics",
    "Metrics",
    "Priority",
    "QueueClosed",
    "QueueFull",
    "Status",
    "StoreError",  # raised to users: a path that is not a queue, a full disk
    "backoff_delay",
    "current_attempt",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LaneMetrics:
    """One priority's share of the counters and gauges."""

    submitted: int
    started: int
    completed: int
    failed: int
    retried: int
    timed_out: int
    lost: int
    queued: int
    retrying: int
    in_flight: int
    scheduled: int = 0  # gauge: jobs waiting for their run_at
    cancelled: int = 0  # jobs called off by cancel() before they started


@dataclass(frozen=True, slots=True)
class Metrics:
    """A consistent snapshot: when the queue is idle,
    submitted == completed + failed + lost + cancelled.

    With a ``path``, jobs that ``close(timeout)`` leaves on disk are none of these:
    they are the next start's ``submitted``.
    """

    submitted: int  # accepted by enqueue, recovered at start, and replayed from the dead
    started: int  # attempts begun
    completed: int  # jobs that succeeded
    failed: int  # jobs that failed for good (went to the dead letters)
    retried: int  # retries scheduled
    timed_out: int  # attempts that ran past job_timeout
    lost: int  # accepted jobs that close(timeout) left unrun
    queued: int  # gauge: jobs waiting in the lanes
    retrying: int  # gauge: jobs waiting out a backoff
    in_flight: int  # gauge: attempts running (abandoned ones excluded)
    abandoned: int  # gauge: threads still running an attempt that timed out
    dead: int  # gauge: jobs in the dead letters
    by_priority: Mapping[Priority, LaneMetrics]
    wait_p50: float | None  # seconds from entering a lane to starting, recent attempts
    wait_p99: float | None
    utilization: float  # share of worker time spent in handlers since the queue began
    scheduled: int = 0  # gauge: jobs waiting for their run_at
    cancelled: int = 0  # jobs called off by cancel() before they started (settled)


@dataclass(slots=True, eq=False)
class Attempt:
    """One run of the handler on one job; ``current_attempt()`` returns it to the handler."""

    job: Job
    number: int  # 1 for the first attempt, 2 for the first retry, ...
    deadline: float | None  # time.monotonic() after which the attempt has timed out
    _record: Record
    _token: int  # the record's token while this attempt is the one running

    @property
    def expired(self) -> bool:
        """True once the deadline has passed: a cooperative handler stops here."""
        return self.deadline is not None and time.monotonic() >= self.deadline

    def time_left(self) -> float | None:
        """Seconds until the deadline (0 once past it), or None when there is no timeout."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    @property
    def abandoned(self) -> bool:
        """True once the queue has timed this attempt out and moved on without it."""
        return self._record.token != self._token

    def complete(self, connection: Any) -> None:
        """Record the job's completion in the handler's open transaction on ``connection``.

        Only a queue on PostgreSQL (``dsn``) has a transaction to join; here it is a
        ``ValueError``. See ``SharedQueue`` for what it does there.
        """
        raise ValueError(
            "complete(connection) needs a queue with dsn: only a queue in PostgreSQL"
            " can complete a job in the application's own transaction"
        )


_current = threading.local()


def _refuse_from_handler(queue: object, method: str) -> None:
    """Raise ``RuntimeError`` when a handler of ``queue`` calls ``method`` (join, close).

    Waiting for the queue to settle from one of its handlers waits for the handler's
    own job: the worker never returns, and neither does the exit hook that closes the
    queue. The mark is on the thread (see ``_worker``), not in ``_threads``, so that a
    thread whose attempt timed out, and that left ``_threads``, is refused too.
    """
    if getattr(_current, "queue", None) is queue:
        raise RuntimeError(f"{method}() from a handler would wait for its own job")


def _no_connection(connection: object) -> None:
    if connection is not None:
        raise ValueError(
            "connection needs dsn: only a queue in PostgreSQL can enqueue in the"
            " application's own transaction"
        )


def current_attempt() -> Attempt:
    """The attempt the calling handler is running; ``RuntimeError`` outside a handler."""
    attempt: Attempt | None = getattr(_current, "attempt", None)
    if attempt is None:
        raise RuntimeError("current_attempt() is only meaningful inside a handler")
    return attempt


def _check_executor(executor: object, handler: object) -> None:
    """``ValueError`` for an executor that is neither ``"thread"`` nor ``"process"``;
    ``TypeError`` for a handler that cannot travel to a child by its name."""
    if executor not in ("thread", "process"):
        raise ValueError(f"executor must be 'thread' or 'process', got {executor!r}")
    if executor == "process":
        check_importable(handler)


class _ChildAttempt(Attempt):
    """An attempt as a child process sees it: no claim of its own to complete with."""

    __slots__ = ()

    def complete(self, connection: Any) -> None:
        """Not in a child: its claim is the parent's. ``RuntimeError``, always."""
        raise RuntimeError(
            "complete(connection) is not available with executor='process': the claim"
            " it is fenced by belongs to the parent process; run this handler with"
            " executor='thread'"
        )


def _attempt_in_child(handler: Handler, job: Job, number: int, deadline: float | None) -> None:
    """Run ``handler(job)`` in a child process, with ``current_attempt()`` answering.

    ``deadline`` is ``time.monotonic()`` in the parent, and means the same here: the
    monotonic clock is the system's, shared by every process (Linux, macOS, Windows).
    The attempt is never ``abandoned`` here: a timed-out attempt's child is killed.
    """
    _current.attempt = _ChildAttempt(job, number, deadline, Record(job, 0), 0)
    try:
        handler(job)
    finally:
        _current.attempt = None


def _in_a_child(pool: ProcessPool) -> Handler:
    """The handler a worker thread calls: the attempt runs in one of ``pool``'s children,
    and what it raised (or ``ChildDied``, or ``TimeoutError``) is raised here."""

    def run_in_a_child(job: Job) -> None:
        attempt = current_attempt()
        pool.run((job, attempt.number, attempt.deadline), attempt.deadline)

    return run_in_a_child


def backoff_delay(
    retry: int, backoff: float, max_backoff: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before retry number ``retry`` (1 for the first retry).

    The ceiling is ``min(max_backoff, backoff * 2**(retry-1))``, and the delay is
    drawn uniformly from its upper half ("equal jitter"). Why not full jitter,
    uniform over the whole [0, ceiling]? Full jitter spreads a herd of retries a
    little better, but it may retry almost at once, which is exactly what a failing
    service does not need. Equal jitter keeps at least half of the promised rest
    and still spreads jobs that failed together over the other half.
    """
    ceiling = min(max_backoff, backoff * 2.0 ** min(retry - 1, 64))
    return ceiling / 2 + rand() * ceiling / 2


# The late end of an attempt that timed out: its one record was the timeout's.
_LATE = "job %s attempt %d ended after it had timed out; its result (%r) is ignored"


def _log_failure(
    job_id: str, number: int, reason: str, error: BaseException | None, last: bool
) -> None:
    """Log the one record of a failed attempt, timed out or raised.

    An attempt that leaves the job a retry is one WARNING line without a traceback:
    a failing dependency fails every attempt of every job, and a traceback each
    buried the one that matters. The attempt that ends the job for good is an ERROR
    that names the job, its attempts and the error, with its traceback if it raised.
    Called under the queue's lock, so that the record is out before ``join()``
    returns; a logging handler must therefore not call back into the queue.
    """
    if last:
        attempts = "1 attempt" if number == 1 else f"{number} attempts"
        logger.error(
            "job %s failed for good after %s: %s", job_id, attempts, reason, exc_info=error
        )
    else:
        logger.warning("job %s attempt %d failed: %s", job_id, number, reason)


Handler = Callable[[Job], object]
_T = TypeVar("_T")
# An entry of the scheduler's heap, of the jobs waiting for a time: retries waiting
# out a backoff (RETRYING) and jobs waiting for their run_at (SCHEDULED). Neither
# holds lane room nor a worker; the scheduler moves each into its lane when due.
_Retry = tuple[float, int, Record]  # (due, tie-breaker, record)
# The statuses of the heap's jobs. How many of each wait there, by lane, are the
# gauges, kept as they change: metrics() must not walk a heap of many scheduled jobs.
_TIMED = (Status.RETRYING, Status.SCHEDULED)
_COUNTERS = (
    "submitted",
    "started",
    "completed",
    "failed",
    "retried",
    "timed_out",
    "lost",
    "cancelled",
)
_WAIT_WINDOW = 1000  # attempts the wait percentiles are computed over
_MAX_SLEEP = 3600.0  # seconds the scheduler sleeps at most before it looks again


class JobQueue:
    """Run ``handler(job)`` on ``workers`` threads for every job given to ``enqueue``.

    The handler succeeds when it returns and fails when it raises an ``Exception``.
    With ``executor="process"`` it runs in ``workers`` child processes instead, for
    handlers that compute in Python (``final/processes.py``: what travels, what it
    costs, why the ``forkserver`` start method); it must then be importable by its
    module and name, or the constructor raises a ``TypeError`` that says what to do.
    With ``dsn``, the queue lives in PostgreSQL and is shared by every process that
    names the same database and ``queue``: see ``final/shared_queue.py``.
    """

    # The class JobQueue(dsn=...) builds: set by final/shared_queue.py, which final's
    # package imports. A hook rather than an import, because the shared queue is built
    # on this module's pieces, and imports go one way, down.
    _shared: type[JobQueue] | None = None
    # The schedules of periodic(), made at the first: most queues have none.
    _schedules: Schedules | None = None

    def __new__(cls, handler: Handler, **options: object) -> JobQueue:
        if options.get("dsn") is not None and cls is JobQueue:
            if JobQueue._shared is None:  # pragma: no cover - final's package sets it
                raise RuntimeError("import final, not final.job_queue alone, to use a dsn")
            return object.__new__(JobQueue._shared)
        return object.__new__(cls)

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
        """``retention``: seconds a completed job stays in the file at ``path`` after it
        completed (7 days; None keeps every job); dead letters stay until replayed.

        ``store``: a store of your own (see ``final/store.py``) instead of the one ``path``
        opens, or the ``MemoryStore``; tests use it for a failing or slow one. Not with a
        ``path``, and ``durability`` and ``retention`` are then the store's own business.
        The queue closes it in ``close()``. ``dsn``, ``queue`` and ``lease``: the queue in
        PostgreSQL (``final/shared_queue.py``); ``queue`` and ``lease`` need a ``dsn``."""
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {type(handler).__name__}")
        check_int("workers", workers, minimum=1)
        check_int("queue_size", queue_size, minimum=1)
        check_int("max_retries", max_retries, minimum=0)
        check_seconds("backoff", backoff)
        check_seconds("max_backoff", max_backoff)
        if max_backoff < backoff:
            raise ValueError(f"max_backoff ({max_backoff!r}) must be >= backoff ({backoff!r})")
        if job_timeout is not None:
            check_seconds("job_timeout", job_timeout, positive=True)
        _check_final_options(fairness, rate_limit, history, retention, executor, handler)
        self._handler, self._executor = handler, executor
        self._workers = workers
        self._queue_size = queue_size
        self._max_retries = max_retries
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._job_timeout = job_timeout
        self._history_size = history
        self._let_go_at = history + history // 16
        self._store = _open_store(path, durability, retention, store)
        self._durable = self._store.durable  # asked once: the hot path reads it
        self._init_state(fairness, rate_limit)
        try:
            self._recover()
            self._start_threads()
        except BaseException:
            self._undo_start()
            raise

    def _init_state(self, fairness: int, rate_limit: float | None) -> None:
        """The lock, its conditions, and what they guard. Runs before any thread."""
        self._init_conditions()
        # What the lock guards:
        self._lanes = {p: deque[Record]() for p in Priority}  # highest first
        self._reserved = dict.fromkeys(Priority, 0)  # room taken by enqueues being stored
        # Threads waiting on _not_empty and on each _lane_not_full. A notify is Python
        # code even when nobody waits, and the hot path would pay for it on every job.
        self._idle = 0
        self._blocked = dict.fromkeys(Priority, 0)
        # A full lane wakes its producers once half of it is free, not at every job
        # taken: each wake-up of a producer costs a commit on disk (and a thread
        # switch in memory), so producers refill a lane in batches, and the half
        # still queued keeps the workers busy while the refill is being stored.
        self._refill = max(1, self._queue_size // 2)
        self._picker = FairPicker(fairness, self._lanes)
        now = time.monotonic()
        self._bucket = None if rate_limit is None else TokenBucket(rate_limit, now)
        self._retries: list[_Retry] = []  # a heap, soonest first: see _Retry
        self._timed = {s: dict.fromkeys(Priority, 0) for s in _TIMED}  # see _TIMED
        self._running: set[Record] = set()  # jobs with an attempt running
        self._tokens = itertools.count(1)  # one per attempt; 0 means "timed out"
        self._records: dict[str, Record] = {}  # every job we remember, by id
        # The settled ones, oldest first: a replayed job settles again later, and its
        # old entry is then recognised by its settle number and skipped (_let_go).
        self._settled: deque[Record] = deque()
        self._settle_numbers = itertools.count(1)
        self._oldest = 1  # the settle number of _settled[0]
        self._dead: dict[str, Record] = {}  # the dead letters, a subset of the history
        self._keys: dict[str, str] = {}  # idempotency key -> job id, for what we remember
        self._next_wake = math.inf  # when the scheduler means to wake next
        self._seq = 0
        self._unsettled = 0  # accepted and not yet settled
        self._closing = False  # close() has begun: enqueue refuses
        self._close_store_when_idle = False  # close(timeout) left attempts running
        self._stopping = False  # workers and scheduler leave; what is left is lost (or on disk)
        self._counts = {p: dict.fromkeys(_COUNTERS, 0) for p in Priority}
        self._waits: deque[float] = deque(maxlen=_WAIT_WINDOW)
        self._busy = 0.0  # seconds of handler time in finished attempts
        self._began = now
        self._abandoned = 0
        self._live_workers = 0  # worker threads not running an abandoned attempt
        self._threads: set[threading.Thread] = set()  # what close() joins
        self._thread_names = itertools.count()
        self._forked = False  # this is the child of an os.fork(): see _after_fork
        self._pool: ProcessPool | None = None  # executor="process": the children

    def _init_conditions(self) -> None:
        """The lock, and the conditions built on it, with who waits on each."""
        # One lock guards all of the queue's state; every condition is built on it.
        self._mutex = threading.Lock()
        # Notified when a job enters a lane (enqueue, a retry falling due, a replay)
        # and at stop; idle workers wait on it (with a timeout, for a rate limit token).
        self._not_empty = threading.Condition(self._mutex)
        # One per lane, notified (all waiters) when workers have made room for a
        # refill in that lane (see _refill), when a store refuses reserved jobs, and
        # at close; producers blocked on that lane wait on it. Per lane, because
        # room in the LOW lane must not wake a HIGH producer for nothing.
        self._lane_not_full = {p: threading.Condition(self._mutex) for p in Priority}
        # Notified when the last accepted job settles; join() and close() wait on it.
        self._all_settled = threading.Condition(self._mutex)
        # Notified when the scheduler's next wake-up moves earlier (a retry or a
        # deadline sooner than the one it sleeps towards) and at stop; the
        # scheduler thread waits on it.
        self._timer_changed = threading.Condition(self._mutex)

    def _start_pool(self) -> None:
        """``executor="process"``: start the children, and hand attempts to them."""
        if self._executor == "process":
            self._pool = ProcessPool(self._handler, self._workers, _attempt_in_child)
            self._handler = _in_a_child(self._pool)

    def _start_threads(self) -> None:
        """The workers, the scheduler, and a hook that closes the queue at exit."""
        self._start_pool()
        # Daemon threads, so that a hung handler cannot hold up interpreter exit;
        # the atexit hook below is what lets queued work finish first.
        for _ in range(self._workers):
            self._start_worker()
        scheduler = threading.Thread(
            target=self._scheduler, name=f"{__package__}-scheduler", daemon=True
        )
        self._threads.add(scheduler)
        scheduler.start()
        # atexit runs before the interpreter stops daemon threads, so a queue that
        # was never closed drains at exit instead of dying mid-job (naive's lesson 5).
        # A weak reference, so that the hook does not keep the queue alive.
        ref = weakref.ref(self)

        def close_at_exit() -> None:
            if (queue := ref()) is not None:
                queue.close()

        self._atexit_hook = close_at_exit
        atexit.register(close_at_exit)
        _queues.add(self)  # see _after_fork

    def _undo_start(self) -> None:
        """A constructor that fails leaves nothing running and nothing locked: nobody
        could close a queue they never got."""
        with self._mutex:
            self._stop()
        for thread in self._threads:
            if thread.is_alive():  # a thread whose start failed was never alive
                thread.join()
        if self._pool is not None:
            self._pool.close()
        self._store.close()

    # -- the contract ------------------------------------------------------------------

    def enqueue(self, job: Job, timeout: float | None = None, *, connection: Any = None) -> None:
        """Accept ``job`` into its priority's lane.

        Blocks while the lane is full. Raises ``QueueFull`` if it is still full after
        ``timeout`` seconds (``0``: do not wait; ``None``: wait as long as it takes),
        ``DuplicateJob`` if its idempotency key or its id was used by a job the queue
        remembers, ``QueueClosed`` once ``close()`` has begun (a blocked producer is
        woken to raise it), and ``TypeError`` or ``ValueError`` for a malformed job.
        ``connection`` (the application's transaction) needs a ``dsn``: a ``ValueError`` here.
        """
        _no_connection(connection)
        if self._forked:
            raise _forked()
        check_job(job)
        check_timeout(timeout)
        record = self._record(job)  # built before the lock, to keep the lock short
        with self._mutex:
            self._admit(record, timeout)
            if not self._durable:
                self._publish(record)  # nothing to store: accepted at once
                return
            self._reserved[job.priority] += 1  # room held while the store writes
        self._store_and_publish([record])

    def enqueue_many(
        self, jobs: Iterable[Job], timeout: float | None = None, *, connection: Any = None
    ) -> None:
        """Accept ``jobs`` in order, as ``enqueue`` would, storing them together.

        ``timeout`` applies to each job's wait for room. Every job is checked before
        any is accepted. If a job cannot be accepted (``QueueFull``, ``DuplicateJob``,
        ``QueueClosed``, or with a ``path`` a ``StoreError`` such as a full disk), the
        jobs before it stay accepted, and the exception's ``accepted`` says how many
        they are. On disk, a batch is one commit, or one per half lane when it is
        larger than that: a failed commit takes all of its jobs with it. ``connection``:
        see ``enqueue``."""
        _no_connection(connection)
        if self._forked:
            raise _forked()
        jobs = list(jobs)
        for job in jobs:
            check_job(job)
        check_timeout(timeout)
        records = [self._record(job) for job in jobs]  # built before the lock
        accepted = 0
        while accepted < len(records):
            # Admit as many as fit without waiting; wait only when nothing admitted is
            # pending, or a batch larger than a lane would wait on its own reservations.
            batch: list[Record] = []
            error: QueueFull | QueueClosed | DuplicateJob | None = None
            with self._mutex:
                # Each chunk is one commit on disk: the first job waits for room for
                # a refill's worth, rather than chase the workers a few jobs at a time.
                room_for = min(len(records) - accepted, self._refill)
                for record in records[accepted:]:
                    try:
                        self._admit(
                            record, timeout if not batch else 0, room_for if not batch else 1
                        )
                    except QueueFull as exc:
                        if not batch:
                            error = exc
                        break
                    except (QueueClosed, DuplicateJob) as exc:
                        error = exc
                        break
                    if self._durable:
                        self._reserved[record.job.priority] += 1
                    else:
                        self._publish(record)
                    batch.append(record)
            if batch and self._durable:
                try:
                    self._store_and_publish(batch)
                except DuplicateJob as exc:
                    exc.accepted += accepted
                    raise
                except (StoreError, QueueClosed) as exc:  # this chunk's commit failed
                    exc.accepted = accepted
                    raise
            accepted += len(batch)
            if error is not None:
                error.accepted = accepted
                raise error

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every accepted job has settled; ``False`` if ``timeout`` passed first.

        Calling it from a handler is a ``RuntimeError``: it would wait for its own job.
        """
        if self._forked:
            raise _forked()
        _refuse_from_handler(self, "join")
        with self._mutex:
            return self._all_settled.wait_for(lambda: self._unsettled == 0, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting jobs, run the ones accepted, and return.

        Without ``timeout``, returns once every accepted job has settled (retries
        included) and every thread of the queue but the abandoned ones has ended.
        With ``timeout``, returns when it passes: jobs not yet started are counted as
        ``lost``, or with a ``path`` stay on disk for the next start; attempts that
        have started are never abandoned, and settle on their own threads (the file
        stays locked until they have). Safe to call twice, and a second call without
        ``timeout`` waits for all of that; calling it from a handler is a
        ``RuntimeError`` (it would wait for itself).
        """
        if self._forked:
            return  # the parent's to close: see _after_fork
        _refuse_from_handler(self, "close")
        endtime = None if timeout is None else time.monotonic() + timeout
        self._periodic_schedules().close(timeout)  # before the queue refuses their enqueues
        with self._mutex:
            self._closing = True
            self._leave_scheduled()
            for not_full in self._lane_not_full.values():
                not_full.notify_all()
            # Enqueues still being written to disk hold reservations: wait for them too.
            self._all_settled.wait_for(
                lambda: self._unsettled == 0 and not any(self._reserved.values()),
                None if endtime is None else max(0.0, endtime - time.monotonic()),
            )
            if not self._stopping:
                self._stop()
            threads = list(self._threads)
        atexit.unregister(self._atexit_hook)
        for thread in threads:
            thread.join(None if endtime is None else max(0.0, endtime - time.monotonic()))
        if self._pool is not None:  # busy children leave once their attempt ends
            self._pool.close()
        with self._mutex:
            # Attempts still running will settle on their own threads; the store (and
            # the lock on its file) must outlive them, or a second queue could open
            # the file and run the same jobs at the same time. The last of them closes
            # it (see _take_locked). A thread that runs no attempt is only on its way
            # out: waiting for it is not waiting for the timeout, and the file must be
            # free once close() returns with nothing running.
            hand_off = self._close_store_when_idle = bool(self._running)
        if not hand_off:
            for thread in threads:
                thread.join()
            self._store.close()

    def metrics(self) -> Metrics:
        """A snapshot of the counters and gauges, all read under one lock."""
        if self._forked:
            raise _forked()
        with self._mutex:
            now = time.monotonic()
            lanes: dict[Priority, LaneMetrics] = {}
            for p, lane in self._lanes.items():
                lanes[p] = LaneMetrics(
                    **self._counts[p],
                    queued=len(lane),
                    retrying=self._timed[Status.RETRYING][p],
                    in_flight=sum(1 for r in self._running if r.job.priority is p),
                    scheduled=self._timed[Status.SCHEDULED][p],
                )
            waits = list(self._waits)
            busy = self._busy + sum(now - (r.started or now) for r in self._running)
            elapsed = (now - self._began) * self._workers
            abandoned, dead = self._abandoned, len(self._dead)
        waits.sort()
        totals = {name: sum(getattr(m, name) for m in lanes.values()) for name in _COUNTERS}
        return Metrics(
            **totals,
            queued=sum(m.queued for m in lanes.values()),
            retrying=sum(m.retrying for m in lanes.values()),
            in_flight=sum(m.in_flight for m in lanes.values()),
            scheduled=sum(m.scheduled for m in lanes.values()),
            abandoned=abandoned,
            dead=dead,
            by_priority=lanes,
            wait_p50=_percentile(waits, 0.50),
            wait_p99=_percentile(waits, 0.99),
            utilization=min(1.0, busy / elapsed) if elapsed > 0 else 0.0,
        )

    def status(self, job_id: str) -> Status | None:
        """Where the job is now; ``None`` for an id this queue never saw (or let go of)."""
        info = self.info(job_id)
        return None if info is None else info.status

    def info(self, job_id: str) -> JobInfo | None:
        """Status, attempts, last error and times of a job; ``None`` if unknown."""
        if self._forked:
            raise _forked()
        with self._mutex:
            record = self._records.get(job_id)
            if record is not None:
                return record.info()
        record = self._store.find(job_id)
        return None if record is None else record.info()

    def dead_letters(self) -> list[Job]:
        """The jobs that failed for good, oldest first; ``info(id).last_error`` says why.

        With a ``path`` this includes dead jobs that memory has let go of.
        """
        return self._dead_letters(lambda record: record.job)

    def dead_letter_info(self) -> list[JobInfo]:
        """What ``info`` says of each job in the dead letters, oldest first, from one
        read of the store for them all (``info`` per job would read it once each)."""
        return self._dead_letters(Record.info)

    def _dead_letters(self, view: Callable[[Record], _T]) -> list[_T]:
        """``view`` of each dead letter, taken under the lock, oldest first."""
        if self._forked:
            raise _forked()
        on_disk = self._store.dead()  # one read, outside the lock
        with self._mutex:
            # What memory knows of a job is newer than what the disk says; a dead job
            # only the disk knows, memory let go of: it is older than those it holds.
            dead = [view(r) for r in on_disk if r.job.id not in self._records]
            dead += [view(record) for record in self._dead.values()]
        return dead

    def retry_dead(self, job_id: str) -> None:
        """Put a dead job back in its lane with a fresh retry budget.

        It goes in even if the lane is full, as a retry does: it was accepted once.
        Raises ``KeyError`` for an id that is not in the dead letters, and
        ``QueueClosed`` once ``close()`` has begun.
        """
        if self._forked:
            raise _forked()
        on_disk = self._store.find(job_id)  # a dead job memory has let go of
        with self._mutex:
            if self._closing:
                raise QueueClosed("the queue is closed; replay the job after a restart")
            record = self._dead.pop(job_id, None)
            if (
                record is None
                and job_id not in self._records
                and on_disk is not None
                and on_disk.status is Status.FAILED
            ):
                record = self._records[job_id] = on_disk
            if record is None:
                raise NotADeadLetter(job_id)
            record.settled = 0  # its entry in the settle order is stale now
        # On disk before it can run, as an enqueue is: a worker that took it first
        # could settle it before the replay landed, and the replay would then undo
        # that end on disk, and run the job again at the next start.
        try:
            self._store.revived(record)
        except BaseException as exc:
            with self._mutex:  # still dead: back in the dead letters
                record.settled = next(self._settle_numbers)
                self._settled.append(record)
                self._dead[job_id] = record
                closing = self._closing
            if closing and isinstance(exc, StoreError):  # close() shut the store meanwhile
                raise QueueClosed("the queue closed while the job was being replayed") from exc
            raise
        with self._mutex:
            if self._stopping and self._durable:
                # close(timeout) gave up meanwhile: the replay is on disk, and the
                # next start runs it.
                self._records.pop(job_id, None)
                self._drop_key(record)
                return
            if self._stopping:  # in memory, nobody will run it: still dead
                record.settled = next(self._settle_numbers)
                self._settled.append(record)
                self._dead[job_id] = record
                raise QueueClosed("the queue closed while the job was being replayed")
            record.attempts = 0
            record.status = Status.QUEUED
            record.finished = None
            record.ready = time.monotonic()
            self._lanes[record.job.priority].append(record)
            self._counts[record.job.priority]["submitted"] += 1
            self._unsettled += 1
            self._not_empty.notify()

    def cancel(self, job_id: str) -> bool:
        """Call off a job that has not started: it will never run.

        Returns ``True`` for a job queued, scheduled (waiting for its ``run_at``) or
        waiting out a backoff: its status becomes ``CANCELLED``, a settled state
        (``join`` counts it as settled, ``metrics`` as ``cancelled``), on disk before
        this returns when there is a ``path``. Its idempotency key stays used, as a
        settled job's does: for as long as the queue remembers the job (``history``;
        with a ``path``, until ``retention`` has passed, as for a completed job).
        Returns ``False`` for a job that is running or has settled: nothing changes.
        A worker taking the job and ``cancel`` decide under one lock: the job runs,
        or it is cancelled, never both.

        Raises ``KeyError`` for an id the queue does not know (an ``enqueue`` that has
        not returned included), ``QueueClosed`` for a job that ``close()`` let go of
        (left on disk: cancel it after the next start; in memory: counted lost), and
        ``StoreError`` when the disk refuses the write: the job then stays as it was,
        and may still run.
        """
        if self._forked:
            raise _forked()
        with self._mutex:
            record = self._records.get(job_id)
            if record is None:
                was = None
            else:
                was = self._call_off(record)
                if was is None:
                    return False
                if not self._durable:
                    self._settle_cancelled(record)
                    return True
        if record is None or was is None:
            return self._cancel_on_disk(job_id)
        try:
            self._store.cancelled(record)  # outside the lock, as an enqueue's write is
        except BaseException as exc:
            with self._mutex:
                self._put_back(record, *was)
                closing = self._closing
            if closing and isinstance(exc, StoreError):  # close() shut the store meanwhile
                raise QueueClosed("the queue closed while the job was being cancelled") from exc
            raise
        with self._mutex:
            self._settle_cancelled(record)
        return True

    def recent_failures(self, limit: int = 20) -> list[JobInfo]:
        """What ``info`` says of the jobs whose latest attempt failed, newest first, at
        most ``limit`` (an int >= 1): those waiting out a backoff, and the dead letters
        this queue remembers. ``last_error`` says why each failed.

        Reads only the retries and the newest dead letters, never the whole history,
        so a dashboard may ask every second. Raises ``ValueError`` for a bad ``limit``.
        """
        check_int("limit", limit, minimum=1)
        if self._forked:
            raise _forked()
        with self._mutex:
            failed = [r for _, _, r in self._retries if r.status is Status.RETRYING]
            failed += itertools.islice(reversed(self._dead.values()), limit)
            infos = [record.info() for record in failed]
        # A retry's failure came after its latest start; a dead letter's at its end.
        infos.sort(key=lambda info: info.finished_at or info.started_at or 0.0, reverse=True)
        return infos[:limit]

    def _after_fork(self) -> None:
        """In the child of an ``os.fork()``: the queue is the parent's, not the child's.

        None of its threads exist in the child, so the exit hook would wait for ever
        for jobs that nobody there runs, and its lock may have been held by one of
        them at the fork. The parent runs its jobs; the child lets them be: no exit
        hook, and every method but ``close()`` (a no-op, so that a ``with`` block
        still ends) raises ``QueueClosed`` before it touches the lock. Runs alone:
        the child has one thread, and it is here.
        """
        self._forked = True
        atexit.unregister(self._atexit_hook)

    def periodic(self, name: str, every: float, job: Callable[[], Job]) -> None:
        """From now on, enqueue ``job()`` once every ``every`` seconds, under ``name``.

        Declare it again at each start, as code is. One job per period of ``every``
        seconds (counted from the epoch, by the wall clock), however many processes
        declare the same schedule and however often they restart: the job's id and
        idempotency key are ``periodic:<name>:<every>s:<period number>``, replacing
        those ``job()`` gave. At a start, the current period's job is enqueued at once
        if nobody has; periods missed before are not. A period whose previous job has
        not settled is skipped, so a failing job does not pile up. ``job()`` that
        raises or returns no ``Job`` is logged, and the schedule goes on. See
        ``final/periodic.py``; ``close()`` stops the schedules.

        Raises ``TypeError`` for a ``name`` that is not a str or a ``job`` that is not
        callable, ``ValueError`` for an ``every`` that is not a number of seconds >= 0.001,
        an empty name, or a name this queue has with another ``every``;
        ``QueueClosed`` once ``close()`` has begun.
        """
        if self._forked:
            raise _forked()
        self._periodic_schedules().add(name, every, job)

    def _periodic_schedules(self) -> Schedules:
        """This queue's schedules, made at the first use (``close()`` makes them closed)."""
        with self._mutex:
            if self._schedules is None:
                self._schedules = Schedules(self)
            return self._schedules

    def __enter__(self) -> JobQueue:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the life of one job: accepted, taken, run, settled or retried -----------------

    def _recover(self) -> None:
        """Put back what the store kept from an earlier run. Runs before any thread."""
        now = time.monotonic()
        with self._mutex:
            for record in self._store.dead():
                self._records[record.job.id] = record
                self._dead[record.job.id] = record
                record.settled = next(self._settle_numbers)
                self._settled.append(record)
            for record, due_in in self._store.load():
                self._records[record.job.id] = record
                self._counts[record.job.priority]["submitted"] += 1
                self._unsettled += 1
                if record.status is Status.PROCESSING:
                    # Its attempt was counted when claimed, and died with the process.
                    record.last_error = f"the process died during attempt {record.attempts}"
                    if record.attempts > record.max_retries:
                        self._counts[record.job.priority]["failed"] += 1
                        self._settle(record, Status.FAILED, now)
                        continue
                if record.status in self._timed and due_in > 0:  # a backoff, a run_at
                    self._wait_until(record, now + due_in)
                    continue
                record.status = Status.QUEUED
                record.ready = now
                self._lanes[record.job.priority].append(record)

    def _record(self, job: Job) -> Record:
        max_retries = self._max_retries if job.max_retries is None else job.max_retries
        record = Record(job, max_retries)  # positional: keywords cost twice as much here
        record.enqueued = record.ready = time.monotonic()
        if job.run_at is not None and (left := _until_run_at(job)) > 0:
            # Scheduled: it will enter its lane at ``ready``. Decided once, here, by
            # the wall clock of this moment; a run_at already past is queued at once.
            record.ready += left
        return record

    def _admit(self, record: Record, timeout: float | None, room_for: int = 1) -> None:
        """Check a job, wait for room in its lane, and remember it. Holds the lock.

        ``room_for`` > 1 (the first job of an ``enqueue_many`` chunk) waits for room
        for that many jobs, within ``timeout``, and settles for less when it passes.
        """
        job = record.job
        key = job.idempotency_key
        if self._closing:
            raise QueueClosed("the queue is closed; create a new JobQueue to run more jobs")
        # A key or id only the disk remembers is caught by the store's constraints,
        # outside this lock.
        if key is not None and (first := self._keys.get(key)):
            raise _duplicate(job, first)
        if job.id in self._records:
            raise _duplicate(job, job.id)
        priority = job.priority
        if (
            len(self._lanes[priority]) + self._reserved[priority] > self._queue_size - room_for
            and record.ready == record.enqueued  # a scheduled job takes no lane room
        ):
            self._wait_for_room(job, timeout, room_for)
        if key is not None:
            self._keys[key] = job.id
        self._records[job.id] = record

    def _wait_for_room(self, job: Job, timeout: float | None, room_for: int = 1) -> None:
        """Block while the job's lane is full, as enqueue promises. Holds the lock."""
        priority, key = job.priority, job.idempotency_key
        lane = self._lanes[priority]
        not_full = self._lane_not_full[priority]
        endtime = None if timeout is None else time.monotonic() + timeout
        while (room := self._queue_size - len(lane) - self._reserved[priority]) < room_for:
            remaining = None if endtime is None else endtime - time.monotonic()
            if remaining is not None and remaining <= 0:
                if room > 0:
                    return  # room for fewer than hoped: a smaller chunk
                if timeout == 0:
                    raise QueueFull(f"the {priority.name} lane is full")
                raise QueueFull(
                    f"the {priority.name} lane stayed full for {timeout}s; "
                    "slow the producer down, or add workers"
                )
            self._blocked[priority] += 1
            try:
                not_full.wait(remaining)
            finally:
                self._blocked[priority] -= 1
            error: Exception | None = None
            if self._closing:
                error = QueueClosed("the queue closed while this enqueue waited for room")
            # Another producer may have taken the key or the id while we waited.
            elif key is not None and (first := self._keys.get(key)):
                error = _duplicate(job, first)
            elif job.id in self._records:
                error = _duplicate(job, job.id)
            if error is not None:
                raise error  # every waiter was woken: none relies on this one passing it on

    def _unadmit(self, records: Sequence[Record]) -> None:
        """The store refused these: forget them as if never admitted. Holds the lock."""
        for record in records:
            self._reserved[record.job.priority] -= 1
            del self._records[record.job.id]
            if record.job.idempotency_key is not None:
                self._keys.pop(record.job.idempotency_key, None)
            self._lane_not_full[record.job.priority].notify_all()
        if self._closing:
            self._all_settled.notify_all()  # close() waits for reservations to end

    def _store_and_publish(self, records: Sequence[Record]) -> None:
        """Make admitted jobs durable, outside the lock, then accept them.

        The store stops at a job whose id or key is already on disk (one that memory
        had let go of): the jobs before it are accepted, the rest are not.
        """
        stored: Sequence[Record] = records
        duplicate: DuplicateRow | None = None
        try:
            self._store.add(records)
        except DuplicateRow as exc:
            duplicate = exc
            stored = records[: [r.job.id for r in records].index(exc.job_id)]
        except BaseException as exc:
            with self._mutex:
                self._unadmit(records)
                closing = self._closing
            if closing and isinstance(exc, StoreError):  # close() shut the store meanwhile
                raise QueueClosed("the queue closed while this enqueue was being stored") from exc
            raise
        with self._mutex:
            self._unadmit(records[len(stored) :])
            for record in stored:
                self._reserved[record.job.priority] -= 1
                if self._stopping:
                    # close(timeout) gave up waiting for this write: the job is on
                    # disk, accepted, and the next start runs it.
                    self._records.pop(record.job.id, None)
                    self._drop_key(record)
                else:
                    self._publish(record)
            if self._closing:
                # close() left the scheduled jobs before these were on the heap: leave
                # these too (they are on disk), or close() would wait for their run_at.
                self._leave_scheduled()
                self._all_settled.notify_all()  # close() waits for reservations to end
        if duplicate is not None:
            refused = records[len(stored)].job
            error = _duplicate(refused, duplicate.first)
            error.accepted = len(stored)
            raise error

    def _publish(self, record: Record) -> None:
        """Stored (or nothing to store), so accepted: into its lane, or to wait for its
        run_at. Holds the lock."""
        priority = record.job.priority
        self._counts[priority]["submitted"] += 1
        self._unsettled += 1
        if record.ready != record.enqueued:
            record.status = Status.SCHEDULED
            self._wait_until(record, record.ready)
            if self._blocked[priority]:
                # It held room while it was stored (a few milliseconds: simpler than
                # a reservation of its own), and lets go of it without entering.
                self._lane_not_full[priority].notify_all()
            return
        self._lanes[priority].append(record)
        if self._idle:
            self._not_empty.notify()

    def _wait_until(self, record: Record, due: float) -> None:
        """Put a RETRYING or SCHEDULED job on the scheduler's heap, to enter its lane at
        ``due`` (``time.monotonic()``). Holds the lock."""
        self._seq += 1
        heapq.heappush(self._retries, (due, self._seq, record))
        self._timed[record.status][record.job.priority] += 1
        if due < self._next_wake:
            self._timer_changed.notify()

    def _worker(self) -> None:
        _current.queue = self  # for _refuse_from_handler: this thread runs our handlers
        me = threading.current_thread()
        with self._mutex:
            attempt = self._take_locked(me)
        while attempt is not None:
            attempt = self._run(attempt, me)

    def _take_locked(self, me: threading.Thread) -> Attempt | None:
        """The next attempt to run, waiting for one; None when it is time to stop.

        Holds the lock. The Attempt is built here, not after the lock is let go:
        it carries the token that says whose attempt this is, and a timeout can
        hand the job to someone else the moment the lock is free.
        """
        # A loop, not an if: a wait can wake with nothing to do.
        while not self._stopping:
            if self._bucket is not None and any(self._lanes.values()):
                wait = self._bucket.take(time.monotonic())
                if wait > 0:
                    self._wait_for_work(wait)  # no token yet: throttle, never drop
                    continue
            priority = self._picker.pick()  # strict priority, within final/fairness.py's bound
            if priority is None:
                self._wait_for_work(None)
                continue
            lane = self._lanes[priority]
            record = lane.popleft()
            if (
                self._blocked[priority]
                and self._queue_size - len(lane) - self._reserved[priority] >= self._refill
            ):
                self._lane_not_full[priority].notify_all()
            now = time.monotonic()
            if self._job_timeout is not None:
                # Only an attempt that can time out needs to be found and abandoned.
                record.deadline = now + self._job_timeout
                record.token = next(self._tokens)
                record.runner = me
                if record.deadline < self._next_wake:
                    self._timer_changed.notify()
            record.attempts += 1
            record.status = Status.PROCESSING
            record.started = now
            self._waits.append(now - record.ready)
            self._running.add(record)
            self._counts[priority]["started"] += 1
            return Attempt(record.job, record.attempts, record.deadline, record, record.token)
        if self._close_store_when_idle and not self._running:
            # The last attempt close(timeout) left running has settled: let go of the
            # file now, under the lock, so that once status() shows the attempt ended
            # a new queue can open the file.
            self._close_store_when_idle = False
            self._store.close()
        return None

    def _wait_for_work(self, timeout: float | None) -> None:
        """Wait on _not_empty, counted, so that enqueue notifies only when one waits."""
        self._idle += 1
        try:
            self._not_empty.wait(timeout)
        finally:
            self._idle -= 1

    def _run(self, attempt: Attempt, me: threading.Thread) -> Attempt | None:
        """Run one attempt, settle it, and take the next (None: this thread leaves).

        Settling and taking share one hold of the lock: every acquisition a worker
        makes is a chance for the others to queue up behind it, and with the GIL a
        queue of threads at a lock costs more than the work the lock protects.
        """
        record, token = attempt._record, attempt._token
        try:
            self._store.claimed(record)
        except StoreError:
            # The attempt cannot be counted, so it must not run. The job stays on
            # disk as it was, and the next start runs it.
            logger.exception("job %s: could not record its attempt; not run", record.job.id)
            with self._mutex:
                if record.token != token:  # timed out meanwhile: no longer ours
                    return self._take_locked(me) if self._rejoin(me) else None
                self._running.discard(record)
                self._forget(record)
                return self._take_locked(me)
        _current.attempt = attempt
        error: BaseException | None = None
        try:
            self._handler(attempt.job)
        except BaseException as exc:  # SystemExit too: it must not take the worker along
            error = exc
        finally:
            _current.attempt = None
        finished = time.monotonic()
        if self._forked:
            # The handler forked, and this is the child's copy of the worker: the job
            # and the queue are the parent's, so this thread leaves, touching neither.
            return None
        with self._mutex:
            if record.token != token:  # timed out and abandoned while it ran
                # The scheduler logged its one record when it timed the attempt out.
                logger.debug(_LATE, attempt.job.id, attempt.number, error)
                return self._take_locked(me) if self._rejoin(me) else None
            self._running.discard(record)
            self._busy += finished - (record.started or finished)
            reason = None if error is None else failure_text(error)
            if attempt.deadline is not None and finished >= attempt.deadline:
                # It ended past its deadline, before the scheduler got to it: timed out
                # all the same, as ``expired`` told the handler. The verdict is the
                # deadline's, not that of whichever thread took the lock first.
                self._counts[record.job.priority]["timed_out"] += 1
                reason, error = f"timed out after {self._job_timeout}s", None
            if reason is None:
                self._counts[record.job.priority]["completed"] += 1
                self._settle(record, Status.COMPLETED, finished)
                return self._take_locked(me)
            last = self._fail(record, reason)
            # Under the lock, so that the record is written before join() returns.
            _log_failure(attempt.job.id, attempt.number, reason, error, last)
            return self._take_locked(me)

    def _fail(self, record: Record, error: str) -> bool:
        """Retry the job after a backoff, or settle it as failed. Holds the lock.

        Returns True when the job failed for good: it went to the dead letters.
        """
        record.last_error = error
        counts = self._counts[record.job.priority]
        if record.attempts > record.max_retries:
            # Failed for good, even after close(timeout) has passed: its budget is
            # spent, and a retry left on disk would run it once too many.
            counts["failed"] += 1
            self._settle(record, Status.FAILED, time.monotonic())
            return True
        if self._stopping:
            # close(timeout) has passed: nobody here will retry it. On disk it waits
            # for the next start; in memory it is lost, and counted so.
            self._store.retrying(record, 0.0)
            if not self._durable:
                counts["lost"] += 1
            self._forget(record)
        else:
            delay = backoff_delay(record.attempts, self._backoff, self._max_backoff)
            record.status = Status.RETRYING
            self._wait_until(record, time.monotonic() + delay)
            counts["retried"] += 1
            self._store.retrying(record, delay)
        return False

    def _settle(self, record: Record, status: Status, now: float, store: bool = True) -> None:
        """One accepted job is done with: remembered, within the history, and told to
        the store unless ``store`` is False (a cancel has written it). Holds the lock."""
        record.status = status
        record.finished = now
        record.settled = next(self._settle_numbers)
        self._settled.append(record)
        if status is Status.FAILED:
            self._dead[record.job.id] = record
        # Let go in batches, a sixteenth of the history at a time: the check is all
        # that most settles pay, and the lock is held for as little as possible.
        if len(self._settled) > self._let_go_at:
            self._let_go()
        if store:
            self._store.settled(record)
        self._unsettled -= 1
        if self._unsettled == 0:
            self._all_settled.notify_all()

    def _let_go(self) -> None:
        """Forget the oldest settled jobs, down to ``history``. Holds the lock."""
        gone: list[Record] = []
        while len(self._settled) > self._history_size:
            # Each settle number is taken as its entry goes in, so an entry's number
            # is its place in the order, and only the oldest's is kept: a (number,
            # record) tuple per job would be one more object for the garbage
            # collector to walk, again and again, while the history holds the job.
            old = self._settled.popleft()
            number, self._oldest = self._oldest, self._oldest + 1
            if old.settled != number:
                continue  # replayed since: a later entry stands for it
            del self._records[old.job.id]
            gone.append(old)
            self._drop_key(old)
            if self._dead.pop(old.job.id, None) is not None and not self._durable:
                logger.warning(
                    "dead letter %s let go of: more than history=%d settled jobs",
                    old.job.id,
                    self._history_size,
                )
        # The disk may not have their ends yet: the store answers for them now.
        self._store.released(gone)

    def _forget(self, record: Record) -> None:
        """A job this queue will not run: lost, or left on disk for the next start.

        The caller counts it as lost when there is no disk. Holds the lock."""
        del self._records[record.job.id]
        self._drop_key(record)
        self._unsettled -= 1
        if self._unsettled == 0:
            self._all_settled.notify_all()

    def _drop_key(self, record: Record) -> None:
        key = record.job.idempotency_key
        if key is not None and self._keys.get(key) == record.job.id:
            del self._keys[key]

    # -- calling a job off: cancel() ---------------------------------------------------

    def _call_off(self, record: Record) -> tuple[Status, _Retry | None] | None:
        """Take a job that has not started out of its lane or the heap, and mark it
        CANCELLED, so that no worker and no scheduler can take it any more; None for
        one that has started or settled. Returns what it was and its heap entry, for
        ``_put_back``. Holds the lock, as a worker taking a job does: one of the two
        finds the job first, and the other does not find it.
        """
        status, priority = record.status, record.job.priority
        entry = None
        if status is Status.QUEUED:
            try:
                self._lanes[priority].remove(record)  # eq=False: by identity
            except ValueError:  # admitted, still being stored: not accepted yet
                raise UnknownJob(record.job.id) from None
            if self._blocked[priority]:
                self._lane_not_full[priority].notify_all()
        elif status in self._timed:
            # Out of the heap at once, rather than skipped when it falls due: a job
            # scheduled a year ahead and cancelled would otherwise stay a year.
            heap = self._retries
            i = next(i for i, e in enumerate(heap) if e[2] is record)
            entry, heap[i] = heap[i], heap[-1]
            heap.pop()
            heapq.heapify(heap)
            self._timed[status][priority] -= 1
        else:
            return None
        record.status = Status.CANCELLED
        return status, entry

    def _put_back(self, record: Record, status: Status, entry: _Retry | None) -> None:
        """The store refused a cancel: the job is back where ``_call_off`` took it
        from, or, once close(timeout) has given up, left on disk as it was. Holds the lock."""
        record.status = status
        if self._stopping:
            self._forget(record)
        elif entry is None:
            self._lanes[record.job.priority].appendleft(record)  # it had waited already
            self._not_empty.notify()
        else:
            self._wait_until(record, entry[0])

    def _settle_cancelled(self, record: Record) -> None:
        """A cancel has won (and is on disk, if there is one). Holds the lock."""
        self._counts[record.job.priority]["cancelled"] += 1
        self._settle(record, Status.CANCELLED, time.monotonic(), store=False)

    def _cancel_on_disk(self, job_id: str) -> bool:
        """``cancel`` of a job memory does not hold: settled and let go of (False), or
        left on disk by close(timeout) (QueueClosed)."""
        on_disk = self._store.find(job_id)
        if on_disk is None:
            with self._mutex:
                closing = self._closing
            if closing:  # close() let go of its jobs, and a closed store finds none
                raise QueueClosed("the queue is closed; cancel the job after the next start")
            raise UnknownJob(job_id)
        if on_disk.status in (Status.QUEUED, Status.SCHEDULED, Status.RETRYING):
            raise QueueClosed("the queue is closed; cancel the job after the next start")
        return False

    def _leave_scheduled(self) -> None:
        """close() waits for no run_at: the jobs scheduled for later are left, on disk
        for the next start, or in memory counted as lost. Holds the lock."""
        now = time.monotonic()
        kept: list[_Retry] = []
        for entry in self._retries:
            record = entry[2]
            if record.status is Status.SCHEDULED and entry[0] > now:
                self._timed[Status.SCHEDULED][record.job.priority] -= 1
                if not self._durable:
                    self._counts[record.job.priority]["lost"] += 1
                self._forget(record)
            else:
                kept.append(entry)
        if len(kept) < len(self._retries):
            heapq.heapify(kept)
            self._retries = kept

    # -- the scheduler: retries falling due, attempts running out of time -------------

    def _scheduler(self) -> None:
        with self._mutex:
            while not self._stopping:
                now = time.monotonic()
                wake = math.inf
                # Deadlines first: timing an attempt out may push its retry onto the
                # heap, and the wake-up below must account for it.
                if self._job_timeout is not None:
                    # At most `workers` attempts run at once, so a scan is cheap, and
                    # it leaves no stale timer behind for each attempt that finished.
                    for record in list(self._running):
                        assert record.deadline is not None  # set for every attempt
                        if record.deadline <= now:
                            self._time_out(record)
                        else:
                            wake = min(wake, record.deadline)
                while self._retries and self._retries[0][0] <= now:
                    _, _, record = heapq.heappop(self._retries)
                    self._timed[record.status][record.job.priority] -= 1
                    if (
                        record.status is Status.SCHEDULED
                        and (left := _until_run_at(record.job)) > 0
                    ):
                        # Judged by the wall clock too: never before its run_at, even
                        # by a few microseconds of drift between the two clocks.
                        self._wait_until(record, now + left)
                        continue
                    # A retry goes back even into a full lane: it was accepted once,
                    # and backpressure is for new work; so does a scheduled job. A
                    # lane can therefore hold up to queue_size plus the jobs coming
                    # back from a backoff or falling due.
                    record.status = Status.QUEUED
                    record.ready = now
                    self._lanes[record.job.priority].append(record)
                    self._not_empty.notify()
                if self._retries:
                    wake = min(wake, self._retries[0][0])
                self._next_wake = wake
                # Capped: Condition.wait refuses a timeout past threading.TIMEOUT_MAX
                # (a run_at centuries ahead), and waking hourly to look again is free.
                self._timer_changed.wait(None if wake == math.inf else min(wake - now, _MAX_SLEEP))

    def _time_out(self, record: Record) -> None:
        """Abandon an attempt past its deadline, and keep the pool full. Holds the lock."""
        self._running.discard(record)
        record.token = 0  # its Attempt now sees itself abandoned
        assert record.runner is not None
        self._threads.discard(record.runner)
        self._counts[record.job.priority]["timed_out"] += 1
        self._busy += self._job_timeout or 0.0
        self._abandoned += 1
        self._live_workers -= 1
        reason = f"timed out after {self._job_timeout}s"
        last = self._fail(record, reason)
        _log_failure(record.job.id, record.attempts, reason, None, last)
        if self._abandoned <= self._workers:
            self._start_worker()

    def _rejoin(self, me: threading.Thread) -> bool:
        """An abandoned thread's handler returned. Holds the lock."""
        self._abandoned -= 1
        if self._live_workers < self._workers and not self._stopping:
            # The cap kept this slot empty: the thread can fill it again itself.
            self._live_workers += 1
            self._threads.add(me)
            return True
        return False

    def _start_worker(self) -> None:
        """Holds the lock, or runs in the constructor before any thread exists."""
        thread = threading.Thread(
            target=self._worker,
            name=f"{__package__}-worker-{next(self._thread_names)}",
            daemon=True,
        )
        self._live_workers += 1
        self._threads.add(thread)
        thread.start()

    def _stop(self) -> None:
        """Workers and scheduler leave; jobs not started are lost. Holds the lock."""
        self._stopping = True
        left = [record for lane in self._lanes.values() for record in lane]
        left += [record for _, _, record in self._retries]
        for lane in self._lanes.values():
            lane.clear()
        self._retries.clear()
        for gauge in self._timed.values():
            gauge.update(dict.fromkeys(gauge, 0))
        for record in left:
            if not self._durable:  # on disk they wait for the next start: not lost
                self._counts[record.job.priority]["lost"] += 1
            self._forget(record)
        self._not_empty.notify_all()
        self._timer_changed.notify_all()


# Every queue of this process, for the child of an ``os.fork()`` to disown.
_queues: weakref.WeakSet[JobQueue] = weakref.WeakSet()


def _disown_after_fork() -> None:
    for queue in list(_queues):
        queue._after_fork()


def _forked() -> QueueClosed:
    """What a queue's methods raise in the child of an ``os.fork()`` (see ``_after_fork``).

    Each method tests ``_forked`` itself: an attribute test costs the hot path less
    than a call.
    """
    return QueueClosed(
        "this queue belongs to the process that forked this one; "
        "after os.fork() the child must create a JobQueue of its own"
    )


os.register_at_fork(after_in_child=_disown_after_fork)


def _duplicate(job: Job, first: str) -> DuplicateJob:
    """The refusal of ``job``, whose key or id the job ``first`` holds: the same words
    whether memory or the disk remembered it."""
    if first == job.id:
        return DuplicateJob(first, f"a job with id {job.id!r} was accepted before")
    key = job.idempotency_key
    return DuplicateJob(first, f"idempotency key {key!r} was used by job {first}")


def _check_final_options(
    fairness: int,
    rate_limit: float | None,
    history: int,
    retention: float | None,
    executor: str = "thread",
    handler: object = None,
) -> None:
    """The rules of the options final adds to improved's."""
    _check_executor(executor, handler)
    check_int("fairness", fairness, minimum=0)
    if rate_limit is not None:
        check_seconds("rate_limit", rate_limit, positive=True)
    check_int("history", history, minimum=1)
    if retention is not None:
        check_seconds("retention", retention)


def _open_store(
    path: str | os.PathLike[str] | None,
    durability: str,
    retention: float | None,
    store: Store | None,
) -> Store:
    """The store a JobQueue was given, or the one its ``path`` names (None: memory).

    Raises ``ValueError`` for both a ``path`` and a ``store``, or an unknown
    ``durability``, and ``StoreError`` for a path that cannot be a queue."""
    if durability not in ("power", "process"):
        raise ValueError(f"durability must be 'power' or 'process', got {durability!r}")
    if store is not None:
        if path is not None:
            raise ValueError("give a path or a store, not both: a store has its own file")
        return store
    if path is None:
        return MemoryStore()
    return SQLiteStore(os.fspath(path), durability, retention)


def _until_run_at(job: Job) -> float:
    """Seconds until ``job.run_at`` by the wall clock now; 0 or less once it is due."""
    assert job.run_at is not None  # asked only of a job that has one
    return job.run_at.timestamp() - time.time()


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
