"""The Python queues a user would otherwise pick, as sessions (``benchmarks/session.py``).

Each adapter drives its queue the way the library's documentation shows, and gives it
the same workload as the tiers: one producer puts job number ``i``, ``workers``
threads take jobs, run the handler and acknowledge, and ``drain()`` returns once
every job submitted has run. Each runs with its library's
defaults, which are also its promise about durability:

- ``persistqueue``: ``persistqueue.SQLiteAckQueue`` (rollback journal, SQLite's default
  ``synchronous=FULL``: a ``put`` survives power loss), one connection shared by the
  threads (``multithreading=True``, as its multi-threading example has it); workers
  ``get``, run, ``ack``. They get ``raw=True`` items and ack by ``id``: ``ack(item)``,
  the README's spelling, would look the item up among the unacknowledged by value.
- ``litequeue``: ``litequeue.LiteQueue`` (WAL, ``synchronous=NORMAL``: a ``put``
  survives the process dying, not the machine), one instance per thread as its
  documentation suggests; workers ``pop``, run, ``done``. It has no blocking ``pop``,
  so an idle worker polls every millisecond.
- ``huey-memory`` and ``huey-sqlite``: huey's ``MemoryHuey`` and ``SqliteHuey`` (WAL,
  SQLite's default ``synchronous=FULL``) with a thread consumer of ``workers`` threads;
  the handler is a huey task, and an idle huey worker sleeps with backoff as huey's
  consumer does.

Importing this module needs the ``peers`` extra: ``pip install -e '.[peers]'``.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import huey
import litequeue
import persistqueue

from benchmarks.session import Handler, Session, System, noop


class _Counted:
    """Counts handled jobs so that ``drain()`` can wait for the count to reach the submitted."""

    def __init__(self, handler: Handler | None) -> None:
        self._handler: Callable[[Any], None] = noop if handler is None else handler
        self._cond = threading.Condition()
        self.submitted = 0
        self._done = 0

    def run(self, i: int) -> None:
        self._handler(i)
        with self._cond:
            self._done += 1
            if self._done >= self.submitted:
                self._cond.notify_all()

    def drain(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._done >= self.submitted)


class _Threads:
    """Worker threads running ``loop(stop)`` until the session closes."""

    def __init__(self, workers: int, loop: Callable[[threading.Event], None]) -> None:
        self.stop = threading.Event()
        self._threads = [threading.Thread(target=loop, args=(self.stop,)) for _ in range(workers)]
        for t in self._threads:
            t.start()

    def close(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join()


class PersistQueueSession(_Counted):
    def __init__(self, handler: Handler | None, workers: int, workdir: Path) -> None:
        super().__init__(handler)
        self._q = persistqueue.SQLiteAckQueue(str(workdir / "persistqueue"), multithreading=True)
        self.threads = _Threads(workers, self._work)

    def _work(self, stop: threading.Event) -> None:
        q = self._q
        while not stop.is_set():
            try:
                item = q.get(block=True, timeout=0.05, raw=True)
            except persistqueue.Empty:
                continue
            self.run(item["data"])
            q.ack(id=item["pqid"])

    def submit(self, i: int) -> None:
        with self._cond:
            self.submitted += 1
        self._q.put(i)

    def submit_many(self, ids: Sequence[int]) -> None:
        for i in ids:
            self.submit(i)


@contextlib.contextmanager
def open_persistqueue(handler: Handler | None, workers: int, workdir: Path) -> Iterator[Session]:
    s = PersistQueueSession(handler, workers, workdir)
    try:
        yield s
    finally:
        s.threads.close()


class LiteQueueSession(_Counted):
    def __init__(self, handler: Handler | None, workers: int, workdir: Path) -> None:
        super().__init__(handler)
        self._path = workdir / "litequeue.db"
        self._producer = litequeue.LiteQueue(str(self._path))
        self.threads = _Threads(workers, self._work)

    def _work(self, stop: threading.Event) -> None:
        q = litequeue.LiteQueue(str(self._path))
        try:
            while not stop.is_set():
                message = q.pop()
                if message is None:
                    stop.wait(0.001)
                    continue
                self.run(int(message.data))
                q.done(message.message_id)
        finally:
            q.close()

    def submit(self, i: int) -> None:
        with self._cond:
            self.submitted += 1
        self._producer.put(str(i))

    def submit_many(self, ids: Sequence[int]) -> None:
        for i in ids:
            self.submit(i)

    def close(self) -> None:
        self.threads.close()
        self._producer.close()


@contextlib.contextmanager
def open_litequeue(handler: Handler | None, workers: int, workdir: Path) -> Iterator[Session]:
    s = LiteQueueSession(handler, workers, workdir)
    try:
        yield s
    finally:
        s.close()


class HueySession(_Counted):
    def __init__(self, app: huey.Huey, handler: Handler | None, workers: int) -> None:
        super().__init__(handler)
        self._task = app.task()(self.run)
        self._consumer = app.create_consumer(workers=workers, worker_type="thread", periodic=False)
        # The consumer sets signal handlers for a process of its own; put ours back.
        saved = {
            sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }
        self._consumer.start()
        for sig, action in saved.items():
            signal.signal(sig, action)

    def submit(self, i: int) -> None:
        with self._cond:
            self.submitted += 1
        self._task(i)

    def submit_many(self, ids: Sequence[int]) -> None:
        for i in ids:
            self.submit(i)

    def close(self) -> None:
        self._consumer.stop(graceful=True)


def huey_system(make: Callable[[Path], huey.Huey]) -> System:
    @contextlib.contextmanager
    def open_huey(handler: Handler | None, workers: int, workdir: Path) -> Iterator[Session]:
        app = make(workdir)
        s = HueySession(app, handler, workers)
        try:
            yield s
        finally:
            s.close()
            app.storage.close()

    return open_huey


PEERS: dict[str, System] = {
    "persistqueue": open_persistqueue,
    "litequeue": open_litequeue,
    "huey-memory": huey_system(lambda _: huey.MemoryHuey("bench", results=False)),
    "huey-sqlite": huey_system(
        lambda d: huey.SqliteHuey("bench", filename=str(d / "huey.db"), results=False)
    ),
}
DURABLE_PEERS = ("persistqueue", "litequeue", "huey-sqlite")
