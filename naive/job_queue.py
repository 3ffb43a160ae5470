"""The naive tier: one unbounded FIFO and a few worker threads.

It is correct as far as it goes: every accepted job runs exactly once when nothing
fails, ``join`` waits for them, ``close`` is safe to call twice, and ``enqueue``
after ``close`` raises ``QueueClosed``. Everything else is missing on purpose, and
each lesson below is shown by a test (an expected failure in ``tests/contract``, or
a test in ``tests/test_naive.py``):

1. No backpressure. The FIFO has no bound, so a producer faster than the workers
   grows memory until the process runs out of it.
2. No priority. One FIFO for everything: a HIGH job waits behind every job that
   was queued before it.
3. No retry. A job whose handler raises is logged and gone.
4. No timeout. A handler that hangs holds its worker for ever.
5. Shutdown loses work. ``close()`` lets running jobs finish, then drops the
   queued ones without a word. Workers are daemon threads, so at interpreter exit
   a queue nobody closed is killed mid-job.
6. No metrics and no status. Nothing tells you how many jobs ran, failed or wait,
   nor where one job is.
7. Crashes lose everything. The queue lives in memory only.

The improved tier fixes 1 to 6 within one process; the final tier fixes 7.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

__all__ = ["Job", "JobQueue", "Priority", "QueueClosed", "QueueFull"]

logger = logging.getLogger(__name__)


class Priority(enum.IntEnum):
    """How urgent a job is. Iteration order is the order a worker should look in."""

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
    """The job's lane stayed full past the timeout. Naive never raises it: it has no bound."""


class QueueClosed(Exception):
    """``close()`` has begun: the queue accepts no more jobs."""


Handler = Callable[[Job], object]


class JobQueue:
    """Run ``handler(job)`` on ``workers`` threads for every job given to ``enqueue``.

    The handler succeeds when it returns and fails when it raises an ``Exception``.
    """

    def __init__(self, handler: Handler, *, workers: int = 4) -> None:
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {type(handler).__name__}")
        check_int("workers", workers, minimum=1)
        self._handler = handler

        # One lock guards everything below; both conditions are built on it.
        self._mutex = threading.Lock()
        # Notified by enqueue (a job arrived) and by close (time to stop);
        # idle workers wait on it.
        self._not_empty = threading.Condition(self._mutex)
        # Notified when the last accepted job settles; join() waits on it.
        self._all_settled = threading.Condition(self._mutex)

        self._pending: deque[Job] = deque()  # no maxlen: lesson 1
        self._unsettled = 0  # accepted and not yet finished
        self._closed = False

        # Daemon threads never hold up interpreter exit, and that is lesson 5:
        # whatever they were doing then is simply cut off.
        self._threads = [
            threading.Thread(target=self._worker, name=f"{__package__}-worker-{n}", daemon=True)
            for n in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    # -- the contract ------------------------------------------------------------------

    def enqueue(self, job: Job, timeout: float | None = None) -> None:
        """Accept ``job``. Never blocks and never raises ``QueueFull``: there is no bound.

        ``timeout`` is taken for the shared contract and has nothing to wait for.
        Raises ``QueueClosed`` once ``close()`` has begun, and ``TypeError`` for
        anything that is not a ``Job`` with a ``Priority``.
        """
        check_job(job)
        with self._mutex:
            if self._closed:
                raise QueueClosed("the queue is closed; create a new JobQueue to run more jobs")
            self._pending.append(job)
            self._unsettled += 1
            self._not_empty.notify()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every accepted job has run; ``False`` if ``timeout`` passed first.

        After ``close()`` the dropped jobs never run, so this only returns ``True``
        if nothing was left queued.
        """
        with self._mutex:
            return self._all_settled.wait_for(lambda: self._unsettled == 0, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting jobs, let the running ones finish, and return.

        Lesson 5: the jobs still queued are never run, and nothing says so.
        Safe to call twice. With ``timeout``, stop waiting for the workers after it.
        """
        with self._mutex:
            self._closed = True
            self._not_empty.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            if thread is threading.current_thread():
                continue  # close() from a handler: a thread cannot join itself
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> JobQueue:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the life of one job: taken, run, settled --------------------------------------

    def _worker(self) -> None:
        while (job := self._take()) is not None:
            self._run(job)

    def _take(self) -> Job | None:
        with self._mutex:
            # A loop, not an if: a wait can wake with nothing to do.
            while not self._pending and not self._closed:
                self._not_empty.wait()
            if self._closed:
                return None  # lesson 5: what is still in _pending stays there
            return self._pending.popleft()

    def _run(self, job: Job) -> None:
        try:
            self._handler(job)
        except BaseException:  # SystemExit too: it must not take the worker along
            # Lesson 3: logged, and that is all that remains of it.
            logger.exception("job %s failed; naive does not retry it", job.id)
        self._settle()

    def _settle(self) -> None:
        with self._mutex:
            self._unsettled -= 1
            if self._unsettled == 0:
                self._all_settled.notify_all()


def check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def check_job(job: object) -> None:
    if not isinstance(job, Job):
        raise TypeError(f"enqueue takes a Job, got {type(job).__name__}")
    if not isinstance(job.priority, Priority):
        raise TypeError(f"Job.priority must be a Priority, got {job.priority!r}")
