"""The scaling curve on PostgreSQL: drain jobs/s with 1, 2 and 4 worker processes.

Each system runs in worker *processes*, each the way ``benchmarks/pg_peers.py`` runs
one (final: ``JobQueue(dsn=..., workers=4)``; pgqueuer: four dequeuers of batch 10;
procrastinate: ``run_worker(concurrency=4)``), no-op handlers. The processes start
first, on an empty queue, and say when they are ready; then N jobs are enqueued in
one transaction (one commit: every process is woken at once), and the clock runs
from that commit until the database says no job is left waiting or running. So the
figure is the steady drain of warm processes, not their start-up.

``child(system, dsn)`` is one such process (it runs until SIGTERM);
``drain_with_processes(system, dsn, processes, n)`` is one figure.
``benchmarks/test_pg.py`` measures the curve in ``make bench``; the notebook
``notebooks/postgres_scaling.ipynb`` draws it.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.pg_peers import WORKERS, empty_tables

ROOT = Path(__file__).resolve().parents[1]
PROCESSES = (1, 2, 4)
READY = "ready"
# A worker process: imported, not run as __main__ (procrastinate warns of an App made there).
_CHILD = "import sys; from benchmarks.pg_scaling import child; child(sys.argv[1], sys.argv[2])"
# What is left to do, per system: jobs waiting or running.
REMAINING = {
    "final-pg": "SELECT count(*) FROM jobq_jobs WHERE status IN ('queued', 'processing')",
    "pgqueuer": "SELECT count(*) FROM pgqueuer",
    "procrastinate": "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')",
}


def drain_with_processes(system: str, dsn: str, processes: int, n: int) -> float:
    """Jobs/s for ``processes`` worker processes of ``system`` to drain ``n`` no-op jobs.

    ``dsn`` is a database of the system's own, its tables installed (``pg_peers``
    makes it). Raises ``RuntimeError`` if a process fails to start or the drain
    takes over five minutes.
    """
    empty_tables(dsn)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, system, dsn],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            if child.stdout.readline().strip() != READY:
                raise RuntimeError(f"a {system} worker process did not start")
        began = _enqueue(system, dsn, n)
        with psycopg.connect(dsn, autocommit=True) as conn:
            deadline = time.perf_counter() + 300
            while _remaining(conn, system):
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"{system} did not drain {n} jobs in five minutes")
                time.sleep(0.005)  # a harness polling the database: the processes share it
        return n / (time.perf_counter() - began)
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            if child.stdout is not None:
                child.stdout.close()


def _remaining(conn: psycopg.Connection[Any], system: str) -> int:
    row = conn.execute(REMAINING[system]).fetchone()
    return 0 if row is None else int(row[0])


def _enqueue(system: str, dsn: str, n: int) -> float:
    """Enqueue ``n`` jobs in one transaction; return the time it committed."""
    if system == "final-pg":
        from final import Job, JobQueue

        with JobQueue(lambda job: None, dsn=dsn, workers=0, queue_size=n) as q:
            q.enqueue_many([Job(str(i)) for i in range(n)])  # one call, one transaction
            return time.perf_counter()
    if system == "pgqueuer":

        async def enqueue() -> float:
            import asyncpg
            from pgqueuer.db import AsyncpgDriver
            from pgqueuer.queries import Queries

            conn = await asyncpg.connect(dsn)
            await Queries(AsyncpgDriver(conn)).enqueue(
                ["noop"] * n, [str(i).encode() for i in range(n)], [0] * n
            )
            done = time.perf_counter()
            await conn.close()
            return done

        return asyncio.run(enqueue())
    app = _procrastinate_app(dsn)
    with app.open():
        app.tasks["noop"].batch_defer(*({"i": i} for i in range(n)))
        return time.perf_counter()


def _procrastinate_app(dsn: str) -> Any:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(name="noop")
    def noop(i: int) -> None:
        pass

    return app


# -- one worker process --------------------------------------------------------------------


def child(system: str, dsn: str) -> None:
    """Run one worker process of ``system`` on ``dsn``; print READY once it waits for
    jobs, and leave at SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if system == "final-pg":
        from final import JobQueue

        with JobQueue(lambda job: None, dsn=dsn, workers=WORKERS):
            print(READY, flush=True)
            stop.wait()
    elif system == "pgqueuer":
        asyncio.run(_pgqueuer_child(dsn, stop))
    else:
        asyncio.run(_procrastinate_child(dsn, stop))


async def _pgqueuer_child(dsn: str, stop: threading.Event) -> None:
    import asyncpg
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.models import Job
    from pgqueuer.qm import QueueManager
    from pgqueuer.queries import Queries

    managers, conns = [], []
    for _ in range(WORKERS):
        conn = await asyncpg.connect(dsn)
        qm = QueueManager(Queries(AsyncpgDriver(conn)))

        @qm.entrypoint("noop")
        async def noop(job: Job) -> None:
            pass

        managers.append(qm)
        conns.append(conn)
    tasks = asyncio.gather(
        *(qm.run(batch_size=10, dequeue_timeout=timedelta(seconds=1)) for qm in managers)
    )
    await asyncio.sleep(0.5)  # the dequeuers are listening
    print(READY, flush=True)
    while not stop.is_set():
        await asyncio.sleep(0.05)
    for qm in managers:
        qm.shutdown.set()
    await asyncio.wait_for(tasks, 30)
    for conn in conns:
        await conn.close()


async def _procrastinate_child(dsn: str, stop: threading.Event) -> None:
    import contextlib

    app = _procrastinate_app(dsn)
    async with app.open_async():
        worker = asyncio.ensure_future(
            app.run_worker_async(concurrency=WORKERS, wait=True, install_signal_handlers=False)
        )
        await asyncio.sleep(1.0)  # the worker is listening
        print(READY, flush=True)
        while not stop.is_set():
            await asyncio.sleep(0.05)
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
