"""Kill -9 worker processes of final on PostgreSQL at random moments, and tally.

``kill_workers_repeatedly(queue_dsn, workdir, kills)``: this process is the producer
(a handle with ``workers=0``; it is never killed, so every job it enqueued was
acknowledged). It keeps ``PROCESSES`` worker processes (``python -m final worker``,
``WORKERS`` threads each, handler ``benchmarks.pg_handlers:run``) alive, and every
so often SIGKILLs one at random and starts another: during start-up, a claim, a
run, a backoff (every tenth job fails its first attempt), a settle. Before each kill
it enqueues another batch. A poison job, whose handler SIGKILLs its own process,
goes in first with ``max_retries=2``. Then it stops killing, waits for the queue to
settle, and counts from the database and the handlers' ledger:

- acknowledged jobs not completed at the end: ``lost``, must be 0;
- runs of ids never enqueued: ``unknown``, must be 0;
- runs beyond one per job and one per planned failure: ``repeats``, at most
  ``repeat_bound`` (see ``per_kill_bound``);
- the poison job: failed, in the dead letters, after exactly ``max_retries + 1`` claims.

``python -m benchmarks.crash_pg --kills 200`` (``make crash-test-pg``) makes a schema
of its own on ``--dsn``, prints the tally and drops the schema.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.pg_handlers import LEDGER_ENV, read_ledger

ROOT = Path(__file__).resolve().parents[1]
PROCESSES = 3  # worker processes alive at once
WORKERS = 4  # threads in each
POISON = "poison"
POISON_RETRIES = 2
BATCH = 30  # jobs enqueued before each kill


@dataclass(frozen=True)
class PgTally:
    kills: int  # SIGKILLs sent by the harness
    self_kills: int  # processes the poison job killed: one per attempt of it
    processes: int  # worker processes started in all
    acknowledged: int  # ids whose enqueue returned (the poison job aside)
    completed: int  # acknowledged ids completed at the end
    lost: int  # acknowledged ids not completed at the end: must be 0
    unknown: int  # ids that ran but were never enqueued: must be 0
    runs: int  # handler runs in all, the poison job's aside
    expected_runs: int  # one per job, one more per planned first-attempt failure
    repeats: int  # runs - expected_runs: attempts the kills cut short, run again
    repeat_bound: int  # (kills + self_kills) x per_kill_bound()
    poison_claims: int  # attempts of the poison job started: must be POISON_RETRIES + 1
    poison_dead: bool  # the poison job is in the dead letters, attempts counted so
    seconds: float

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.unknown == 0
            and self.repeats <= self.repeat_bound
            and self.poison_claims == POISON_RETRIES + 1
            and self.poison_dead
        )


def per_kill_bound() -> int:
    """How many runs one kill can make happen again: the killed process's attempts in flight.

    A process claims only as many jobs as it has idle threads, and settles each
    attempt (one statement, visible to every session at once) before its thread
    takes the next. So when it dies, at most ``WORKERS`` attempts had started and not
    settled; those run again after the rescue. Jobs it had claimed and not started
    run once, later: not repeats.
    """
    return WORKERS


def kill_workers_repeatedly(
    queue_dsn: str,
    workdir: Path,
    kills: int,
    seed: int = 0,
    lease: float = 1.0,
    progress: bool = False,
) -> PgTally:
    """SIGKILL worker processes on ``queue_dsn`` ``kills`` times, let the queue settle, tally.

    ``queue_dsn`` names the database and, through its ``search_path``, a schema this
    run may fill (the tables are created there). ``lease`` (seconds) is every
    process's. Raises ``RuntimeError`` if the queue does not settle within a minute
    of the last kill.
    """
    from final import Job, JobQueue

    workdir.mkdir(parents=True, exist_ok=True)
    ledger = workdir / "ledger"
    ledger.touch()
    logs = workdir / "logs"
    rng = random.Random(seed)
    producer = JobQueue(lambda job: None, dsn=queue_dsn, workers=0, max_retries=20)
    begun = time.monotonic()
    enqueued: list[str] = []
    started = 0
    done_kills = 0
    live: list[subprocess.Popen[str]] = []
    try:
        producer.enqueue(Job(id=POISON, payload=b"kill", max_retries=POISON_RETRIES))
        live += [_worker(queue_dsn, ledger, lease, logs, i) for i in range(PROCESSES)]
        started = PROCESSES

        def replace_dead(victim: int | None) -> None:
            """Start a process in place of the victim and of any the poison job killed."""
            nonlocal started
            for i, child in enumerate(live):
                if child.poll() is None and i != victim:
                    continue
                child.wait()
                live[i] = _worker(queue_dsn, ledger, lease, logs, started)
                started += 1

        while done_kills < kills:
            batch = [
                Job(id=str(n), payload=b"flaky sleep:0.003" if n % 10 == 0 else b"sleep:0.003")
                for n in range(len(enqueued), len(enqueued) + BATCH)
            ]
            producer.enqueue_many(batch)
            enqueued += [job.id for job in batch]
            time.sleep(rng.uniform(0.05, 0.5))  # the random moment
            replace_dead(None)  # so that the kill below hits a live process
            victim = rng.randrange(PROCESSES)
            live[victim].kill()
            done_kills += 1
            if progress and done_kills % 50 == 0:
                print(f"  {done_kills} kills, {len(enqueued)} jobs acknowledged", flush=True)
            replace_dead(victim)
        deadline = time.monotonic() + 60 + 2 * lease
        while not _settled(queue_dsn):  # the poison job may still be killing processes
            if time.monotonic() > deadline:
                raise RuntimeError("the queue did not settle after the last kill")
            replace_dead(None)
            time.sleep(0.1)  # a harness: polling the database is fine here
        for child in live:
            child.terminate()
        for child in live:
            child.wait()
        rows = _rows(queue_dsn)
    finally:
        for child in live:
            if child.poll() is None:
                child.kill()
                child.wait()
        producer.close()
    entries = read_ledger(ledger)
    poison = [e for e in entries if e.job_id == POISON]
    others = [e for e in entries if e.job_id != POISON]
    runs = [e.job_id for e in others if e.event == "start"]
    failures = sum(1 for e in others if e.event == "fail")
    distinct = set(runs)
    acked = set(enqueued)
    completed = {job_id for job_id, (status, _) in rows.items() if status == "completed"}
    expected = len(distinct) + failures
    poison_claims = sum(1 for e in poison if e.event == "start")
    poison_status, poison_attempts = rows.get(POISON, ("missing", 0))
    return PgTally(
        kills=done_kills,
        self_kills=poison_claims,
        processes=started,
        acknowledged=len(acked),
        completed=len(acked & completed),
        lost=len(acked - completed),
        unknown=len(distinct - acked),
        runs=len(runs),
        expected_runs=expected,
        repeats=len(runs) - expected,
        repeat_bound=(done_kills + poison_claims) * per_kill_bound(),
        poison_claims=poison_claims,
        poison_dead=poison_status == "failed" and poison_attempts == POISON_RETRIES + 1,
        seconds=time.monotonic() - begun,
    )


def _worker(
    queue_dsn: str, ledger: Path, lease: float, logs: Path, n: int
) -> subprocess.Popen[str]:
    """Start a worker process; not waited for: a kill during start-up is a moment too."""
    logs.mkdir(exist_ok=True)
    command = [
        *(sys.executable, "-m", "final", "worker", "--dsn", queue_dsn),
        *("--handler", "benchmarks.pg_handlers:run", "--workers", str(WORKERS)),
        *("--lease", str(lease), "--backoff", "0.01", "--max-backoff", "0.05"),
    ]
    with open(logs / f"worker-{n}.log", "w") as log:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, LEDGER_ENV: str(ledger)},
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
        )


def _settled(queue_dsn: str) -> bool:
    """Whether no job of the queue is waiting, retrying or running."""
    return all(status in ("completed", "failed") for status, _ in _rows(queue_dsn).values())


def _rows(queue_dsn: str) -> dict[str, tuple[str, int]]:
    """Each job of the queue ``default``: its status and attempts."""
    import psycopg

    with psycopg.connect(queue_dsn) as conn:
        rows: list[Any] = conn.execute(
            "SELECT id, status, attempts FROM jobq_jobs WHERE queue = 'default'"
        ).fetchall()
    return {job_id: (status, attempts) for job_id, status, attempts in rows}


def with_schema(dsn: str, schema: str) -> str:
    """``dsn`` with ``schema`` first in its search path."""
    options = urllib.parse.quote(f"-csearch_path={schema}")
    return f"{dsn}{'&' if '?' in dsn else '?'}options={options}"


@contextlib.contextmanager
def scratch_schema(dsn: str, prefix: str) -> Iterator[str]:
    """A schema of its own on ``dsn``'s server for one run, dropped when the block ends;
    yields ``dsn`` with that schema first in its search path."""
    import psycopg
    from psycopg import sql

    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield with_schema(dsn, schema)
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=20261130)
    parser.add_argument("--lease", type=float, default=1.0, help="seconds")
    parser.add_argument(
        "--dsn",
        default=os.environ.get("JOBQ_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--json", type=Path, help="also write the tally here")
    args = parser.parse_args(argv)
    print(f"final on PostgreSQL, kill -9 of worker processes, {args.kills} times:", flush=True)
    with scratch_schema(args.dsn, "jobq_crash") as dsn, tempfile.TemporaryDirectory() as tmp:
        tally = kill_workers_repeatedly(dsn, Path(tmp), args.kills, args.seed, args.lease, True)
    for name, value in asdict(tally).items():
        shown = f"{value:,.1f}" if isinstance(value, float) else f"{value:,}"
        shown = str(value) if isinstance(value, bool) else shown
        print(f"  {name:<15} {shown}")
    print("  verdict         " + ("ok" if tally.ok else "FAILED"))
    if args.json:
        args.json.write_text(json.dumps(asdict(tally), indent=2) + "\n")
    sys.exit(0 if tally.ok else 1)


if __name__ == "__main__":
    main()
