"""The workloads, defined once: the benchmark suite and the notebooks both call these.

Every system is opened as a ``Session`` (``benchmarks/session.py``): ``submit(i)``
hands it job number ``i``, ``drain()`` returns once every job submitted has run, and
leaving the ``with`` block shuts it down. Each system is driven the way its users call
it. The handler receives the job's number, so that a workload can record when job
``i`` started; ``handler=None`` means a no-op job, passed to the system as directly as
it allows (no per-job conversion), for the throughput figures.

The systems are the three tiers, the final tier on SQLite, the standard library's
``ThreadPoolExecutor``, and, when the ``peers`` extra is installed, the durable and
in-memory Python queues of ``benchmarks/peers.py``.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import final
import improved
import naive
from benchmarks.session import Handler, Session, System, noop

WORKERS = 4  # the workers of every figure that does not vary them
BATCH = 1000  # jobs per enqueue_many call


class TierSession:
    """A tier's ``JobQueue``; ``submit_many`` uses ``enqueue_many`` where the tier has it."""

    def __init__(self, module: ModuleType, queue: Any) -> None:
        self._job = module.Job
        self.queue = queue

    def submit(self, i: int) -> None:
        self.queue.enqueue(self._job(id=str(i)))

    def submit_many(self, ids: Sequence[int]) -> None:
        make = self._job
        if hasattr(self.queue, "enqueue_many"):
            for start in range(0, len(ids), BATCH):
                self.queue.enqueue_many([make(id=str(i)) for i in ids[start : start + BATCH]])
        else:
            for i in ids:
                self.queue.enqueue(make(id=str(i)))

    def drain(self) -> None:
        self.queue.join()


def tier_system(module: ModuleType, *, on_disk: bool = False, **options: Any) -> System:
    @contextlib.contextmanager
    def open_tier(handler: Handler | None, workers: int, workdir: Path) -> Iterator[Session]:
        run: Callable[[Any], None]
        if handler is None:
            run = noop
        else:
            h = handler

            def run(job: Any) -> None:
                h(int(job.id))

        chosen = dict(options)
        if on_disk:
            chosen["path"] = workdir / f"final-{time.monotonic_ns()}.db"
        with module.JobQueue(run, workers=workers, **chosen) as q:
            yield TierSession(module, q)

    return open_tier


POOL_DRIVEN = "a submit loop closed by shutdown(wait=True)"  # how the baseline is measured


class PoolSession:
    """``ThreadPoolExecutor`` driven as its users drive it: ``submit`` in a loop, then
    ``shutdown(wait=True)`` (what leaving its ``with`` block does).

    No future is kept: a caller that wants every job done waits on the pool, not on a
    list of futures, and ``concurrent.futures.wait`` over every future would cost the
    pool about half its throughput, a price its users do not pay. So ``drain()``
    shuts the pool down: a pool session is drained once, at its end.
    """

    def __init__(self, pool: ThreadPoolExecutor, handler: Handler | None) -> None:
        self._pool = pool
        self._handler: Callable[[Any], None] = noop if handler is None else handler

    def submit(self, i: int) -> None:
        self._pool.submit(self._handler, i)

    def submit_many(self, ids: Sequence[int]) -> None:
        submit, h = self._pool.submit, self._handler
        for i in ids:
            submit(h, i)

    def drain(self) -> None:
        self._pool.shutdown(wait=True)

    def abandon(self) -> None:
        """Cancel what has not started, so that closing does not wait for a backlog."""
        self._pool.shutdown(wait=False, cancel_futures=True)


@contextlib.contextmanager
def open_pool(handler: Handler | None, workers: int, workdir: Path) -> Iterator[Session]:
    with ThreadPoolExecutor(workers) as pool:
        yield PoolSession(pool, handler)


# Display name -> how to open it. Names are also the benchmark ids and the JSON keys.
SYSTEMS: dict[str, System] = {
    "ThreadPoolExecutor": open_pool,
    "naive": tier_system(naive),
    "improved": tier_system(improved),
    "final": tier_system(final),
    "final-sqlite": tier_system(final, on_disk=True),  # durability="power", the default
    "final-sqlite-process": tier_system(final, on_disk=True, durability="process"),
}
IN_MEMORY = ("ThreadPoolExecutor", "naive", "improved", "final")
TIERS = ("naive", "improved", "final")


def peers_available() -> bool:
    try:
        from benchmarks import peers  # noqa: F401
    except ImportError:
        return False
    return True


def systems(*, with_peers: bool = True) -> dict[str, System]:
    """Every system this machine can run: the peers only if their extra is installed."""
    found = dict(SYSTEMS)
    if with_peers and peers_available():
        from benchmarks import peers

        found.update(peers.PEERS)
    return found


def is_durable(name: str) -> bool:
    return name not in IN_MEMORY and name != "huey-memory"


def opened(
    name: str, handler: Handler | None = None, workers: int = WORKERS
) -> contextlib.AbstractContextManager[Session]:
    """Open system ``name`` with a scratch directory of its own, removed afterwards.

    The system is looked up now, and opened on entering the ``with`` block: a clock
    started in between times the opening, not the first import of the peers.
    """
    return _in_scratch(systems()[name], handler, workers)


@contextlib.contextmanager
def _in_scratch(system: System, handler: Handler | None, workers: int) -> Iterator[Session]:
    with (
        tempfile.TemporaryDirectory(prefix="jobq-bench-") as tmp,
        system(handler, workers, Path(tmp)) as session,
    ):
        yield session


# 1. Throughput ------------------------------------------------------------------------


def throughput(name: str, jobs: int, workers: int = WORKERS, *, batch: bool = False) -> float:
    """Jobs per second: open, submit ``jobs`` no-op jobs from one producer, drain, close.

    The clock runs from before the system opens until it has closed, so that a
    system's start-up and shutdown (threads, files) are part of its price.
    """
    ids = range(jobs)
    system = opened(name, None, workers)
    # Garbage the systems measured before left behind is collected before the clock
    # starts, not during the next system's run: a pool allocates a lock and a condition
    # per job, and would otherwise pay for the others' garbage.
    gc.collect()
    begun = time.perf_counter()
    with system as s:
        if batch:
            s.submit_many(ids)
        else:
            for i in ids:
                s.submit(i)
        s.drain()
    return jobs / (time.perf_counter() - begun)


# 2. Latency ---------------------------------------------------------------------------


@dataclass
class Latency:
    """Enqueue returned -> handler started, in milliseconds, at one offered load."""

    offered_per_s: float
    achieved_per_s: float  # what the producer managed: below offered once saturated
    jobs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    first_tenth_ms: float  # median wait of the first tenth of the jobs
    last_tenth_ms: float  # and of the last tenth: far above the first once a backlog grows

    def saturated(self) -> bool:
        """Past the knee: the producer fell behind, or a backlog grew during the run.

        The producer falls behind when a bounded queue pushes back or when ``enqueue``
        itself is slower than the offered rate. A wait that is long but steady (a
        consumer that polls) is not saturation.
        """
        growing = self.last_tenth_ms > 2 * self.first_tenth_ms + 5.0
        # A producer that keeps up catches up after a stall (it paces against the
        # clock), so one that ends more than a tenth short could not keep up.
        return self.achieved_per_s < 0.9 * self.offered_per_s or growing


def percentile(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def paced(n: int, rate: float, submit: Callable[[int], None], returned: list[float]) -> float:
    """Submit ``n`` jobs at ``rate`` per second; return the seconds it took.

    The producer paces itself against the clock rather than sleeping once per job,
    so that a late wake-up is caught up rather than accumulated.
    """
    begun = time.perf_counter()
    for i in range(n):
        due = begun + i / rate
        while (now := time.perf_counter()) < due:
            time.sleep(min(due - now, 0.001))
        submit(i)
        returned[i] = time.perf_counter()
    return time.perf_counter() - begun


def latency(name: str, rate: float, seconds: float, workers: int = WORKERS) -> Latency:
    """Offer ``rate`` no-op jobs per second for ``seconds`` and time each one's wait."""
    n = max(1, int(rate * seconds))
    returned = [0.0] * n
    started = [0.0] * n

    def on_start(i: int) -> None:
        started[i] = time.perf_counter()

    with opened(name, on_start, workers) as s:
        elapsed = paced(n, rate, s.submit, returned)
        s.drain()
    in_order = [max(0.0, b - a) * 1000 for a, b in zip(returned, started, strict=True)]
    tenth = max(1, n // 10)
    waits = sorted(in_order)
    return Latency(
        rate,
        n / elapsed,
        n,
        percentile(waits, 0.50),
        percentile(waits, 0.90),
        percentile(waits, 0.99),
        waits[-1],
        statistics.median(in_order[:tenth]),
        statistics.median(in_order[-tenth:]),
    )


# 3. Workers, I/O-bound and CPU-bound --------------------------------------------------

IO_SECONDS = 0.005  # what an I/O-bound handler waits, as a network call would
CPU_SECONDS = 0.001  # what a CPU-bound handler computes, in pure Python


@dataclass
class Spin:
    loops: int  # iterations of the pure-Python loop
    seconds: float  # what one run took on one thread when calibrated


_spin: Spin | None = None


def _loop(loops: int) -> int:
    total = 0
    for k in range(loops):
        total += k
    return total


def calibrate_spin(target: float = CPU_SECONDS) -> Spin:
    """The loop count that takes ``target`` seconds on one thread (the best of 5 runs)."""
    global _spin
    if _spin is None:
        loops = 10_000
        best = min(_timed(_loop, loops) for _ in range(5))
        loops = max(1, int(loops * target / best))
        _spin = Spin(loops, min(_timed(_loop, loops) for _ in range(5)))
    return _spin


def _timed(fn: Callable[[int], object], arg: int) -> float:
    begun = time.perf_counter()
    fn(arg)
    return time.perf_counter() - begun


def work_throughput(name: str, kind: str, workers: int, jobs: int) -> float:
    """Jobs per second when each job sleeps 5 ms (``"io"``) or spins ~1 ms (``"cpu"``).

    ``name="direct"`` calls the handler in a plain loop on this thread: what one core
    does with no queue at all.
    """
    handler: Handler
    if kind == "io":

        def handler(_: int) -> None:
            time.sleep(IO_SECONDS)

    elif kind == "cpu":
        loops = calibrate_spin().loops

        def handler(_: int) -> None:
            _loop(loops)

    else:
        raise ValueError(f"kind must be 'io' or 'cpu', got {kind!r}")
    if name == "direct":  # the baseline: the handler called in a loop, no queue, one thread
        begun = time.perf_counter()
        for i in range(jobs):
            handler(i)
        return jobs / (time.perf_counter() - begun)
    system = opened(name, handler, workers)
    begun = time.perf_counter()
    with system as s:
        for i in range(jobs):
            s.submit(i)
        s.drain()
    return jobs / (time.perf_counter() - begun)


# 4. Starvation ------------------------------------------------------------------------

WORK_SECONDS = 0.001  # each job of the starvation run sleeps this long
LOW_PER_S = 20.0  # the trickle of LOW jobs beside the HIGH flood


@dataclass
class Starvation:
    """One flood: HIGH at ``high_offered_per_s`` plus a LOW trickle, for ``seconds``.

    ``low`` holds each LOW job's (accepted, started) times in seconds from the start,
    ``high_waits_ms`` every HIGH job's wait, sorted.
    """

    system: str
    fairness: int | None
    high_offered_per_s: float
    high_achieved_per_s: float  # HIGH jobs started per second during the flood
    seconds: float
    low: list[tuple[float, float]] = field(default_factory=list)
    high_waits_ms: list[float] = field(default_factory=list)

    def low_waits_ms(self) -> list[float]:
        return sorted((s - a) * 1000 for a, s in self.low)

    def worst_low_wait(self, step: float = 0.01) -> list[tuple[float, float]]:
        return worst_wait_so_far(self.low, self.seconds, step)

    def summary(self) -> dict[str, Any]:
        low = self.low_waits_ms()
        return {
            "system": self.system,
            "fairness": self.fairness,
            "high_offered_per_s": self.high_offered_per_s,
            "high_achieved_per_s": self.high_achieved_per_s,
            "seconds": self.seconds,
            "low_jobs": len(low),
            "low_p50_ms": percentile(low, 0.5) if low else None,
            "low_max_ms": low[-1] if low else None,
            "high_p50_ms": percentile(self.high_waits_ms, 0.5) if self.high_waits_ms else None,
            "high_p99_ms": percentile(self.high_waits_ms, 0.99) if self.high_waits_ms else None,
            "low": [[round(a, 5), round(s, 5)] for a, s in self.low],
        }


def worst_wait_so_far(
    jobs: Sequence[Sequence[float]], seconds: float, step: float = 0.01
) -> list[tuple[float, float]]:
    """(t, the longest wait in ms of any job accepted by t), every ``step`` seconds.

    ``jobs`` holds (accepted, started) pairs in seconds; a job not yet started at t
    counts with its age so far, so that a starved job shows while it starves. The
    series runs until the last job started, or ``seconds`` if that is later.
    """
    points = []
    end = max([seconds] + [s for _, s in jobs])
    for k in range(int(end / step) + 1):
        t = k * step
        waits = [min(s, t) - a for a, s in jobs if a <= t]
        points.append((t, max(waits, default=0.0) * 1000))
    return points


def starvation(
    tier: str,
    high_per_s: float,
    seconds: float,
    *,
    fairness: int | None = None,
    workers: int = WORKERS,
) -> Starvation:
    """Flood a tier with HIGH jobs while a trickle of LOW jobs arrives; time both.

    Each job sleeps ``WORK_SECONDS``, so ``workers / WORK_SECONDS`` jobs per second is
    the capacity; a flood above it keeps the HIGH lane full (improved and final push
    back on the producer; naive's list grows). ``fairness`` is final's option.
    """
    module = {"naive": naive, "improved": improved, "final": final}[tier]
    options: dict[str, Any] = {} if fairness is None else {"fairness": fairness}
    accepted: dict[str, float] = {}
    started: dict[str, float] = {}
    begun = time.perf_counter()

    def handler(job: Any) -> None:
        started[job.id] = time.perf_counter() - begun
        time.sleep(WORK_SECONDS)

    stop = threading.Event()
    with module.JobQueue(handler, workers=workers, **options) as q:

        def trickle() -> None:
            k = 0
            while not stop.wait(max(0.0, k / LOW_PER_S - (time.perf_counter() - begun))):
                job_id = f"L{k}"
                q.enqueue(module.Job(id=job_id, priority=module.Priority.LOW))
                accepted[job_id] = time.perf_counter() - begun
                k += 1

        low = threading.Thread(target=trickle)
        low.start()
        # The flood lasts ``seconds`` whatever the producer manages: where a full lane
        # pushes back, fewer than high_per_s * seconds jobs get in.
        stamps: list[float] = []
        i = 0
        while (now := time.perf_counter() - begun) < seconds:
            due = i / high_per_s
            if now < due:
                time.sleep(min(due - now, 0.001))
                continue
            q.enqueue(module.Job(id=f"H{i}"))
            stamps.append(time.perf_counter() - begun)
            i += 1
        stop.set()
        low.join()
        q.join()
    high_starts = [started[f"H{k}"] for k in range(len(stamps))]
    return Starvation(
        tier if fairness is None else f"{tier} fairness={fairness}",
        fairness,
        high_per_s,
        sum(1 for s in high_starts if s <= seconds) / seconds,
        seconds,
        sorted((a, started[k]) for k, a in accepted.items()),
        sorted((s - a) * 1000 for s, a in zip(high_starts, stamps, strict=True)),
    )


# 5. Persistence -----------------------------------------------------------------------

SYNCHRONOUS = {"power": "FULL", "process": "NORMAL"}
PRODUCE = ("1 producer", "8 producers", "enqueue_many")


def _bench_db(path: Path, durability: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(f"PRAGMA synchronous = {SYNCHRONOUS[durability]}")
    db.execute("CREATE TABLE t (id TEXT PRIMARY KEY, payload BLOB)")
    return db


def raw_commits(durability: str, n: int) -> float:
    """One-row SQLite commits per second in WAL mode: the machine's limit."""
    with tempfile.TemporaryDirectory(prefix="jobq-bench-") as tmp:
        db = _bench_db(Path(tmp) / "raw.db", durability)
        try:
            begun = time.perf_counter()
            for i in range(n):
                db.execute("BEGIN")
                db.execute("INSERT INTO t VALUES (?, ?)", (str(i), b""))
                db.execute("COMMIT")
            return n / (time.perf_counter() - begun)
        finally:
            db.close()


def group_commit_ceiling(durability: str, producers: int, n: int) -> float:
    """Rows per second of the best case of group commit, with no queue around it.

    ``producers`` threads each insert a row and wait until it is committed, as an
    ``enqueue`` does; one thread commits as soon as every producer has a row waiting,
    so that each commit (and each fsync) carries all of them. Nothing else runs: no
    lanes, no workers, no record of each job. It is what threads in CPython on this
    machine can get out of sharing commits: the ceiling for final's "8 producers".
    """
    with tempfile.TemporaryDirectory(prefix="jobq-bench-") as tmp:
        db = _bench_db(Path(tmp) / "ceiling.db", durability)
        try:
            begun = time.perf_counter()
            commit_together(db, producers, n)
            return n / (time.perf_counter() - begun)
        finally:
            db.close()


def commit_together(db: sqlite3.Connection, producers: int, n: int) -> int:
    """Insert rows 0 to n-1 into ``t`` from ``producers`` threads, each row acknowledged
    once committed, every commit carrying one row of each producer still at work.
    Returns the number of commits."""
    mutex = threading.Lock()
    waiting: list[tuple[tuple[str, bytes], threading.Lock]] = []
    producing = producers  # producers not yet finished: a batch waits for them all
    complete = threading.Semaphore(0)  # released each time a batch is complete
    commits = 0

    def commit_batches() -> None:
        nonlocal commits
        while True:
            complete.acquire()
            with mutex:
                batch = waiting[:]
                waiting.clear()
            if not batch:  # every producer is done
                return
            values = ", ".join(["(?, ?)"] * len(batch))
            db.execute(f"INSERT INTO t VALUES {values}", [v for row, _ in batch for v in row])
            commits += 1
            for _, committed in batch:
                committed.release()

    def produce(p: int) -> None:
        nonlocal producing
        for i in range(p, n, producers):
            committed = threading.Lock()
            committed.acquire()
            with mutex:
                waiting.append(((str(i), b""), committed))
                if len(waiting) == producing:
                    complete.release()
            committed.acquire()  # released once the row is committed
        with mutex:
            producing -= 1
            if waiting and len(waiting) == producing:
                complete.release()  # the others need not wait for this one

    committer = threading.Thread(target=commit_batches)
    committer.start()
    threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    complete.release()  # nothing is waiting: the committer leaves
    committer.join()
    return commits


def persistence(durability: str | None, how: str, jobs: int, workers: int = WORKERS) -> float:
    """Jobs per second of final, in memory (``None``) or on disk, fed as ``how`` says."""
    options: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="jobq-bench-") as tmp:
        if durability is not None:
            options = {"path": Path(tmp) / "q.db", "durability": durability}
        begun = time.perf_counter()
        with final.JobQueue(noop, workers=workers, **options) as q:
            if how == "enqueue_many":
                TierSession(final, q).submit_many(range(jobs))
            elif how == "1 producer":
                for i in range(jobs):
                    q.enqueue(final.Job(id=str(i)))
            elif how == "8 producers":

                def produce(p: int) -> None:
                    for i in range(p, jobs, 8):
                        q.enqueue(final.Job(id=str(i)))

                threads = [threading.Thread(target=produce, args=(p,)) for p in range(8)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            else:
                raise ValueError(f"how must be one of {PRODUCE}, got {how!r}")
            q.join()
        return jobs / (time.perf_counter() - begun)


# 6. Memory ----------------------------------------------------------------------------


def bytes_per_queued_job(name: str, jobs: int) -> float:
    """Bytes the system holds per job waiting in it (tracemalloc), workers all busy.

    The workers are held at a gate, so every job past the first ``WORKERS`` waits;
    bounded tiers get lanes large enough to take them all.
    """
    gate = threading.Event()
    busy = threading.Semaphore(0)

    def hold(_: int) -> None:
        busy.release()
        gate.wait()

    opener = systems()[name]
    if name in ("improved", "final", "final-sqlite"):
        module = improved if name == "improved" else final
        opener = tier_system(module, on_disk=name == "final-sqlite", queue_size=jobs + WORKERS)
    tracemalloc.start()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="jobq-bench-") as tmp,
            opener(hold, WORKERS, Path(tmp)) as s,
        ):
            for i in range(WORKERS):
                s.submit(i)
            for _ in range(WORKERS):
                busy.acquire()
            before = tracemalloc.get_traced_memory()[0]
            s.submit_many(range(WORKERS, WORKERS + jobs))
            after = tracemalloc.get_traced_memory()[0]
            gate.set()
            s.drain()
    finally:
        gate.set()
        tracemalloc.stop()
    return (after - before) / jobs


def memory_under_flood(
    name: str, seconds: float, step: float = 0.02
) -> list[tuple[float, float, int]]:
    """A producer as fast as it can go, workers sleeping 1 ms per job.

    Returns (t, MB held, jobs accepted) every ``step`` seconds: an unbounded queue
    grows for as long as the producer outruns the workers; a bounded one levels off.
    """
    stop = threading.Event()
    samples: list[tuple[float, float, int]] = []
    accepted = 0

    def work(_: int) -> None:
        time.sleep(WORK_SECONDS)

    tracemalloc.start()
    try:
        with opened(name, work) as s:
            begun = time.perf_counter()

            def sample() -> None:
                while not stop.wait(step):
                    mb = tracemalloc.get_traced_memory()[0] / 1e6
                    samples.append((time.perf_counter() - begun, mb, accepted))

            sampler = threading.Thread(target=sample)
            sampler.start()
            deadline = begun + seconds
            submit = s.submit
            while time.perf_counter() < deadline:
                submit(accepted)
                accepted += 1
            stop.set()
            sampler.join()
            # Closing does not wait for the backlog: naive drops it, the bounded tiers
            # hold at most a lane of it, and the pool's is cancelled.
            if isinstance(s, PoolSession):
                s.abandon()
    finally:
        stop.set()
        tracemalloc.stop()
    return samples


# The machine ---------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the figures were measured on; the load average says how busy it was."""
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }


__all__ = [
    "IN_MEMORY",
    "POOL_DRIVEN",
    "PRODUCE",
    "SYSTEMS",
    "TIERS",
    "WORKERS",
    "Latency",
    "Session",
    "Starvation",
    "bytes_per_queued_job",
    "calibrate_spin",
    "is_durable",
    "latency",
    "machine",
    "memory_under_flood",
    "opened",
    "peers_available",
    "persistence",
    "raw_commits",
    "starvation",
    "systems",
    "throughput",
    "work_throughput",
    "worst_wait_so_far",
]
