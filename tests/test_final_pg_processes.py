"""final on PostgreSQL across real processes: producers, workers, kills, a partition.

The worker processes are ``python -m final worker`` running
``benchmarks.pg_handlers:run``, which appends each attempt to a ledger file the test
reads (its docstring says why a file survives a SIGKILL). Another process's progress
is only seen in the database, its ledger or its log, so the tests poll those.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from benchmarks.crash_pg import POISON_RETRIES, kill_workers_repeatedly, per_kill_bound
from benchmarks.pg_handlers import LEDGER_ENV, Entry, read_ledger, starts
from final import Job, JobQueue
from tests.pg import Database
from tests.support import PATIENCE
from tests.tcp_proxy import TcpProxy

pytest.importorskip("psycopg")

pytestmark = [pytest.mark.tiers("final-pg"), pytest.mark.slow]

HANDLER = "benchmarks.pg_handlers:run"


class Processes:
    """Worker processes of one test, each logging to a file of its own; stopped at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.ledger = tmp_path / "ledger"
        self.ledger.touch()
        self._dir = tmp_path
        self.started: list[tuple[subprocess.Popen[str], Path]] = []

    def worker(self, dsn: str, *options: str) -> tuple[subprocess.Popen[str], Path]:
        """``python -m final worker`` on ``dsn``, once its log says it is ready."""
        log = self._dir / f"worker-{len(self.started)}.log"
        command = [sys.executable, "-m", "final", "worker", "--dsn", dsn, "--handler", HANDLER]
        with open(log, "w") as out:
            child = subprocess.Popen(
                [*command, *options],
                env={**os.environ, LEDGER_ENV: str(self.ledger)},
                stdout=subprocess.DEVNULL,
                stderr=out,
                text=True,
            )
        self.started.append((child, log))
        wait_for(lambda: "worker ready" in log.read_text(), f"{log.name} to be ready", child)
        return child, log

    def stop(self) -> list[int]:
        """SIGTERM every worker still running and wait; their exit codes."""
        for child, _ in self.started:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        codes = []
        for child, _ in self.started:
            try:
                codes.append(child.wait(timeout=PATIENCE))
            except subprocess.TimeoutExpired:
                child.kill()
                codes.append(child.wait())
        return codes


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    made = Processes(tmp_path)
    yield made
    made.stop()


def wait_for(
    predicate: Callable[[], bool],
    what: str,
    child: subprocess.Popen[str] | None = None,
    patience: float = PATIENCE,
) -> None:
    """Poll until ``predicate`` holds: another process's work is seen only where it wrote."""
    deadline = time.monotonic() + patience
    while not predicate():
        if child is not None and child.poll() is not None:
            raise AssertionError(f"the process exited with {child.returncode} before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {patience}s waiting for {what}")
        time.sleep(0.02)


def rows(db: Database) -> dict[str, tuple[str, int]]:
    with db.connect() as conn:
        found = conn.execute("SELECT id, status, attempts FROM jobq_jobs").fetchall()
    return {job_id: (status, attempts) for job_id, status, attempts in found}


def test_two_producers_and_three_worker_processes_share_twenty_thousand_jobs(
    db: Database, processes: Processes
) -> None:
    for _ in range(3):
        processes.worker(db.queue_dsn, "--workers", "8")
    producers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.pg_producer", db.queue_dsn, prefix, "10000", "shared"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for prefix in ("a", "b")
    ]
    said = [p.communicate(timeout=300)[0].splitlines() for p in producers]
    assert [p.returncode for p in producers] == [0, 0]
    # One key, offered through both at once: the database takes it once, refuses it once.
    assert sorted(lines[1] for lines in said) == ["key accepted", "key refused"]
    for lines in said:  # each producer's own status() of every job it accepted
        accepted = 10001 if lines[1] == "key accepted" else 10000
        assert lines[2] == f"completed {accepted} of {accepted}"
    ran = starts(read_ledger(processes.ledger))
    every = {f"{prefix}{i}" for prefix in ("a", "b") for i in range(10000)}
    assert every <= set(ran)  # each ran at least once
    assert set(ran) - every in ({"a-key"}, {"b-key"})  # and nothing else ran
    assert all(status == "completed" for status, _ in rows(db).values())
    assert processes.stop() == [0, 0, 0]


def test_kill_9_of_worker_processes_loses_nothing_and_bounds_the_repeats(
    db: Database, tmp_path: Path
) -> None:
    tally = kill_workers_repeatedly(db.queue_dsn, tmp_path, kills=20, seed=7, lease=1.0)
    assert tally.kills == 20
    assert tally.acknowledged > 0 and tally.completed == tally.acknowledged
    assert tally.lost == 0
    assert tally.unknown == 0
    assert 0 <= tally.repeats <= tally.repeat_bound
    assert tally.repeat_bound == (tally.kills + tally.self_kills) * per_kill_bound()
    # The job that kills its process: dead-lettered after exactly max_retries + 1 claims.
    assert tally.poison_claims == POISON_RETRIES + 1
    assert tally.poison_dead


def test_a_worker_cut_off_past_its_lease_loses_the_job_and_its_late_settle_changes_nothing(
    db: Database, processes: Processes, tmp_path: Path
) -> None:
    address = urllib.parse.urlsplit(db.dsn)
    proxy = TcpProxy((address.hostname or "127.0.0.1", address.port or 5432))
    producer = JobQueue(lambda job: None, dsn=db.queue_dsn, workers=0)
    try:
        user = f"{address.username}@" if address.username else ""
        through_proxy = db.queue_dsn.replace(address.netloc, f"{user}127.0.0.1:{proxy.port}", 1)
        first, first_log = processes.worker(through_proxy, "--workers", "1", "--lease", "1")
        released = tmp_path / "release"
        producer.enqueue(Job(id="held", payload=f"hold1:{released}".encode()))

        def entries() -> list[Entry]:
            return read_ledger(processes.ledger)

        wait_for(lambda: len(entries()) == 1, "the first worker to start the job", first)
        proxy.cut()
        processes.worker(db.queue_dsn, "--workers", "1", "--lease", "1")
        wait_for(lambda: rows(db)["held"] == ("completed", 2), "the job rescued and completed")
        proxy.resume()
        released.touch()  # the first attempt returns, and its worker tries to settle it
        moved_on = "job held: the claim moved on"
        wait_for(lambda: moved_on in first_log.read_text(), "the late settle", first)
        assert rows(db)["held"] == ("completed", 2)  # as the second worker left it
        ended = [(e.pid, e.attempt) for e in entries() if e.event == "end"]
        assert (first.pid, 1) in ended and len(ended) == 2
        assert processes.stop() == [0, 0]  # through the proxy, which must still forward
    finally:
        producer.close()
        proxy.close()


def test_a_rate_limit_holds_across_three_worker_processes(
    db: Database, processes: Processes
) -> None:
    rate = 20
    for _ in range(3):
        processes.worker(db.queue_dsn, "--workers", "4", "--rate-limit", str(rate))
    producer = JobQueue(lambda job: None, dsn=db.queue_dsn, workers=0)
    producer.enqueue_many([Job(id=f"r{i}") for i in range(70)])
    assert producer.join(3 * PATIENCE)
    producer.close()
    with db.connect() as conn:  # the claim's time, the server's clock: what the bucket gates
        claimed = sorted(
            float(row[0])
            for row in conn.execute("SELECT extract(epoch FROM started_at) FROM jobq_jobs")
        )
    assert len(claimed) == 70
    burst = max(1.0, rate / 10)
    for i, start in enumerate(claimed):
        in_window = sum(1 for t in claimed[i:] if t < start + 1.0)
        assert in_window <= rate + burst
    assert len(starts(read_ledger(processes.ledger))) == 70
