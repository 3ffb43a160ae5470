"""The improved tier: bounded priority lanes, retries, timeouts, metrics, graceful shutdown.

What it fixes from naive, lesson by lesson:

1. Backpressure. Each priority has its own lane of ``queue_size`` jobs. ``enqueue``
   blocks while the job's lane is full and raises ``QueueFull`` once ``timeout``
   has passed, so a fast producer is slowed down instead of filling memory.
2. Priority. A free worker always takes the oldest job of the highest non-empty lane.
3. Retries. A failed attempt is retried up to ``max_retries`` times, after an
   exponential backoff with jitter (``backoff_delay``). A job waiting out its
   backoff sits in one timer heap served by one scheduler thread: it holds neither
   a worker nor a producer.
4. Timeouts. ``job_timeout`` bounds one attempt. Python cannot kill a thread, so a
   timed-out attempt is *abandoned*: it is counted as timed out and retried, and a
   fresh worker thread takes its slot so that the pool keeps its capacity. The
   abandoned thread runs on until its handler returns; its result is ignored.
   A timed-out worker is replaced only while at most ``workers`` threads are
   abandoned; past that the pool shrinks until one comes back, so the queue never
   runs more than ``2 * workers`` worker threads in all, instead of growing them
   without bound. ``metrics().abandoned`` shows how many are abandoned now. A
   handler can cooperate: ``current_attempt()`` returns the running ``Attempt``,
   whose ``expired`` and ``time_left()`` say when to give up. An attempt that ends
   after its deadline is timed out, even when it returned before the scheduler
   noticed: the deadline decides, not which thread gets to the lock first.
5. Graceful shutdown. ``close()`` stops accepting, runs what is queued, in flight
   and waiting to retry, and returns with no thread of the queue left running but
   the abandoned ones (lesson 4: nothing can end them).
   ``close(timeout)`` returns when the timeout passes and counts the jobs it left
   unrun as ``lost``; it never abandons an attempt that has started. A queue
   nobody closed is closed at interpreter exit, before its daemon workers die.
   The child of an ``os.fork()`` has none of the queue's threads: it leaves the
   parent's jobs to the parent, exits without waiting for them, and gets
   ``QueueClosed`` if it uses the queue.
6. Metrics. ``metrics()`` returns a ``Metrics`` snapshot taken under the one lock,
   so its counters always agree with each other.

All of it behind one lock, which costs little if it is held rarely: with the GIL, a
queue of threads at a lock costs more than the work the lock protects. So a worker
settles its attempt and takes its next in one hold of the lock (``_run`` returns the
next ``Attempt``), and a notify is paid only when a thread waits for it (``_idle``,
``_blocked``).

What it still gets wrong:

7. Starvation. Strict priority means a steady stream of HIGH jobs keeps a LOW job
   waiting for ever.
8. No status by id and no dead letter queue. A job that fails for good is
   counted and gone; nobody can look it up or replay it.
9. No idempotency. The same work enqueued twice runs twice.
10. Crashes lose everything. Lanes, retry timers and counters live in memory.
"""

from __future__ import annotations

import atexit
import enum
import heapq
import itertools
import logging
import math
import os
import random
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

__all__ = [
    "Attempt",
    "Job",
    "JobQueue",
    "Metrics",
    "Priority",
    "QueueClosed",
    "QueueFull",
    "backoff_delay",
    "current_attempt",
]

logger = logging.getLogger(__name__)


class Priority(enum.IntEnum):
    """How urgent a job is. Iteration order is the order a worker looks in."""

    HIGH = 2
    MEDIUM = 1
    LOW = 0


@dataclass(slots=True)
class Job:
    """One unit of work. The handler decides what ``payload`` means."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    payload: bytes = b""
    priority: Priority = Priority.MEDIUM


class QueueFull(Exception):
    """The job's lane stayed full past the timeout given to ``enqueue``."""


class QueueClosed(Exception):
    """``close()`` has begun: the queue accepts no more jobs."""


@dataclass(frozen=True, slots=True)
class Metrics:
    """A consistent snapshot: when the queue is idle, submitted == completed + failed + lost."""

    submitted: int  # accepted by enqueue
    started: int  # attempts begun
    completed: int  # jobs that succeeded
    failed: int  # jobs that failed for good (their last attempt failed)
    retried: int  # retries scheduled
    timed_out: int  # attempts that ran past job_timeout
    lost: int  # accepted jobs that close(timeout) left unrun
    queued: int  # gauge: jobs waiting in the lanes
    retrying: int  # gauge: jobs waiting out a backoff
    in_flight: int  # gauge: attempts running (abandoned ones excluded)
    abandoned: int  # gauge: threads still running an attempt that timed out


@dataclass(slots=True, eq=False)
class Attempt:
    """One run of the handler on one job; ``current_attempt()`` returns it to the handler."""

    job: Job
    number: int  # 1 for the first attempt, 2 for the first retry, ...
    deadline: float | None  # time.monotonic() after which the attempt has timed out
    thread: threading.Thread
    abandoned: bool = False  # set, under the queue's lock, when the attempt times out

    @property
    def expired(self) -> bool:
        """True once the deadline has passed: a cooperative handler stops here."""
        return self.deadline is not None and time.monotonic() >= self.deadline

    def time_left(self) -> float | None:
        """Seconds until the deadline (0 once past it), or None when there is no timeout."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())


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


def current_attempt() -> Attempt:
    """The attempt the calling handler is running; ``RuntimeError`` outside a handler."""
    attempt: Attempt | None = getattr(_current, "attempt", None)
    if attempt is None:
        raise RuntimeError("current_attempt() is only meaningful inside a handler")
    return attempt


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
_Retry = tuple[float, int, Job, int]  # (due, tie-breaker, job, attempts made)


class JobQueue:
    """Run ``handler(job)`` on ``workers`` threads for every job given to ``enqueue``.

    The handler succeeds when it returns and fails when it raises an ``Exception``.
    """

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
    ) -> None:
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
        self._handler = handler
        self._workers = workers
        self._queue_size = queue_size
        self._max_retries = max_retries
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._job_timeout = job_timeout
        self._init_state()
        self._start_threads()

    def _init_state(self) -> None:
        """The lock, its conditions, and what they guard. Runs before any thread."""
        # One lock guards everything below; every condition is built on it.
        self._mutex = threading.Lock()
        # Notified when a job enters a lane (enqueue, a retry falling due) and at
        # stop; idle workers wait on it.
        self._not_empty = threading.Condition(self._mutex)
        # One per lane, notified when a worker takes a job from that lane while a
        # producer waits, and at close; producers blocked on that lane wait on it.
        # Per lane, because room in the LOW lane must not wake (and use up the
        # wake-up of) a HIGH producer.
        self._lane_not_full = {p: threading.Condition(self._mutex) for p in Priority}
        # Notified when the last accepted job settles; join() and close() wait on it.
        self._all_settled = threading.Condition(self._mutex)
        # Notified when the scheduler's next wake-up moves earlier (a retry or a
        # deadline sooner than the one it sleeps towards) and at stop; the
        # scheduler thread waits on it.
        self._timer_changed = threading.Condition(self._mutex)

        # The lanes hold (job, attempts made so far), highest priority first.
        self._lanes = {p: deque[tuple[Job, int]]() for p in Priority}
        # Threads waiting on _not_empty and on each _lane_not_full. A notify is Python
        # code even when nobody waits, and the hot path would pay for it on every job.
        self._idle = 0
        self._blocked = dict.fromkeys(Priority, 0)
        self._retries: list[_Retry] = []  # a heap, soonest first
        self._running: set[Attempt] = set()
        self._next_wake = math.inf  # when the scheduler means to wake next
        self._seq = 0
        self._unsettled = 0  # accepted and not yet settled
        self._closing = False  # close() has begun: enqueue refuses
        self._stopping = False  # workers and scheduler leave; what is left is lost
        self._counts = dict.fromkeys(
            ("submitted", "started", "completed", "failed", "retried", "timed_out", "lost"), 0
        )
        self._abandoned = 0
        self._live_workers = 0  # worker threads not running an abandoned attempt
        self._threads: set[threading.Thread] = set()  # what close() joins
        self._thread_names = itertools.count()
        self._forked = False  # this is the child of an os.fork(): see _after_fork

    def _start_threads(self) -> None:
        """The workers, the scheduler, and a hook that closes the queue at exit."""
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

    # -- the contract ------------------------------------------------------------------

    def enqueue(self, job: Job, timeout: float | None = None) -> None:
        """Accept ``job`` into its priority's lane.

        Blocks while the lane is full. Raises ``QueueFull`` if it is still full after
        ``timeout`` seconds (``0``: do not wait; ``None``: wait as long as it takes),
        ``QueueClosed`` once ``close()`` has begun (a blocked producer is woken to
        raise it), and ``TypeError`` for anything that is not a ``Job`` with a
        ``Priority``.
        """
        if self._forked:
            raise _forked()
        check_job(job)
        check_timeout(timeout)
        with self._mutex:
            lane = self._lanes[job.priority]
            if len(lane) >= self._queue_size and not self._closing:
                if timeout == 0:
                    raise QueueFull(f"the {job.priority.name} lane is full")
                not_full = self._lane_not_full[job.priority]
                endtime = None if timeout is None else time.monotonic() + timeout
                # Counted, so that a worker taking a job notifies only while one waits.
                self._blocked[job.priority] += 1
                try:
                    while len(lane) >= self._queue_size and not self._closing:
                        remaining = None if endtime is None else endtime - time.monotonic()
                        if remaining is not None and remaining <= 0:
                            raise QueueFull(
                                f"the {job.priority.name} lane stayed full for {timeout}s; "
                                "slow the producer down, or add workers"
                            )
                        not_full.wait(remaining)
                finally:
                    self._blocked[job.priority] -= 1
            if self._closing:
                raise QueueClosed("the queue is closed; create a new JobQueue to run more jobs")
            lane.append((job, 0))
            self._counts["submitted"] += 1
            self._unsettled += 1
            if self._idle:
                self._not_empty.notify()

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
        ``lost``; attempts that have started are never abandoned, and settle on their
        own threads. Safe to call twice; calling it from a handler is a
        ``RuntimeError`` (it would wait for itself).
        """
        if self._forked:
            return  # the parent's to close: see _after_fork
        _refuse_from_handler(self, "close")
        endtime = None if timeout is None else time.monotonic() + timeout
        with self._mutex:
            self._closing = True
            for not_full in self._lane_not_full.values():
                not_full.notify_all()
            self._all_settled.wait_for(lambda: self._unsettled == 0, timeout)
            if not self._stopping:
                self._stop()
            threads = list(self._threads)
        atexit.unregister(self._atexit_hook)
        for thread in threads:
            thread.join(None if endtime is None else max(0.0, endtime - time.monotonic()))

    def metrics(self) -> Metrics:
        """A snapshot of the counters and gauges, all read under one lock."""
        if self._forked:
            raise _forked()
        with self._mutex:
            return Metrics(
                **self._counts,
                queued=sum(len(lane) for lane in self._lanes.values()),
                retrying=len(self._retries),
                in_flight=len(self._running),
                abandoned=self._abandoned,
            )

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

    def __enter__(self) -> JobQueue:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the life of one job: taken, run, settled or retried ---------------------------

    def _worker(self) -> None:
        _current.queue = self  # for _refuse_from_handler: this thread runs our handlers
        me = threading.current_thread()
        with self._mutex:
            attempt = self._take_locked(me)
        while attempt is not None:
            attempt = self._run(attempt, me)

    def _take_locked(self, me: threading.Thread) -> Attempt | None:
        """The next attempt to run, waiting for one; None when it is time to stop.

        Holds the lock.
        """
        # A loop, not an if: a wait can wake with nothing to do.
        while not self._stopping:
            lane = self._pick()
            if lane is None:
                self._wait_for_work()
                continue
            job, attempts = lane.popleft()
            if self._blocked[job.priority]:
                self._lane_not_full[job.priority].notify()
            deadline = None
            if self._job_timeout is not None:
                deadline = time.monotonic() + self._job_timeout
                if deadline < self._next_wake:
                    self._timer_changed.notify()
            attempt = Attempt(job, attempts + 1, deadline, me)
            self._running.add(attempt)
            self._counts["started"] += 1
            return attempt
        return None

    def _pick(self) -> deque[tuple[Job, int]] | None:
        """Strict priority: the highest lane that is not empty. Holds the lock."""
        for lane in self._lanes.values():  # HIGH first
            if lane:
                return lane
        return None

    def _wait_for_work(self) -> None:
        """Wait on _not_empty, counted, so that enqueue notifies only when one waits."""
        self._idle += 1
        try:
            self._not_empty.wait()
        finally:
            self._idle -= 1

    def _run(self, attempt: Attempt, me: threading.Thread) -> Attempt | None:
        """Run one attempt, settle it, and take the next (None: this thread leaves).

        Settling and taking share one hold of the lock: every acquisition a worker
        makes is a chance for the others to queue up behind it, and with the GIL a
        queue of threads at a lock costs more than the work the lock protects.
        """
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
            if attempt.abandoned:  # timed out while it ran
                # The scheduler logged its one record when it timed the attempt out.
                logger.debug(_LATE, attempt.job.id, attempt.number, error)
                return self._take_locked(me) if self._rejoin(me) else None
            self._running.discard(attempt)
            reason = None if error is None else f"{type(error).__name__}: {error}"
            if attempt.deadline is not None and finished >= attempt.deadline:
                # It ended past its deadline, before the scheduler got to it: timed out
                # all the same, as ``expired`` told the handler. The verdict is the
                # deadline's, not that of whichever thread took the lock first.
                self._counts["timed_out"] += 1
                reason, error = f"timed out after {self._job_timeout}s", None
            if reason is None:
                self._counts["completed"] += 1
                self._settle()
                return self._take_locked(me)
            last = self._fail(attempt)
            # Under the lock, so that the record is written before join() returns.
            _log_failure(attempt.job.id, attempt.number, reason, error, last)
            return self._take_locked(me)

    def _fail(self, attempt: Attempt) -> bool:
        """Retry the job after a backoff, or settle it as failed. Holds the lock.

        Returns True when the job failed for good: this was its last attempt.
        """
        if attempt.number > self._max_retries:
            self._counts["failed"] += 1  # its budget is spent, close() or not
            self._settle()
            return True
        if self._stopping:
            self._counts["lost"] += 1  # close(timeout) has passed: nobody will retry it
            self._settle()
        else:
            due = time.monotonic() + backoff_delay(attempt.number, self._backoff, self._max_backoff)
            self._seq += 1
            heapq.heappush(self._retries, (due, self._seq, attempt.job, attempt.number))
            self._counts["retried"] += 1
            if due < self._next_wake:
                self._timer_changed.notify()
        return False

    def _settle(self) -> None:
        """One accepted job is done with. Holds the lock."""
        self._unsettled -= 1
        if self._unsettled == 0:
            self._all_settled.notify_all()

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
                    for attempt in list(self._running):
                        assert attempt.deadline is not None  # set for every attempt
                        if attempt.deadline <= now:
                            self._time_out(attempt)
                        else:
                            wake = min(wake, attempt.deadline)
                while self._retries and self._retries[0][0] <= now:
                    _, _, job, attempts = heapq.heappop(self._retries)
                    # A retry goes back even into a full lane: it was accepted once,
                    # and backpressure is for new work. A lane can therefore hold up
                    # to queue_size plus the jobs coming back from a backoff.
                    self._lanes[job.priority].append((job, attempts))
                    self._not_empty.notify()
                if self._retries:
                    wake = min(wake, self._retries[0][0])
                self._next_wake = wake
                self._timer_changed.wait(None if wake == math.inf else wake - now)

    def _time_out(self, attempt: Attempt) -> None:
        """Abandon an attempt past its deadline, and keep the pool full. Holds the lock."""
        self._running.discard(attempt)
        attempt.abandoned = True
        self._threads.discard(attempt.thread)
        self._counts["timed_out"] += 1
        self._abandoned += 1
        self._live_workers -= 1
        last = self._fail(attempt)
        reason = f"timed out after {self._job_timeout}s"
        _log_failure(attempt.job.id, attempt.number, reason, None, last)
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
        left = sum(len(lane) for lane in self._lanes.values()) + len(self._retries)
        for lane in self._lanes.values():
            lane.clear()
        self._retries.clear()
        self._counts["lost"] += left
        self._unsettled -= left
        if self._unsettled == 0:
            self._all_settled.notify_all()
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


def check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def check_seconds(name: str, value: object, *, positive: bool = False) -> None:
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > 0 if positive else value >= 0)
    )
    if not ok:
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number of seconds {bound}, got {value!r}")


def check_timeout(timeout: float | None) -> None:
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"timeout must be None or a number >= 0, got {timeout!r}")


def check_job(job: object) -> None:
    if not isinstance(job, Job):
        raise TypeError(f"enqueue takes a Job, got {type(job).__name__}")
    if not isinstance(job.priority, Priority):
        raise TypeError(f"Job.priority must be a Priority, got {job.priority!r}")
