"""The tour: the same seven scenarios on naive, improved and final, an eighth on PostgreSQL.

``python -m benchmarks.tour`` (``make demo``) runs each scenario on each tier in turn,
with a progress bar while it runs (a line per step into a pipe), and prints a side-by-side
table at the end:

1. a fast producer: naive's queue and memory grow, improved and final push back;
2. mixed priorities: the order in which jobs ran, per tier;
3. a HIGH flood with a few LOW jobs: how long LOW waited, per tier;
4. flaky handlers: retries, backoff, dead letters;
5. ``close()`` with jobs still queued: what each tier did with them;
6. a crash: a child process is killed with SIGKILL mid-run and restarted;
7. jobs in time: jobs scheduled a moment ahead, half of them called off before.
8. final on PostgreSQL: worker processes sharing one queue, killed at random (when a
   server answers at ``$JOBQ_TEST_DSN``; the table says it skipped when none does).
9. (the full tour, when a PostgreSQL server answers) exactly-once effects: worker
   processes of final on PostgreSQL killed while each job writes one row, counted.

It ends by itself in well under a minute on two cores; ``--quick`` shrinks every
scenario to a few seconds in all (what the test runs), ``--plot DIR`` also writes one
PNG per scenario, and ``--scenario N`` (repeatable) runs only the ones named.
Ctrl+C stops it cleanly, with the table of the scenarios that were complete.

Every figure is measured on this run, so they move a little from run to run on a busy
machine; the shape does not: that is what the test of the tour checks. The tiers are
used only through the contract they share, as a user's code would use them.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import itertools
import logging
import os
import random
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks.crash import kill_mid_run
from benchmarks.tour_table import TIERS, Row, Scenario

PRIORITY_LETTER = {"HIGH": "H", "MEDIUM": "M", "LOW": "L"}


@dataclass(frozen=True, slots=True)
class Size:
    """How big each scenario is: the full tour, or the quick one the test runs."""

    produce_for: float  # 1: seconds the fast producer offers jobs
    produce_at_most: int  # 1: ...or this many jobs, whichever comes first
    flood_for: float  # 3: seconds the HIGH flood goes on after the LOW jobs arrive
    flaky_jobs: int  # 4
    close_jobs: int  # 5
    crash_jobs: int  # 6
    pg_kills: int = 6  # 8: kill -9 of worker processes sharing a queue in PostgreSQL


FULL = Size(
    produce_for=1.0,
    produce_at_most=150_000,
    flood_for=1.5,
    flaky_jobs=60,
    close_jobs=100,
    crash_jobs=200,
)
QUICK = Size(
    produce_for=0.3,
    produce_at_most=20_000,
    flood_for=0.3,
    flaky_jobs=30,
    close_jobs=60,
    crash_jobs=50,
    pg_kills=2,
)

# Small enough that a lane fills within the fast producer's first milliseconds.
QUEUE_SIZE = 500


def _module(tier: str) -> ModuleType:
    return importlib.import_module(tier)


def _queue(module: ModuleType, handler: Callable[[Any], object], **options: Any) -> Any:
    """A queue of this tier with the options it takes (naive only takes ``workers``)."""
    if module.__name__ == "naive":
        options = {k: v for k, v in options.items() if k == "workers"}
    return module.JobQueue(handler, **options)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"


# -- 1. a fast producer --------------------------------------------------------------


def fast_producer(tier: str, size: Size, scenario: Scenario) -> None:
    """Workers take 1 ms a job; one producer offers jobs as fast as ``enqueue`` lets it.

    Naive accepts everything, so what waits (and the memory it holds) grows for as long
    as the producer runs. Improved and final block the producer on a full lane: what
    waits never passes ``queue_size``, and the producer goes at the workers' pace.
    """
    module = _module(tier)
    started = itertools.count(1)
    ran = [0]

    def handler(job: Any) -> None:
        ran[0] = next(started)
        time.sleep(0.001)

    samples: list[tuple[float, int, float]] = []  # (seconds, jobs waiting, MB traced)
    # Leaving the block closes the queue: naive drops what is queued (its lesson), the
    # others run their last lane-full.
    with _queue(module, handler, workers=2, queue_size=QUEUE_SIZE) as q:
        tracemalloc.start()
        try:
            begun = time.monotonic()
            accepted = most_waiting = 0
            while accepted < size.produce_at_most:
                q.enqueue(module.Job())
                accepted += 1
                if accepted % 250 == 0:
                    now = time.monotonic() - begun
                    waiting = accepted - ran[0]
                    most_waiting = max(most_waiting, waiting)
                    samples.append((now, waiting, tracemalloc.get_traced_memory()[0] / 1e6))
                    if now >= size.produce_for:
                        break
            elapsed = time.monotonic() - begun
            peak = tracemalloc.get_traced_memory()[1] / 1e6
        finally:
            tracemalloc.stop()
    scenario.row("jobs accepted").put(tier, f"{accepted:,} in {elapsed:.1f} s", accepted)
    scenario.row("most jobs waiting at once").put(tier, f"{most_waiting:,}", most_waiting)
    scenario.row("peak memory (tracemalloc)").put(tier, f"{peak:.1f} MB", peak)
    scenario.plot[tier] = samples


# -- 2. mixed priorities -------------------------------------------------------------


def mixed_priorities(tier: str, size: Size, scenario: Scenario) -> None:
    """One worker, held while twelve jobs arrive as LOW, MEDIUM, HIGH, LOW, MEDIUM, ...

    The order they then run in is the tier's idea of priority: naive runs them as they
    came, improved and final run every HIGH first, then MEDIUM, then LOW.
    """
    module = _module(tier)
    gate = threading.Event()
    order: list[str] = []

    def handler(job: Any) -> None:
        if job.id == "gate":
            gate.wait()
            return
        order.append(PRIORITY_LETTER[job.priority.name])

    with _queue(module, handler, workers=1) as q:
        try:
            q.enqueue(module.Job(id="gate", priority=module.Priority.HIGH))
            for i in range(4):
                for p in ("LOW", "MEDIUM", "HIGH"):
                    q.enqueue(module.Job(id=f"{p}-{i}", priority=module.Priority[p]))
        finally:
            gate.set()  # on Ctrl+C too: close() would wait for the held worker
        q.join()
    ran = "".join(order)
    scenario.row("arrived LMHLMHLMHLMH, ran").put(tier, ran, ran)
    scenario.plot[tier] = ran


# -- 3. a HIGH flood with a few LOW jobs ---------------------------------------------

# HIGH jobs the producer keeps waiting, on every tier alike: enough that the lane does
# not run dry while the producer waits for its turn at the GIL.
FLOOD_BACKLOG = 100
LOW_JOBS = 3


def high_flood(tier: str, size: Size, scenario: Scenario) -> None:
    """Two workers, 1 ms a job, and a producer that keeps 100 HIGH jobs waiting.

    Three LOW jobs arrive once the flood is steady. Naive runs them after the 100 HIGH
    jobs ahead of them (FIFO); improved runs them only when the flood stops (strict
    priority starves them); final runs each within ``fairness + 1`` picks.
    """
    module = _module(tier)
    room = threading.Semaphore(FLOOD_BACKLOG)  # the producer's own bound, for all tiers
    stop = threading.Event()
    steady = threading.Event()
    lock = threading.Lock()
    high_started = 0
    low_enqueued: dict[str, float] = {}
    low_started: dict[str, tuple[float, int]] = {}  # id -> (when, HIGH picks before it)

    def handler(job: Any) -> None:
        nonlocal high_started
        now = time.monotonic()
        with lock:
            if job.priority is module.Priority.LOW:
                low_started[job.id] = (now, high_started)
                return
            high_started += 1
            if high_started == 2 * FLOOD_BACKLOG:
                steady.set()
        time.sleep(0.001)
        room.release()

    def produce() -> None:
        while not stop.is_set():
            if room.acquire(timeout=0.05):
                q.enqueue(module.Job(priority=module.Priority.HIGH))

    with _queue(module, handler, workers=2) as q:
        producer = threading.Thread(target=produce, name="tour-flood")
        producer.start()
        try:
            steady.wait(30)
            with lock:
                picks_at_arrival = high_started
            for i in range(LOW_JOBS):
                low_enqueued[f"low-{i}"] = time.monotonic()
                q.enqueue(module.Job(id=f"low-{i}", priority=module.Priority.LOW))
            stop.wait(size.flood_for)
        finally:
            stop.set()
            producer.join()
        q.join()
        flood_ended = time.monotonic()
    waits = [low_started[i][0] - low_enqueued[i] for i in low_enqueued]
    picks = max(low_started[i][1] for i in low_enqueued) - picks_at_arrival
    flood = flood_ended - min(low_enqueued.values())
    longest = max(waits)
    cell = _ms(longest) + (" (until the flood ended)" if longest > 0.8 * size.flood_for else "")
    scenario.row(f"longest wait of {LOW_JOBS} LOW jobs").put(tier, cell, longest)
    scenario.row("HIGH jobs run before the last LOW").put(tier, f"{picks:,}", picks)
    scenario.plot[tier] = {"waits": waits, "flood": flood}


# -- 4. flaky handlers ---------------------------------------------------------------

RETRIES = 3
BACKOFF = 0.02  # retry n waits between half and all of BACKOFF * 2**(n-1)...
MAX_BACKOFF = 1.0  # ...which this ceiling never cuts short here


def flaky_handlers(tier: str, size: Size, scenario: Scenario) -> None:
    """Each job fails its first 0, 1 or 2 attempts, or every attempt (one in ten).

    Naive logs each failure and forgets the job; improved retries with backoff and
    jitter and counts the jobs that fail for good; final also keeps those as dead
    letters, which the tour replays once the handler is "fixed".
    """
    module = _module(tier)
    rng = random.Random(4)
    plan = {
        f"job-{i:02d}": rng.choices([0, 1, 2, 99], weights=[5, 2.5, 1.5, 1])[0]
        for i in range(size.flaky_jobs)
    }
    lock = threading.Lock()
    attempts: dict[str, list[float]] = {job_id: [] for job_id in plan}
    fixed = threading.Event()

    def handler(job: Any) -> None:
        with lock:
            attempts[job.id].append(time.monotonic())
            number = len(attempts[job.id])
        if number <= plan[job.id] and not fixed.is_set():
            raise RuntimeError(f"attempt {number} of {job.id} failed, as planned")

    with _queue(
        module, handler, workers=4, max_retries=RETRIES, backoff=BACKOFF, max_backoff=MAX_BACKOFF
    ) as q:
        for job_id in plan:
            q.enqueue(module.Job(id=job_id))
        q.join()
        with lock:
            tries = {job_id: list(times) for job_id, times in attempts.items()}
        succeeded = sum(1 for job_id, t in tries.items() if len(t) > plan[job_id])
        retries = sum(len(t) - 1 for t in tries.values())
        gone = len(plan) - succeeded
        if hasattr(q, "dead_letters"):
            dead = q.dead_letters()
            fixed.set()
            for job in dead:
                q.retry_dead(job.id)
            q.join()
            with lock:
                replayed = sum(1 for job in dead if len(attempts[job.id]) > len(tries[job.id]))
            where = f"{len(dead)} dead letters, {replayed} replayed and ran"
        elif hasattr(q, "metrics"):
            where = f"{q.metrics().failed} counted as failed, gone"
        else:
            where = f"{gone} logged once each, gone"
    delays: dict[int, list[float]] = {}
    for t in tries.values():
        for n, (a, b) in enumerate(itertools.pairwise(t), start=1):
            delays.setdefault(n, []).append(b - a)
    spread = "  ".join(
        f"#{n} {min(d) * 1000:.0f}-{max(d) * 1000:.0f}" for n, d in sorted(delays.items())
    )
    scenario.row("jobs that succeeded").put(tier, f"{succeeded} of {len(plan)}", succeeded)
    scenario.row("retries").put(tier, f"{retries}", retries)
    scenario.row("retry delays in ms (#n: min-max)").put(tier, spread or "none", delays)
    scenario.row("jobs that failed for good").put(tier, where, gone)
    scenario.plot[tier] = {"delays": delays, "succeeded": succeeded, "gone": gone}


# -- 5. close() with jobs still queued -----------------------------------------------

CLOSE_AFTER = 0.05  # the timeout given to close(), in seconds


def close_with_jobs_queued(tier: str, size: Size, scenario: Scenario) -> None:
    """Two workers, 10 ms a job; the jobs are enqueued, then ``close()`` is called.

    First ``close()`` as a deploy would call it, then ``close(timeout)``: naive drops
    what is queued and says nothing; improved runs it all, or counts what a timeout
    left as lost; final with a ``path`` keeps what it left on disk, and the tour opens
    a new queue on the same file to run it.
    """
    module = _module(tier)
    ran = Counter[str]()
    lock = threading.Lock()

    def handler(job: Any) -> None:
        time.sleep(0.01)
        with lock:
            ran[job.id] += 1

    n = size.close_jobs
    with _queue(module, handler, workers=2) as q:
        for i in range(n):
            q.enqueue(module.Job(id=f"a-{i}"))
        q.close()
    with lock:
        done = sum(1 for i in range(n) if ran[f"a-{i}"])
    cell = f"ran {done}" + (f", dropped {n - done} silently" if done < n else "")
    scenario.row(f"close() with {n} queued").put(tier, cell, done)

    with tempfile.TemporaryDirectory(prefix="tour-") as workdir:
        options: dict[str, Any] = {"workers": 2}
        if tier == "final":
            options["path"] = str(Path(workdir) / "jobs.db")
        q = _queue(module, handler, **options)
        for i in range(n):
            q.enqueue(module.Job(id=f"b-{i}"))
        q.close(timeout=CLOSE_AFTER)
        with lock:
            done = sum(1 for i in range(n) if ran[f"b-{i}"])
        left = n - done
        if "path" in options:
            q.close()  # the attempts still running settle; the file is then free again
            with lock:
                done = sum(1 for i in range(n) if ran[f"b-{i}"])
            with _queue(module, handler, **options) as restarted:
                restarted.join()
            with lock:
                after = sum(1 for i in range(n) if ran[f"b-{i}"]) - done
            cell = f"ran {done}, kept {n - done} on disk: {after} ran after a restart"
            value: dict[str, int] = {"ran": done, "kept": n - done, "after": after}
        elif hasattr(q, "metrics"):
            q.close()
            lost = q.metrics().lost
            cell = f"ran {n - lost}, {lost} counted as lost"
            value = {"ran": n - lost, "lost": lost}
        else:
            q.close()
            cell = f"ran {done}, dropped {left}, counted nowhere"
            value = {"ran": done, "dropped": left}
    scenario.row(f"close(timeout={CLOSE_AFTER}) with {n} queued").put(tier, cell, value)
    scenario.plot[tier] = value


# -- 6. a crash ----------------------------------------------------------------------


def crash(tier: str, size: Size, scenario: Scenario) -> None:
    """A child process runs the tier with jobs in hand and is killed with SIGKILL.

    The harness (``benchmarks/crash.py``) kills it once a quarter of the jobs have
    run, restarts final on the same file, and counts the acknowledged jobs that never
    ran: every one still waiting, in memory; none, from final's file, where a job whose
    attempt the kill cut short runs again (delivery is at least once).
    """
    with tempfile.TemporaryDirectory(prefix="tour-crash-") as workdir:
        outcome = kill_mid_run(tier, Path(workdir), jobs=size.crash_jobs, seed=0)
    scenario.row("acknowledged before the kill").put(
        tier, f"{outcome.acknowledged}", outcome.acknowledged
    )
    scenario.row("acknowledged, never ran").put(tier, f"{outcome.lost}", outcome.lost)
    scenario.row("ran twice (at least once)").put(tier, f"{outcome.duplicates}", outcome.duplicates)
    scenario.plot[tier] = {
        "acknowledged": outcome.acknowledged,
        "lost": outcome.lost,
        "duplicates": outcome.duplicates,
    }


# -- 7. jobs in time ------------------------------------------------------------------

TIMED_JOBS = 20  # 7: jobs scheduled a moment ahead, the odd ones cancelled before
AHEAD = 0.3  # 7: seconds ahead they are scheduled, the first; the others 10 ms apart


def jobs_in_time(tier: str, size: Size, scenario: Scenario) -> None:
    """Jobs scheduled ``AHEAD`` seconds ahead and 10 ms apart; the odd ones are
    cancelled while they wait. Final starts each at its run_at, never before, and
    runs none it called off; naive and improved have no run_at (a job for later
    needs a timer outside the queue) and no cancel (a queued job runs, whatever
    happened since it was queued)."""
    module = _module(tier)
    if "run_at" not in {f.name for f in dataclasses.fields(module.Job)}:
        scenario.row("started after its run_at by (p50 / max)").put(tier, "no run_at", None)
        scenario.row(f"{TIMED_JOBS // 2} of them cancelled while they waited").put(
            tier, "no cancel", None
        )
        scenario.plot[tier] = None
        return
    started: dict[str, float] = {}
    lock = threading.Lock()

    def handler(job: Any) -> None:
        with lock:
            started[job.id] = time.time()

    base = datetime.now(UTC) + timedelta(seconds=AHEAD)
    run_at = {f"t-{i}": base + timedelta(seconds=i / 100) for i in range(TIMED_JOBS)}
    with _queue(module, handler, workers=2) as q:
        q.enqueue_many(module.Job(id=i, run_at=when) for i, when in run_at.items())
        scheduled = q.metrics().scheduled
        cancelled = sum(q.cancel(f"t-{i}") for i in range(1, TIMED_JOBS, 2))
        q.join()
        m = q.metrics()
    late = sorted(started[i] - run_at[i].timestamp() for i in started)
    p50, worst = late[len(late) // 2], late[-1]
    early = sum(1 for x in late if x < 0)
    cell = f"{_ms(p50)} / {_ms(worst)}, {early} early"
    scenario.row("started after its run_at by (p50 / max)").put(tier, cell, late)
    ran_anyway = sum(1 for i in range(1, TIMED_JOBS, 2) if f"t-{i}" in started)
    cell = f"{cancelled} cancelled, {ran_anyway} ran ({scheduled} were scheduled)"
    scenario.row(f"{TIMED_JOBS // 2} of them cancelled while they waited").put(
        tier, cell, {"cancelled": m.cancelled, "ran": ran_anyway}
    )
    scenario.plot[tier] = late


# -- 8. one queue in PostgreSQL, shared by processes that are killed ------------------

PG_DSN_ENV = "JOBQ_TEST_DSN"  # the server the tests use is the tour's too
PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
PG_ROWS = [
    "worker processes started",
    "acknowledged jobs lost",
    "jobs run again after a kill",
    "the job that kills its process",
]


def postgres_processes(tier: str, size: Size, scenario: Scenario) -> None:
    """final with a ``dsn``: a producer and three worker processes share one queue.

    This process enqueues (a handle with ``workers=0``); three ``python -m final
    worker`` processes run the jobs, and one of them is killed with SIGKILL every few
    tenths of a second and replaced (``benchmarks/crash_pg.py``). A job that kills
    its own process goes in first. What the kills cannot do: lose an acknowledged
    job (a dead process's claims are rescued after its lease), or retry the poison
    job for ever (its attempts are counted at the claim). Naive and improved live in
    one process's memory and have no part in it; with no server, the scenario says
    so and how to start one.
    """
    if tier != "final":
        for row in scenario.rows:
            row.put(tier, "-", None)
        return
    why = _pg_unavailable()
    if why is not None:
        for row in scenario.rows:
            row.put(tier, "skipped", None)
        scenario.row(PG_ROWS[0]).put(tier, f"skipped: {why}", None)
        scenario.plot[tier] = None
        return
    tally = _kill_pg_workers(os.environ.get(PG_DSN_ENV, PG_DEFAULT), size.pg_kills)
    started = f"{tally.processes} ({tally.kills} killed by the tour," + (
        f" {tally.self_kills} by the poison job)"
    )
    scenario.row(PG_ROWS[0]).put(tier, started, tally.processes)
    lost = {"lost": tally.lost, "acknowledged": tally.acknowledged}
    scenario.row(PG_ROWS[1]).put(tier, f"{tally.lost} of {tally.acknowledged}", lost)
    again = f"{tally.repeats} (at most {tally.repeat_bound})"
    scenario.row(PG_ROWS[2]).put(tier, again, tally.repeats)
    poison = "NOT a dead letter"
    if tally.poison_dead:
        poison = f"dead letter after {tally.poison_claims} claims"
    scenario.row(PG_ROWS[3]).put(tier, poison, tally.poison_dead)
    scenario.plot[tier] = {
        "acknowledged": tally.acknowledged,
        "lost": tally.lost,
        "repeats": tally.repeats,
    }


def _pg_unavailable() -> str | None:
    """None when a PostgreSQL server answers (and psycopg is installed); else why not."""
    dsn = os.environ.get(PG_DSN_ENV, PG_DEFAULT)
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    try:
        with psycopg.connect(dsn, connect_timeout=3):
            pass
    except psycopg.Error:
        start = f"start one: pg_ctlcluster 15 main start, or set {PG_DSN_ENV}"
        return f"no PostgreSQL at {dsn} ({start})"
    return None


def _kill_pg_workers(dsn: str, kills: int) -> Any:
    """``crash_pg``'s harness in a schema of its own, dropped afterwards; its tally."""
    from benchmarks import crash_pg

    with (
        crash_pg.scratch_schema(dsn, "jobq_tour") as where,
        tempfile.TemporaryDirectory(prefix="tour-pg-") as workdir,
    ):
        return crash_pg.kill_workers_repeatedly(where, Path(workdir), kills, seed=7)


# -- on PostgreSQL: exactly-once effects ----------------------------------------------

EXACTLY_KILLS = 50  # kills of worker processes in each mode


def exactly_once_on_postgresql(kills: int = EXACTLY_KILLS) -> str:
    """final on PostgreSQL: worker processes killed with SIGKILL, and one cut off past its
    lease, while their handlers write one row per job into an application table.

    Run twice (``benchmarks/exactly_pg.py``): with the row written in the transaction
    that completes the job (``current_attempt().complete(conn)``), then with the row
    committed first and the job completed after (at-least-once). Returns the lines to
    print: each job's rows counted, side by side; or one line saying why it did not
    run when no PostgreSQL server answers at ``$JOBQ_TEST_DSN``.
    """
    why = _pg_unavailable()
    if why is not None:
        return f"(exactly-once on PostgreSQL: skipped, {why})"
    from benchmarks import crash_pg, exactly_pg

    dsn = os.environ.get(PG_DSN_ENV, PG_DEFAULT)
    tallies = []
    with (
        crash_pg.scratch_schema(dsn, "jobq_tour") as where,
        tempfile.TemporaryDirectory(prefix="tour-exactly-") as workdir,
    ):
        for mode in exactly_pg.MODES:
            print(f"exactly-once on PostgreSQL: {mode}, {kills} kills", file=sys.stderr)
            tallies.append(exactly_pg.kill_and_count(where, mode, kills, Path(workdir)))
    title = (
        f"9. final on PostgreSQL: {kills} kills and a lost lease, one effect row per job wanted"
        "\n   (exactly: the row commits with complete(conn); plain: the row commits, then"
        " the queue completes)"
    )
    return f"{title}\n{exactly_pg.table(tallies)}"


# -- the tour ------------------------------------------------------------------------

Step = Callable[[str, Size, Scenario], None]

SCENARIOS: dict[int, tuple[str, Step, list[str]]] = {
    1: (
        "a fast producer, workers at 1 ms a job",
        fast_producer,
        ["jobs accepted", "most jobs waiting at once", "peak memory (tracemalloc)"],
    ),
    2: ("mixed priorities, one worker", mixed_priorities, ["arrived LMHLMHLMHLMH, ran"]),
    3: (
        "a HIGH flood with a few LOW jobs",
        high_flood,
        [f"longest wait of {LOW_JOBS} LOW jobs", "HIGH jobs run before the last LOW"],
    ),
    4: (
        f"flaky handlers, max_retries={RETRIES}, backoff={BACKOFF}",
        flaky_handlers,
        [
            "jobs that succeeded",
            "retries",
            "retry delays in ms (#n: min-max)",
            "jobs that failed for good",
        ],
    ),
    5: ("close() with jobs still queued", close_with_jobs_queued, []),  # rows named by size
    6: (
        "a crash: SIGKILL mid-run, then a restart",
        crash,
        ["acknowledged before the kill", "acknowledged, never ran", "ran twice (at least once)"],
    ),
    7: (
        f"jobs in time: {TIMED_JOBS} scheduled {AHEAD} s ahead, half then cancelled",
        jobs_in_time,
        [
            "started after its run_at by (p50 / max)",
            f"{TIMED_JOBS // 2} of them cancelled while they waited",
        ],
    ),
    8: (
        "final on PostgreSQL: three worker processes, kill -9 of one at random",
        postgres_processes,
        PG_ROWS,
    ),
}


def run(
    size: Size,
    numbers: Sequence[int] = tuple(SCENARIOS),
    tiers: Sequence[str] = TIERS,
    progress: Callable[[str], None] = lambda what: None,
) -> Iterator[Scenario]:
    """Run the scenarios named, each on every tier, yielding each once it is complete.

    ``progress`` hears of each step before it runs.
    """
    for number in numbers:
        title, step, labels = SCENARIOS[number]
        if number == 5:
            n = size.close_jobs
            labels = [f"close() with {n} queued", f"close(timeout={CLOSE_AFTER}) with {n} queued"]
        scenario = Scenario(number, title, [Row(label) for label in labels])
        for tier in tiers:
            progress(f"{number}. {title}: {tier}")
            step(tier, size, scenario)
        yield scenario


def table(scenarios: Sequence[Scenario], tiers: Sequence[str] = TIERS) -> str:
    """The side-by-side table: a heading per scenario, then its rows, a column per tier."""
    lines: list[list[str]] = [["", *tiers]]
    for scenario in scenarios:
        lines.append([f"{scenario.number}. {scenario.title}"])
        for row in scenario.rows:
            lines.append([f"   {row.label}", *(row.cells.get(t, "") for t in tiers)])
    widths = [max(len(line[i]) for line in lines if len(line) > 1) for i in range(len(tiers) + 1)]
    out = []
    for line in lines:
        if len(line) == 1:
            out.append(line[0])
        else:
            out.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))
    return "\n".join(text.rstrip() for text in out)


@contextmanager
def _progress_bar(total: int) -> Iterator[Callable[[str], None]]:
    """A progress bar on stderr with rich (the ``tour`` extra), on a terminal.

    Without rich, or into a pipe or a log, where a bar draws nothing, a plain line per step.
    """
    try:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    except ImportError:
        drawn = False
    else:
        drawn = sys.stderr.isatty()
    if not drawn:
        count = itertools.count(1)

        def say(what: str) -> None:
            print(f"[{next(count)}/{total}] {what}", file=sys.stderr, flush=True)

        yield say
        return
    columns = (TextColumn("{task.description:<56}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("starting", total=total)
        first = True

        def advance(what: str) -> None:
            nonlocal first
            bar.update(task, description=what, advance=0 if first else 1)
            first = False

        yield advance
        bar.update(task, advance=1)


def main(argv: list[str] | None = None) -> list[Scenario]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every scenario small: seconds")
    parser.add_argument("--plot", type=Path, metavar="DIR", help="also write one PNG per scenario")
    parser.add_argument(
        "--scenario",
        type=int,
        action="append",
        choices=sorted(SCENARIOS),
        help="run only this scenario (repeatable); default: all",
    )
    args = parser.parse_args(argv)
    if args.plot is not None:
        # Fail before the run, not after it, if the pictures cannot be drawn.
        from benchmarks import tour_plots

        args.plot.mkdir(parents=True, exist_ok=True)
    size = QUICK if args.quick else FULL
    numbers = args.scenario or list(SCENARIOS)
    begun = time.monotonic()
    # The handlers' failures are the scenarios' point: the table counts them, and the
    # tiers' logs of each one would bury the progress bar.
    loggers = [logging.getLogger(tier) for tier in TIERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    scenarios: list[Scenario] = []
    interrupted = False
    try:
        with _progress_bar(len(numbers) * len(TIERS)) as progress:
            scenarios.extend(run(size, numbers, progress=progress))
    except KeyboardInterrupt:
        # Each scenario closes its queues on the way out; what was complete is shown.
        interrupted = True
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    print(table(scenarios))
    if not (interrupted or args.quick or args.scenario):
        print("\n" + exactly_once_on_postgresql())  # minutes of processes: the full tour only
    stopped = ", stopped by Ctrl+C" if interrupted else ""
    print(f"\n(the tour took {time.monotonic() - begun:.0f} s{stopped})")
    if interrupted:
        raise SystemExit(130)  # what a shell reports for a program ended by Ctrl+C
    if args.plot is not None:
        for path in tour_plots.draw(scenarios, args.plot):
            print(f"wrote {path}")
    return scenarios


if __name__ == "__main__":
    main()
