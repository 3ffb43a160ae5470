"""final on PostgreSQL beside procrastinate and pgqueuer, on the same server, no-op jobs.

Four figures per system, each system in a database of its own (created for the run,
dropped after it), every table emptied between rounds:

- ``drain``: N jobs enqueued beforehand (in calls of 1,000), then workers start; jobs/s
  from the workers' start to the last job's end, the start-up included;
- ``enqueue_one``: N jobs, one call (one commit) each, no worker running;
- ``enqueue_many``: N jobs in calls of 1,000, no worker running;
- ``latency``: jobs enqueued one at a time at a paced rate while the workers run; each
  job's delay from the enqueue call to its handler's start, in ms.

The three are driven the way their documentation shows:

- ``final-pg``: ``JobQueue(handler, dsn=..., workers=4)``: one process, four worker
  threads; four connections (API, claim and settle, upkeep, LISTEN), and a
  ``workers=0`` handle (one connection) that enqueues.
- ``procrastinate``: an ``App`` over a ``PsycopgConnector`` (a psycopg pool), a task
  ``defer``-ed or ``batch_defer``-ed, and ``run_worker(concurrency=4)`` in one process
  (``wait=False`` to drain: the worker leaves once the queue is empty).
- ``pgqueuer``: the asyncpg driver; ``Queries.enqueue`` with one job or lists of them;
  four ``QueueManager`` dequeuers (each its own connection) in one event loop, each
  taking batches of 10, as the issue's figures were measured.

Needs a server (``PGBENCH_DSN``, default the local one of the project's tests) and the
``peers`` extra. ``python -m benchmarks.pg_peers --soak 600`` runs the soak.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

import psycopg

ADMIN_DSN = os.environ.get("PGBENCH_DSN", "postgresql://postgres@127.0.0.1:5432/test")
WORKERS = 4
BATCH = 1000
UNBOUNDED = 1_000_000_000  # final counts each lane before an insert: no bound to hit
SYSTEMS = ("final-pg", "pgqueuer", "procrastinate")


def server_answers() -> str | None:
    """None when the server answers, else why not."""
    try:
        with psycopg.connect(ADMIN_DSN, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as error:
        return f"no PostgreSQL at {ADMIN_DSN}: {error}"
    return None


def _dsn_for(database: str) -> str:
    # A URI, which asyncpg reads too: the same server, another database.
    parts = urllib.parse.urlsplit(ADMIN_DSN)
    return urllib.parse.urlunsplit(parts._replace(path="/" + database))


@contextlib.contextmanager
def database(system: str) -> Iterator[str]:
    """A new database for ``system``, dropped on the way out; yields its dsn."""
    name = f"bench_{system.replace('-', '_')}_{os.getpid()}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield _dsn_for(name)
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def empty_tables(dsn: str) -> None:
    """Truncate every table of the public schema but a schema's version row."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename <> 'jobq_version'"
            )
        ]
        if names:
            conn.execute(f"TRUNCATE {', '.join(names)}")
        conn.execute("VACUUM ANALYZE")


class _Countdown:
    """Counts handler starts; ``wait()`` returns when ``n`` have started."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._done = 0
        self._lock = threading.Lock()
        self.finished = threading.Event()
        self.starts: dict[int, float] = {}

    def hit(self, i: int) -> None:
        now = time.perf_counter()
        with self._lock:
            self.starts[i] = now
            self._done += 1
            if self._done >= self.n:
                self.finished.set()


class PgSystem(Protocol):
    def drain(self, n: int) -> float: ...
    def enqueue_one(self, n: int) -> float: ...
    def enqueue_many(self, n: int) -> float: ...
    def latency(self, rate: float, seconds: float) -> list[float]: ...


def _paced(rate: float, seconds: float, send: Callable[[int], None]) -> dict[int, float]:
    """Call ``send(i)`` at ``rate`` a second for ``seconds``; each call's start time."""
    sent: dict[int, float] = {}
    began = time.perf_counter()
    for i in range(int(rate * seconds)):
        due = began + i / rate
        while (now := time.perf_counter()) < due:
            time.sleep(min(due - now, 0.002))
        sent[i] = time.perf_counter()
        send(i)
    return sent


def _delays(sent: dict[int, float], starts: dict[int, float]) -> list[float]:
    return sorted((starts[i] - sent[i]) * 1000 for i in sent if i in starts)


# -- final on PostgreSQL -------------------------------------------------------------------


@dataclass
class FinalPg:
    dsn: str
    workers: int = WORKERS

    def _handle(self) -> Any:
        from final import JobQueue

        return JobQueue(lambda job: None, dsn=self.dsn, workers=0, queue_size=UNBOUNDED)

    def _jobs(self, n: int) -> list[Any]:
        from final import Job

        return [Job(str(i)) for i in range(n)]

    def drain(self, n: int) -> float:
        from final import JobQueue

        empty_tables(self.dsn)
        with self._handle() as q:
            jobs = self._jobs(n)
            for k in range(0, n, BATCH):
                q.enqueue_many(jobs[k : k + BATCH])
        count = _Countdown(n)
        began = time.perf_counter()
        q = JobQueue(lambda job: count.hit(int(job.id)), dsn=self.dsn, workers=self.workers)
        count.finished.wait()
        elapsed = time.perf_counter() - began
        q.close()
        return n / elapsed

    def enqueue_one(self, n: int) -> float:
        empty_tables(self.dsn)
        jobs = self._jobs(n)
        with self._handle() as q:
            began = time.perf_counter()
            for job in jobs:
                q.enqueue(job)
            return n / (time.perf_counter() - began)

    def enqueue_many(self, n: int) -> float:
        empty_tables(self.dsn)
        jobs = self._jobs(n)
        with self._handle() as q:
            began = time.perf_counter()
            for k in range(0, n, BATCH):
                q.enqueue_many(jobs[k : k + BATCH])
            return n / (time.perf_counter() - began)

    def latency(self, rate: float, seconds: float) -> list[float]:
        from final import Job, JobQueue

        empty_tables(self.dsn)
        count = _Countdown(int(rate * seconds))
        with (
            JobQueue(lambda job: count.hit(int(job.id)), dsn=self.dsn, workers=self.workers),
            self._handle() as producer,
        ):
            sent = _paced(rate, seconds, lambda i: producer.enqueue(Job(str(i))))
            count.finished.wait(30)
        return _delays(sent, count.starts)


# -- pgqueuer --------------------------------------------------------------------------------


@dataclass
class PgQueuer:
    dsn: str
    workers: int = WORKERS
    _installed: bool = field(default=False, init=False)

    async def _queries(self) -> tuple[Any, Any]:
        import asyncpg
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        conn = await asyncpg.connect(self.dsn)
        queries = Queries(AsyncpgDriver(conn))
        if not self._installed:
            await queries.install()
            self._installed = True
        return conn, queries

    async def _dequeuers(self, count: _Countdown) -> tuple[list[Any], list[Any], Any]:
        """Start ``workers`` QueueManagers; returns them, their connections, their tasks."""
        import asyncpg
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.models import Job
        from pgqueuer.qm import QueueManager
        from pgqueuer.queries import Queries

        managers, conns = [], []
        for _ in range(self.workers):
            conn = await asyncpg.connect(self.dsn)
            qm = QueueManager(Queries(AsyncpgDriver(conn)))

            @qm.entrypoint("noop")
            async def noop(job: Job) -> None:
                count.hit(int(job.payload or b"0"))

            managers.append(qm)
            conns.append(conn)
        tasks = asyncio.gather(
            *(qm.run(batch_size=10, dequeue_timeout=timedelta(seconds=1)) for qm in managers)
        )
        return managers, conns, tasks

    async def _stop(self, managers: list[Any], conns: list[Any], tasks: Any) -> None:
        for qm in managers:
            qm.shutdown.set()
        await asyncio.wait_for(tasks, 30)
        for conn in conns:
            await conn.close()

    def drain(self, n: int) -> float:
        async def run() -> float:
            conn, queries = await self._queries()
            await self._empty(conn)
            for k in range(0, n, BATCH):
                m = min(BATCH, n - k)
                ids = [str(i).encode() for i in range(k, k + m)]
                await queries.enqueue(["noop"] * m, ids, [0] * m)
            await conn.close()
            count = _Countdown(n)
            began = time.perf_counter()
            managers, conns, tasks = await self._dequeuers(count)
            while not count.finished.is_set():
                if tasks.done():
                    tasks.result()  # a dequeuer that stopped: its error
                    raise RuntimeError("the pgqueuer dequeuers stopped early")
                await asyncio.sleep(0.002)
            elapsed = time.perf_counter() - began
            await self._stop(managers, conns, tasks)
            return n / elapsed

        return asyncio.run(run())

    async def _empty(self, conn: Any) -> None:
        await conn.execute("TRUNCATE pgqueuer, pgqueuer_log, pgqueuer_statistics")

    def enqueue_one(self, n: int) -> float:
        async def run() -> float:
            conn, queries = await self._queries()
            await self._empty(conn)
            began = time.perf_counter()
            for i in range(n):
                await queries.enqueue("noop", str(i).encode())
            elapsed = time.perf_counter() - began
            await conn.close()
            return n / elapsed

        return asyncio.run(run())

    def enqueue_many(self, n: int) -> float:
        async def run() -> float:
            conn, queries = await self._queries()
            await self._empty(conn)
            began = time.perf_counter()
            for k in range(0, n, BATCH):
                m = min(BATCH, n - k)
                ids = [str(i).encode() for i in range(k, k + m)]
                await queries.enqueue(["noop"] * m, ids, [0] * m)
            elapsed = time.perf_counter() - began
            await conn.close()
            return n / elapsed

        return asyncio.run(run())

    def latency(self, rate: float, seconds: float) -> list[float]:
        async def run() -> list[float]:
            conn, queries = await self._queries()
            await self._empty(conn)
            count = _Countdown(int(rate * seconds))
            managers, conns, tasks = await self._dequeuers(count)
            await asyncio.sleep(0.5)  # the dequeuers are listening
            sent: dict[int, float] = {}
            began = time.perf_counter()
            for i in range(count.n):
                due = began + i / rate
                if (wait := due - time.perf_counter()) > 0:
                    await asyncio.sleep(wait)
                sent[i] = time.perf_counter()
                await queries.enqueue("noop", str(i).encode())
            deadline = time.perf_counter() + 30
            while not count.finished.is_set() and time.perf_counter() < deadline:
                await asyncio.sleep(0.01)
            await self._stop(managers, conns, tasks)
            await conn.close()
            return _delays(sent, count.starts)

        return asyncio.run(run())


# -- procrastinate -----------------------------------------------------------------------------


@dataclass
class Procrastinate:
    dsn: str
    workers: int = WORKERS
    _installed: bool = field(default=False, init=False)

    def _app(self, count: _Countdown | None) -> Any:
        import procrastinate

        app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=self.dsn))

        @app.task(name="noop")
        def noop(i: int) -> None:
            if count is not None:
                count.hit(i)

        return app

    def _open(self, count: _Countdown | None) -> Any:
        app = self._app(count)
        app.open()
        if not self._installed:
            app.schema_manager.apply_schema()
            self._installed = True
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("TRUNCATE procrastinate_jobs CASCADE")
        return app

    def _batch(self, app: Any, n: int) -> None:
        task = app.tasks["noop"]
        for k in range(0, n, BATCH):
            task.batch_defer(*({"i": i} for i in range(k, min(n, k + BATCH))))

    def drain(self, n: int) -> float:
        count = _Countdown(n)
        app = self._open(count)
        try:
            self._batch(app, n)
            began = time.perf_counter()
            app.run_worker(concurrency=self.workers, wait=False, install_signal_handlers=False)
            count.finished.wait(60)
            return n / (time.perf_counter() - began)
        finally:
            app.close()

    def enqueue_one(self, n: int) -> float:
        app = self._open(None)
        try:
            task = app.tasks["noop"]
            began = time.perf_counter()
            for i in range(n):
                task.defer(i=i)
            return n / (time.perf_counter() - began)
        finally:
            app.close()

    def enqueue_many(self, n: int) -> float:
        app = self._open(None)
        try:
            began = time.perf_counter()
            self._batch(app, n)
            return n / (time.perf_counter() - began)
        finally:
            app.close()

    def latency(self, rate: float, seconds: float) -> list[float]:
        count = _Countdown(int(rate * seconds))
        app = self._open(count)
        stop = threading.Event()

        async def work() -> None:
            async with app.open_async():
                worker = asyncio.ensure_future(
                    app.run_worker_async(
                        concurrency=self.workers, wait=True, install_signal_handlers=False
                    )
                )
                while not stop.is_set():
                    await asyncio.sleep(0.05)
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker

        thread = threading.Thread(target=asyncio.run, args=(work(),))
        thread.start()
        try:
            time.sleep(1.0)  # the worker is listening
            task = app.tasks["noop"]
            sent = _paced(rate, seconds, lambda i: task.defer(i=i))
            count.finished.wait(30)
            return _delays(sent, count.starts)
        finally:
            stop.set()
            thread.join()
            app.close()


FACTORIES: dict[str, Callable[[str], PgSystem]] = {
    "final-pg": FinalPg,
    "pgqueuer": PgQueuer,
    "procrastinate": Procrastinate,
}


@contextlib.contextmanager
def opened(systems: tuple[str, ...] = SYSTEMS) -> Iterator[dict[str, PgSystem]]:
    """Each system over a database of its own, for the length of the block."""
    with contextlib.ExitStack() as stack:
        yield {s: FACTORIES[s](stack.enter_context(database(s))) for s in systems}


def percentile(sorted_ms: list[float], p: float) -> float:
    if not sorted_ms:
        return float("nan")
    return sorted_ms[min(len(sorted_ms) - 1, int(p / 100 * len(sorted_ms)))]


def table_stats(dsn: str, table: str = "jobq_jobs") -> dict[str, float]:
    """The table's live and dead rows (as the server's statistics last counted them),
    its size with its indexes (bytes), and how many vacuums it has had."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT n_live_tup, n_dead_tup, pg_total_relation_size(relid),"
            " vacuum_count + autovacuum_count"
            " FROM pg_stat_user_tables WHERE relname = %s",
            (table,),
        ).fetchone()
        waiting = conn.execute(
            "SELECT count(*) FROM jobq_jobs WHERE status IN ('queued', 'processing')"
        ).fetchone()
    live, dead, size, vacuums = row if row is not None else (0, 0, 0, 0)
    return {
        "live": live,
        "dead": dead,
        "bytes": size,
        "vacuums": vacuums,
        "backlog": 0 if waiting is None else waiting[0],
    }


def autovacuum() -> bool:
    """Whether the server runs autovacuum (the soak's figures depend on it)."""
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        row = conn.execute("SELECT current_setting('autovacuum')::bool").fetchone()
    return bool(row and row[0])


def soak(rate: float, seconds: float, sample: float = 30.0) -> list[dict[str, float]]:
    """final-pg at ``rate`` jobs/s (one producer, paced) for ``seconds``: a sample each
    ``sample`` seconds of jobs/s completed, dead tuples and the table's size."""
    from final import Job, JobQueue

    samples: list[dict[str, float]] = []
    with database("final-pg-soak") as dsn:
        done = [0]
        lock = threading.Lock()

        def handler(job: Any) -> None:
            with lock:
                done[0] += 1

        with (
            JobQueue(handler, dsn=dsn, workers=WORKERS, retention=60.0) as q,
            # A real bound (ten seconds of jobs): enqueue counts the lane up to it, and an
            # unbounded count would read the whole backlog before every call.
            JobQueue(lambda job: None, dsn=dsn, workers=0, queue_size=int(rate * 10)) as producer,
        ):
            began = time.perf_counter()
            last_t, last_done, i = began, 0, 0
            next_sample = began + sample
            while (now := time.perf_counter()) < began + seconds:
                due = began + i / rate
                if now < due:
                    time.sleep(min(due - now, 0.002))
                    continue
                # In calls of up to 100 when behind, one job a call when on time.
                behind = min(100, int((now - due) * rate) + 1)
                producer.enqueue_many([Job(str(i + k)) for k in range(behind)])
                i += behind
                if now >= next_sample:
                    with lock:
                        d = done[0]
                    stats = table_stats(dsn)
                    samples.append(
                        {"t": now - began, "jobs_per_s": (d - last_done) / (now - last_t), **stats}
                    )
                    print(json.dumps(samples[-1]), flush=True)
                    last_t, last_done = now, d
                    next_sample += sample
            del q
    return samples


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--soak", type=float, help="soak for this many seconds")
    parser.add_argument("--rate", type=float, default=1500.0, help="soak's jobs/s")
    parser.add_argument("--json", help="write the soak's samples here")
    args = parser.parse_args(argv)
    if args.soak:
        samples = soak(args.rate, args.soak)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"rate": args.rate, "samples": samples}, f, indent=1)


if __name__ == "__main__":
    main()
