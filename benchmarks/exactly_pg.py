"""Exactly-once effects on PostgreSQL, proven by killing worker processes, and measured.

``kill_and_count(queue_dsn, mode, kills)``: this process is the producer (a handle with
``workers=0``, never killed). It keeps ``PROCESSES`` worker processes alive (``python -m
final worker``, ``WORKERS`` threads each, handler ``benchmarks.pg_effects:MODE``), plus
one more whose every connection goes through a TCP proxy. Every so often it enqueues a
batch and SIGKILLs the oldest of the first ones (it has had the longest to start and
take jobs), at a random moment, and starts another. Once, halfway, it cuts the proxied
process off from the database for longer than its lease while it runs jobs: the
others take them over, and the process comes back to find its claims gone. Then it
waits for the queue to settle and counts the effect rows of each job:

- ``mode="exactly"``: each handler writes its row and completes the job in one
  transaction (``current_attempt().complete(conn)``). Every job must have exactly one row.
- ``mode="plain"``: each handler commits its row, and the queue completes the job
  afterwards. Every job has at least one row; ``two_or_more`` counts those a kill or the
  cut made run again after their row was committed.

``drain_rate(queue_dsn, mode, jobs)``: jobs/s of one process with ``WORKERS`` threads
draining ``jobs`` jobs of that handler, from the first enqueue to the last completion
(the cost of completing in the handler's transaction, in ``make bench``).

``python -m benchmarks.exactly_pg --kills 200`` (``make exactly-test-pg``) runs both modes
in a schema of its own on ``--dsn``, prints both tallies and drops the schema.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import pg_effects
from benchmarks.crash_pg import scratch_schema

ROOT = Path(__file__).resolve().parents[1]
PROCESSES = 3  # worker processes killed in turn
WORKERS = 4  # threads in each
BATCH = 20  # jobs enqueued before each kill
HOLD = b"0.01"  # seconds each handler holds on after writing its row
MODES = ("exactly", "plain")


@dataclass(frozen=True)
class EffectTally:
    mode: str
    kills: int  # SIGKILLs sent
    cut_off: int  # processes cut off from the database past their lease (1)
    processes: int  # worker processes started in all
    jobs: int  # acknowledged jobs
    lost: int  # acknowledged jobs not completed at the end: must be 0
    no_effect: int  # completed jobs without an effect row: must be 0
    one_effect: int  # jobs with exactly one effect row
    two_or_more: int  # jobs with two effect rows or more
    extra_rows: int  # effect rows beyond one per job
    retried: int  # jobs that took more than one attempt (a kill or the cut hit them)
    fenced: int  # late reports the fence refused ("the claim moved on", ClaimLost)
    seconds: float

    @property
    def ok(self) -> bool:
        """No job lost or without its effect; in ``exactly`` mode, no effect twice."""
        fine = self.lost == 0 and self.no_effect == 0
        return fine and (self.mode != "exactly" or self.two_or_more == 0)


def kill_and_count(
    queue_dsn: str,
    mode: str,
    kills: int,
    workdir: Path,
    *,
    seed: int = 0,
    lease: float = 1.0,
    progress: bool = False,
) -> EffectTally:
    """SIGKILL workers of handler ``mode`` ``kills`` times, cut one off once, tally.

    ``queue_dsn``: the database, with a schema this run may fill first in its
    ``search_path``. The queue is named ``mode``. Raises ``RuntimeError`` if the queue
    does not settle within a minute of the last kill.
    """
    import psycopg

    from final import Job, JobQueue
    from tests.tcp_proxy import TcpProxy

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    with psycopg.connect(queue_dsn, autocommit=True) as conn:
        conn.execute(pg_effects.TABLE)
    address = urllib.parse.urlsplit(queue_dsn)
    proxy = TcpProxy((address.hostname or "127.0.0.1", address.port or 5432))
    user = f"{address.username}@" if address.username else ""
    proxied = queue_dsn.replace(address.netloc, f"{user}127.0.0.1:{proxy.port}", 1)
    rng = random.Random(seed)
    logs = workdir / f"logs-{mode}"
    logs.mkdir(parents=True, exist_ok=True)
    producer = JobQueue(lambda job: None, dsn=queue_dsn, queue=mode, workers=0, max_retries=50)
    begun = time.monotonic()
    enqueued = 0
    started = 0
    live: list[subprocess.Popen[bytes]] = []

    def start(dsn: str) -> subprocess.Popen[bytes]:
        nonlocal started
        started += 1
        return _worker(dsn, mode, lease, logs / f"worker-{started}.log")

    try:
        cut = start(proxied)
        live = [start(queue_dsn) for _ in range(PROCESSES)]
        for done in range(kills):
            batch = [Job(id=str(n), payload=HOLD) for n in range(enqueued, enqueued + BATCH)]
            producer.enqueue_many(batch)
            enqueued += BATCH
            time.sleep(rng.uniform(0.02, 0.25))  # the random moment
            if done == kills // 2:
                proxy.cut()  # mid-batch: it holds attempts, which the others take over
                time.sleep(2.5 * lease)
                proxy.resume()
            victim = live.pop(0)  # the oldest: it has had the longest to take jobs
            victim.kill()
            victim.wait()
            live.append(start(queue_dsn))
            if progress and (done + 1) % 50 == 0:
                print(f"  {mode}: {done + 1} kills, {enqueued} jobs acknowledged", flush=True)
        deadline = time.monotonic() + 60 + 2 * lease
        while not _settled(queue_dsn, mode):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {mode} queue did not settle after the last kill")
            time.sleep(0.1)  # a harness: polling the database is fine here
        for child in [*live, cut]:
            child.terminate()
        for child in [*live, cut]:
            child.wait()
        jobs, effects = _rows(queue_dsn, mode)
    finally:
        for child in [*live, cut]:
            if child.poll() is None:
                child.kill()
                child.wait()
        producer.close()
        proxy.close()
    completed = {i for i, (status, _) in jobs.items() if status == "completed"}
    acked = {str(n) for n in range(enqueued)}
    return EffectTally(
        mode=mode,
        kills=kills,
        cut_off=1,
        processes=started,
        jobs=len(acked),
        lost=len(acked - completed),
        no_effect=sum(1 for i in completed if effects.get(i, 0) == 0),
        one_effect=sum(1 for i in acked if effects.get(i, 0) == 1),
        two_or_more=sum(1 for i in acked if effects.get(i, 0) >= 2),
        extra_rows=sum(max(0, effects.get(i, 0) - 1) for i in acked),
        retried=sum(1 for _, attempts in jobs.values() if attempts > 1),
        fenced=sum(_fenced(log.read_text()) for log in logs.glob("*.log")),
        seconds=time.monotonic() - begun,
    )


def _fenced(log: str) -> int:
    """Late reports of a log that the claim's fence refused."""
    return log.count("the claim moved on") + log.count("ClaimLost")


def _worker(dsn: str, mode: str, lease: float, log: Path) -> subprocess.Popen[bytes]:
    """Start a worker process; not waited for: a kill during start-up is a moment too."""
    command = [
        *(sys.executable, "-m", "final", "worker", "--dsn", dsn, "--queue", mode),
        *("--handler", f"benchmarks.pg_effects:{mode}", "--workers", str(WORKERS)),
        *("--lease", str(lease), "--backoff", "0.01", "--max-backoff", "0.05"),
        *("--max-retries", "50"),
    ]
    with open(log, "w") as stderr:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, pg_effects.DSN_ENV: dsn},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def _settled(queue_dsn: str, mode: str) -> bool:
    """Whether no job of the queue is waiting, retrying or running."""
    jobs, _ = _rows(queue_dsn, mode)
    return all(status in ("completed", "failed") for status, _ in jobs.values())


def _rows(queue_dsn: str, mode: str) -> tuple[dict[str, tuple[str, int]], dict[str, int]]:
    """Each job of the queue: its status and attempts; and its effect rows, counted."""
    import psycopg

    with psycopg.connect(queue_dsn) as conn:
        jobs: list[Any] = conn.execute(
            "SELECT id, status, attempts FROM jobq_jobs WHERE queue = %s", (mode,)
        ).fetchall()
        effects: list[Any] = conn.execute(
            "SELECT job, count(*) FROM jobq_effects WHERE mode = %s GROUP BY job", (mode,)
        ).fetchall()
    return {i: (s, a) for i, s, a in jobs}, {i: int(n) for i, n in effects}


def drain_rate(queue_dsn: str, mode: str, jobs: int) -> float:
    """Jobs/s of one handle with ``WORKERS`` threads draining ``jobs`` jobs of handler
    ``mode`` (no hold): from the first enqueue to the last completion."""
    import psycopg

    from final import Job, JobQueue

    with psycopg.connect(queue_dsn, autocommit=True) as conn:
        conn.execute(pg_effects.TABLE)
    pg_effects.EFFECTS_DSN = queue_dsn
    handler = pg_effects.exactly if mode == "exactly" else pg_effects.plain
    queue = f"drain-{mode}-{uuid.uuid4().hex[:8]}"
    q = JobQueue(handler, dsn=queue_dsn, queue=queue, workers=WORKERS)
    try:
        q.join()  # connected and listening before the clock starts
        begun = time.perf_counter()
        q.enqueue_many([Job(id=str(n)) for n in range(jobs)])
        if not q.join(timeout=300):
            raise RuntimeError(f"{jobs} {mode} jobs did not drain within 300 s")
        return jobs / (time.perf_counter() - begun)
    finally:
        q.close(timeout=30)  # after a failure, not for ever
        pg_effects.close_connections()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--kills", type=int, default=200, help="per mode")
    parser.add_argument("--seed", type=int, default=20261130)
    parser.add_argument("--lease", type=float, default=1.0, help="seconds")
    parser.add_argument(
        "--dsn",
        default=os.environ.get("JOBQ_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--json", type=Path, help="also write the tallies here")
    args = parser.parse_args(argv)
    tallies = []
    with scratch_schema(args.dsn, "jobq_exactly") as dsn, tempfile.TemporaryDirectory() as tmp:
        for mode in MODES:
            print(f"{mode}: kill -9 of worker processes {args.kills} times", flush=True)
            tallies.append(
                kill_and_count(
                    dsn,
                    mode,
                    args.kills,
                    Path(tmp),
                    seed=args.seed,
                    lease=args.lease,
                    progress=True,
                )
            )
    print(table(tallies))
    if args.json:
        args.json.write_text(json.dumps([asdict(t) for t in tallies], indent=2) + "\n")
    sys.exit(0 if all(t.ok for t in tallies) else 1)


def table(tallies: list[EffectTally]) -> str:
    """The tallies side by side, one row per figure."""
    names = list(asdict(tallies[0]))
    lines = ["  " + "".join(f"{'':<14}") + "".join(f"{t.mode:>10}" for t in tallies)]
    for name in names[1:]:
        cells = []
        for t in tallies:
            value = getattr(t, name)
            cells.append(f"{value:>10.1f}" if isinstance(value, float) else f"{value:>10,}")
        lines.append(f"  {name:<14}" + "".join(cells))
    verdicts = "".join(f"{'ok' if t.ok else 'FAILED':>10}" for t in tallies)
    lines.append(f"  {'verdict':<14}" + verdicts)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
