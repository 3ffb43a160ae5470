"""Jobs enqueued every ``every`` seconds: what ``JobQueue.periodic(name, every, job)`` runs.

The idea is one number. Wall-clock time is cut into periods of ``every`` seconds from
the epoch (period ``n`` is ``[n * every, (n + 1) * every)``, so a daily schedule turns
at midnight UTC), and the job of period ``n`` is enqueued with an idempotency key made
of the name, the interval and ``n``. Every process, on every machine, computes the same
``n`` for the same instant, and the queue refuses a second job with a key it holds: so
there is one job per period however many processes declare the schedule and however
often they restart. Nothing here is shared but that key, and the queue already shares
it (in memory, in the SQLite file, in PostgreSQL).

- The job's ``id`` is its key too (``periodic:<name>:<every>s:<n>``): what ``job()``
  put in ``id`` and ``idempotency_key`` is replaced, so that ``status`` of a period's
  id tells from any process whether that period ran.
- At each start, the current period is enqueued at once unless its key is used: a
  period that passed while nothing ran is made up for once, never once per period
  missed. A thread that wakes several periods late does the same.
- A period whose previous job has not settled (still queued, running or retrying) is
  skipped, and logged: a schedule whose job keeps failing keeps at most one job in the
  queue instead of piling up a period behind each retry.
- ``job()`` that raises or returns something else than a ``Job`` is logged with the
  schedule's name, and the schedule goes on at the next period. A full lane or a store
  that does not answer is tried again until the period is over, then logged.

What it rests on. The count (one per period) rests on the key alone, not on clocks:
two processes whose clocks disagree still compute the same ``n`` sooner or later, and
the second is refused. Clocks decide only *when* in its period a job is enqueued: by
the process whose clock is furthest ahead, early by as much as it is ahead. Each
process uses its own wall clock (``time.time()``); keep the machines' clocks within a
small fraction of ``every`` (NTP keeps them within milliseconds). The database's clock
would need a round trip per period and process for no gain in the count. A key lasts
as long as the queue remembers it: completed jobs for ``retention`` (7 days), in memory
for ``history`` jobs; a period older than that is never enqueued again anyway.

Only the queue's public ``enqueue`` and ``status`` are used, so the one implementation
serves every store. Each schedule has one thread (daemon), which waits on the wall
clock, looking at it at least once a second so that a clock step is noticed within a
second; ``close()`` stops them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Protocol

from final.errors import DuplicateJob, QueueClosed, QueueFull
from final.jobs import Job, Status
from final.store import StoreError
from final.validation import MAX_KEY_LENGTH, check_seconds

__all__ = ["Schedules", "period_key", "period_of"]

logger = logging.getLogger(__name__)

_SETTLED = (Status.COMPLETED, Status.FAILED, Status.CANCELLED, None)  # None: forgotten
_LOOK = 1.0  # seconds: the longest a schedule sleeps without reading the clock again
_RETRY = 0.25  # seconds between tries of a period's enqueue (full lane, store away)
# The shortest interval: the loop's own resolution (it waits at least 1 ms). A shorter
# one would spin the thread and flood the log with skipped periods, and its period
# numbers would pass 2**53, where a float can no longer tell two periods apart.
MIN_EVERY = 0.001


class _Queue(Protocol):
    def enqueue(self, job: Job, timeout: float | None = None) -> None: ...

    def status(self, job_id: str) -> Status | None: ...


def period_of(now: float, every: float) -> int:
    """The number of the period of ``every`` seconds that ``now`` (``time.time()``) is in."""
    return math.floor(now / every)


def period_key(name: str, every: float, period: int) -> str:
    """The id and idempotency key of schedule ``name``'s job for ``period``."""
    seconds = repr(float(every)).removesuffix(".0")  # 86400 and 86400.0 give one key
    return f"periodic:{name}:{seconds}s:{period}"


class Schedules:
    """The schedules of one queue, each on a thread of its own, until ``close()``."""

    def __init__(self, queue: _Queue) -> None:
        self._queue = queue
        self._lock = threading.Lock()  # guards the two below
        self._every: dict[str, float] = {}  # name -> interval, as declared
        self._threads: list[threading.Thread] = []
        self._stopped = threading.Event()  # close(): every schedule's thread returns

    def add(self, name: str, every: float, job: Callable[[], Job]) -> None:
        """Start schedule ``name``; declaring it again with the same ``every`` does nothing.

        Raises ``TypeError`` for a name that is not a str or a ``job`` that is not
        callable, ``ValueError`` for an empty or too long name, an ``every`` that is
        not a finite number of seconds >= ``MIN_EVERY`` (1 ms), or a name declared
        before with another ``every``; ``QueueClosed`` once ``close()`` has begun.
        """
        if not isinstance(name, str):
            raise TypeError(f"periodic name must be a str, got {type(name).__name__}")
        check_seconds("every", every, positive=True)
        if every < MIN_EVERY:
            raise ValueError(f"every must be at least {MIN_EVERY} seconds, got {every!r}")
        longest = MAX_KEY_LENGTH - len(period_key("", every, 2**63))
        if not 0 < len(name) <= longest:
            raise ValueError(f"periodic name must have 1 to {longest} characters, got {len(name)}")
        if not callable(job):
            raise TypeError(
                f"job must be a callable that returns a Job (schedule {name!r}),"
                f" got {type(job).__name__}"
            )
        with self._lock:
            if self._stopped.is_set():
                raise QueueClosed("the queue is closed; declare schedules on an open queue")
            known = self._every.get(name)
            if known is not None:
                if known != float(every):
                    raise ValueError(
                        f"schedule {name!r} was declared with every={known!r} in this queue;"
                        f" every={every!r} would be another schedule: give it another name"
                    )
                return
            self._every[name] = float(every)
            schedule = _Schedule(self._queue, name, float(every), job, self._stopped)
            thread = threading.Thread(
                target=schedule.run, name=f"final-periodic-{name}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Stop every schedule, and wait for one that is enqueueing to finish.

        ``timeout`` (seconds, or None for no limit) bounds that wait, across all the
        schedules: a ``job()`` that hangs is left running on its daemon thread, and
        its enqueue, if it ever comes, finds the queue closed and is dropped.
        """
        endtime = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._stopped.set()
            threads = list(self._threads)
        for thread in threads:
            if thread is not threading.current_thread():  # close() from job() itself
                thread.join(None if endtime is None else max(0.0, endtime - time.monotonic()))


class _Schedule:
    """One schedule's loop: enqueue the current period's job, wait for the next."""

    def __init__(
        self,
        queue: _Queue,
        name: str,
        every: float,
        job: Callable[[], Job],
        stopped: threading.Event,
    ) -> None:
        self._queue, self._name, self._every, self._job = queue, name, every, job
        self._stopped = stopped
        self._last: str | None = None  # the latest job of this schedule seen in the queue

    def run(self) -> None:
        period = period_of(time.time(), self._every)
        while not self._stopped.is_set():
            try:
                self._enqueue(period)
            except QueueClosed:
                return
            except Exception:  # a schedule's thread must not die of one bad period
                logger.exception("periodic %r: period %d failed", self._name, period)
            # The next period by the wall clock, read again at least every _LOOK
            # seconds; a clock stepped back waits, one stepped forward is seen at once.
            while True:
                now = time.time()
                if period_of(now, self._every) > period:
                    break
                wait = min(_LOOK, (period + 1) * self._every - now)
                if self._stopped.wait(max(wait, 0.001)):
                    return
            period = period_of(now, self._every)  # periods slept through: only this one

    def _enqueue(self, period: int) -> None:
        """Enqueue ``period``'s job unless its key is used or the previous job is unsettled."""
        key = period_key(self._name, self._every, period)
        job: Job | None = None  # made once per period, whatever the tries to enqueue it
        while not self._stopped.is_set():
            try:
                if job is None:
                    waiting = self._unsettled(period)
                    if waiting is not None:
                        logger.warning(
                            "periodic %r: period %d skipped, job %s of an earlier one has"
                            " not settled yet",
                            self._name,
                            period,
                            waiting,
                        )
                        return
                    job = self._make(key)
                    if job is None:
                        return
                self._queue.enqueue(job, timeout=_RETRY)
                self._last = key
                return
            except DuplicateJob as taken:  # another process, or an earlier start, did
                self._last = taken.job_id
                return
            except (QueueFull, StoreError) as error:
                if period_of(time.time(), self._every) > period:
                    logger.warning("periodic %r: period %d skipped: %s", self._name, period, error)
                    return
                self._stopped.wait(_RETRY)

    def _unsettled(self, period: int) -> str | None:
        """The latest earlier job of this schedule if it has not settled, else None."""
        previous = period_key(self._name, self._every, period - 1)
        for job_id in dict.fromkeys((previous, self._last)):
            if job_id is not None and self._queue.status(job_id) not in _SETTLED:
                return job_id
        return None

    def _make(self, key: str) -> Job | None:
        """``job()`` under the period's key, or None (logged) when it does not give one."""
        try:
            job = self._job()
        except Exception:
            logger.exception("periodic %r: job() raised; period skipped", self._name)
            return None
        if not isinstance(job, Job):
            logger.error(
                "periodic %r: job() returned %s, not a Job; period skipped",
                self._name,
                type(job).__name__,
            )
            return None
        return dataclasses.replace(job, id=key, idempotency_key=key)
