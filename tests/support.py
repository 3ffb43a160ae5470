"""Helpers the tests share: the tiers, their options, and a recording handler.

Tests synchronise on conditions and events through these helpers, never on sleeps.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from types import ModuleType
from typing import Any

# The tiers the suite runs against; the list grows as tiers land. "final-pg" is
# final on PostgreSQL (``dsn=``), each test in a schema of its own (tests/pg.py);
# "final-process" is final with ``executor="process"``, the test's handler relayed
# from the children to the test's process (tests/relay.py).
TIERS = ("naive", "improved", "final", "final-pg", "final-process")
# The packages among them: what the README's matrix and lessons are about.
PACKAGES = ("naive", "improved", "final")

# The options each tier takes (beyond the handler), as the contract fixes them.
OPTIONS: dict[str, frozenset[str]] = {
    "naive": frozenset({"workers"}),
    "improved": frozenset(
        {"workers", "queue_size", "max_retries", "backoff", "max_backoff", "job_timeout"}
    ),
    "final": frozenset(
        {
            "workers",
            "queue_size",
            "max_retries",
            "backoff",
            "max_backoff",
            "job_timeout",
            "fairness",
            "rate_limit",
            "path",
            "durability",
            "history",
            "retention",
        }
    ),
}
ALL_OPTIONS = OPTIONS["final"]
# final's signature; on PostgreSQL the database is the store, so ``Tier.queue``
# leaves out what names another one (a path, its durability, memory's history).
OPTIONS["final-pg"] = OPTIONS["final"]
OPTIONS["final-process"] = OPTIONS["final"]
_NOT_WITH_A_DSN = frozenset({"path", "durability", "history"})

# Long enough for a loaded 2-core machine; only reached when something is wrong.
PATIENCE = 10.0


class Boom(Exception):
    """What a test handler raises to fail an attempt."""


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    """Poll ``predicate`` until it holds, for at most ``PATIENCE`` seconds.

    A poll, not an event: for what only shows from outside (another process's work,
    a row in the database, a store's background thread), which nothing signals.
    """
    deadline = time.monotonic() + PATIENCE
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {PATIENCE}s waiting for {what}")
        time.sleep(0.01)


class Starts:
    """A handler noting when (``time.time()``, the clock of the moment) each job first
    started, and waking whoever waits for it."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self._cond = threading.Condition()

    def __call__(self, job: Any) -> None:
        with self._cond:
            self.at.setdefault(job.id, time.time())
            self._cond.notify_all()

    def of(self, job_id: str) -> float:
        """When ``job_id`` first started; waits for it."""
        with self._cond:
            assert self._cond.wait_for(lambda: job_id in self.at, PATIENCE), job_id
            return self.at[job_id]

    def wait(self, n: int) -> None:
        """Wait until ``n`` jobs have started."""
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.at) >= n, PATIENCE), self.at


class Recorder:
    """A handler that records every attempt, holds chosen jobs at a gate, fails others.

    ``hold(job)`` says whether the attempt waits at the gate until ``release()``;
    ``fail(job, attempt_number)`` says whether the attempt raises ``Boom``.
    """

    def __init__(
        self,
        *,
        hold: Callable[[Any], bool] = lambda job: False,
        fail: Callable[[Any, int], bool] = lambda job, n: False,
    ) -> None:
        self._hold = hold
        self._fail = fail
        self._gate = threading.Event()
        self._cond = threading.Condition()
        self.attempts: Counter[str] = Counter()
        self.order: list[str] = []  # ids in the order their attempts started
        self.succeeded: list[str] = []

    def __call__(self, job: Any) -> None:
        with self._cond:
            self.attempts[job.id] += 1
            number = self.attempts[job.id]
            self.order.append(job.id)
            self._cond.notify_all()
        if self._hold(job):
            self._gate.wait()
        if self._fail(job, number):
            raise Boom(f"{job.id} attempt {number}")
        with self._cond:
            self.succeeded.append(job.id)
            self._cond.notify_all()

    def release(self) -> None:
        self._gate.set()

    def wait_until(self, predicate: Callable[[Recorder], bool], what: str) -> None:
        """Wait (on a condition, not a sleep) until ``predicate(self)`` holds."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self), PATIENCE):
                raise AssertionError(f"gave up after {PATIENCE}s waiting for {what}")

    def wait_started(self, n: int) -> None:
        self.wait_until(lambda r: len(r.order) >= n, f"{n} attempts to start")


class Tier:
    """One tier under test: its module, and queues that are closed after the test."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.module: ModuleType = importlib.import_module(name.partition("-")[0])
        self._queues: list[Any] = []
        self._recorders: list[Recorder] = []
        self._database: Any = None  # final-pg: the test's schema, made at its first queue

    def __repr__(self) -> str:
        return f"Tier({self.name!r})"

    @property
    def Job(self) -> Any:
        return self.module.Job

    @property
    def Priority(self) -> Any:
        return self.module.Priority

    @property
    def QueueFull(self) -> Any:
        return self.module.QueueFull

    @property
    def QueueClosed(self) -> Any:
        return self.module.QueueClosed

    def supports(self, option: str) -> bool:
        return option in OPTIONS[self.name]

    def queue(self, handler: Callable[[Any], object], **options: Any) -> Any:
        """A JobQueue of this tier, given the options it takes and none it lacks.

        A test states the setting it wants (say ``queue_size=3``); on a tier without
        that option the test then shows what the tier does without it.
        """
        kept = {k: v for k, v in options.items() if k in OPTIONS[self.name]}
        if isinstance(handler, Recorder):
            self._recorders.append(handler)
        if self.name == "final-pg":
            kept = {k: v for k, v in kept.items() if k not in _NOT_WITH_A_DSN}
            kept["dsn"] = self._schema_dsn()
        if self.name == "final-process":
            from tests import relay

            relay.serve(handler)
            handler, kept["executor"] = relay.relay, "process"
        q = self.module.JobQueue(handler, **kept)
        self._queues.append(q)
        return q

    def store_dsn(self) -> str:
        """final-pg: the dsn of the test's schema, for a child process; "" for the others."""
        return self._schema_dsn() if self.name == "final-pg" else ""

    def _schema_dsn(self) -> str:
        from tests import pg

        if self._database is None:
            self._database = pg.new_schema(pg.answering_server())
        dsn: str = self._database.queue_dsn
        return dsn

    def cleanup(self) -> None:
        for recorder in self._recorders:
            recorder.release()
        for q in self._queues:
            q.close(timeout=PATIENCE)
        if self._database is not None:
            from tests import pg

            pg.drop_schema(self._database)
