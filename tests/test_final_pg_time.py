"""final on PostgreSQL, jobs in time: run_at, cancel, and periodic across processes.

Each test has a schema of its own on the test server (``tests/pg.py``). Handles on one
dsn share nothing but the database, as processes would; three real processes declare
one schedule in the last test.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from final import Job, JobQueue, Priority, QueueFull, Status
from final.periodic import period_key, period_of
from tests.pg import Database
from tests.support import PATIENCE, Recorder, Starts

pytest.importorskip("psycopg")

pytestmark = pytest.mark.tiers("final-pg")

UTC = datetime.UTC


def later(seconds: float) -> datetime.datetime:
    return datetime.datetime.now(UTC) + datetime.timedelta(seconds=seconds)


# --- run_at ---------------------------------------------------------------------------


def test_a_scheduled_job_waits_for_its_time_then_runs_never_before(pg_queues: Any) -> None:
    starts = Starts()
    pg_queues(starts, workers=2)
    producer = pg_queues(workers=0)
    time.sleep(0.1)  # let the worker handle reach its first wait: the NOTIFY must wake it
    at = later(0.3)
    producer.enqueue(Job(id="soon", run_at=at))
    assert producer.status("soon") is Status.SCHEDULED
    info = producer.info("soon")
    assert info is not None and info.run_at == pytest.approx(at.timestamp(), abs=1e-5)
    assert producer.metrics().scheduled == 1
    starts.wait(1)
    assert starts.at["soon"] >= at.timestamp()
    assert producer.join(PATIENCE)
    done = producer.info("soon")
    assert done is not None and done.status is Status.COMPLETED
    assert done.run_at == pytest.approx(at.timestamp(), abs=1e-5)


def test_a_job_due_with_no_enqueue_to_wake_anyone_starts_on_time(
    pg_queues: Any, db: Database
) -> None:
    # Enqueued before any worker listened: only the worker's own look into the
    # database, at start and after each wait, knows when it is due.
    producer = pg_queues(workers=0)
    at = later(1.5)
    producer.enqueue_many([Job(id=f"j{i}", run_at=at) for i in range(20)])
    starts = Starts()
    pg_queues(starts, workers=4)
    starts.wait(20)
    assert min(starts.at.values()) >= at.timestamp()


def test_a_run_at_in_the_past_is_queued_at_once(pg_queues: Any) -> None:
    starts = Starts()
    producer = pg_queues(workers=0)
    producer.enqueue(Job(id="late", run_at=later(-60)))
    assert producer.status("late") is Status.QUEUED
    pg_queues(starts, workers=1)
    starts.wait(1)


def test_scheduled_jobs_hold_no_lane_room(pg_queues: Any) -> None:
    producer = pg_queues(workers=0, queue_size=2)
    producer.enqueue_many(
        [Job(id=f"later{i}", priority=Priority.HIGH, run_at=later(3600)) for i in range(5)],
        timeout=0,
    )
    producer.enqueue_many([Job(id=f"now{i}", priority=Priority.HIGH) for i in range(2)], timeout=0)
    with pytest.raises(QueueFull):
        producer.enqueue(Job(id="one-too-many", priority=Priority.HIGH), timeout=0)
    metrics = producer.metrics()
    assert metrics.scheduled == 5 and metrics.by_priority[Priority.HIGH].scheduled == 5
    assert metrics.queued == 2


def test_scheduled_jobs_hold_no_worker(pg_queues: Any) -> None:
    recorder = Recorder()
    worker = pg_queues(recorder, workers=1)
    worker.enqueue_many(
        [Job(id=f"later{i}", priority=Priority.HIGH, run_at=later(3600)) for i in range(5)]
    )
    worker.enqueue(Job(id="now", priority=Priority.LOW))
    recorder.wait_until(lambda r: r.succeeded == ["now"], "the job due now to run")
    wait_for_status(worker, "now", Status.COMPLETED)
    metrics = worker.metrics()
    assert metrics.scheduled == 5 and metrics.queued == 0 and metrics.in_flight == 0


def test_a_scheduled_job_keeps_its_time_across_a_restart(pg_queues: Any, db: Database) -> None:
    first = pg_queues(Recorder(), workers=2)
    at = later(2.0)  # still ahead when the second handle first looks, on a loaded machine
    first.enqueue(Job(id="kept", run_at=at))
    first.enqueue(Job(id="far", run_at=later(3600)))
    first.close()
    starts = Starts()
    second = pg_queues(starts, workers=2)
    assert second.status("kept") in (Status.SCHEDULED, Status.QUEUED, Status.PROCESSING)
    starts.wait(1)
    assert starts.at["kept"] >= at.timestamp()
    assert second.status("far") is Status.SCHEDULED


# --- cancel ---------------------------------------------------------------------------


def test_cancel_calls_off_a_job_that_has_not_started_from_any_handle(pg_queues: Any) -> None:
    recorder = Recorder(hold=lambda job: job.id == "running")
    worker = pg_queues(recorder, workers=1, **{"backoff": 5.0, "max_backoff": 5.0})
    web = pg_queues(workers=0)
    web.enqueue_many([Job(id="running"), Job(id="queued"), Job(id="later", run_at=later(60))])
    recorder.wait_started(1)
    assert web.cancel("queued") is True
    assert web.cancel("later") is True
    assert web.cancel("running") is False
    assert web.cancel("queued") is False  # settled now
    with pytest.raises(KeyError):
        web.cancel("unknown")
    assert [web.status(i) for i in ("queued", "later", "running")] == [
        Status.CANCELLED,
        Status.CANCELLED,
        Status.PROCESSING,
    ]
    metrics = web.metrics()  # a counter of the handle that cancelled: it never goes down
    assert metrics.cancelled == 2 and metrics.by_priority[Priority.MEDIUM].cancelled == 2
    assert worker.metrics().cancelled == 0
    recorder.release()
    assert web.join(PATIENCE)  # cancelled jobs count as settled
    assert recorder.attempts == Counter({"running": 1})


def test_a_job_waiting_out_a_backoff_can_be_cancelled(pg_queues: Any) -> None:
    recorder = Recorder(fail=lambda job, n: True)
    worker = pg_queues(recorder, workers=1, backoff=30.0, max_backoff=30.0)
    worker.enqueue(Job(id="flaky"))
    recorder.wait_started(1)
    wait_for_status(worker, "flaky", Status.RETRYING)
    assert worker.cancel("flaky") is True
    assert worker.join(PATIENCE)
    assert worker.status("flaky") is Status.CANCELLED


def wait_for_status(q: JobQueue, job_id: str, status: Status) -> None:
    deadline = time.monotonic() + PATIENCE
    while q.status(job_id) is not status:  # set by another thread's settle: poll
        assert time.monotonic() < deadline, f"{job_id} never became {status}"
        time.sleep(0.01)


def test_cancel_and_a_claim_racing_for_a_job_exactly_one_wins(pg_queues: Any) -> None:
    # Each round, the workers claim a batch from its front while cancel() works
    # from its back: they meet somewhere in the middle, at a different job each
    # round. Every job either ran once or was cancelled, never both, never neither.
    ran = Counter[str]()
    lock = threading.Lock()

    def handler(job: Job) -> None:
        with lock:
            ran[job.id] += 1

    pg_queues(handler, workers=4)
    web = pg_queues(workers=0)
    cancelled: set[str] = set()
    for round_ in range(30):
        ids = [f"r{round_}-{i}" for i in range(16)]
        web.enqueue_many([Job(id=i) for i in ids])
        cancelled.update(i for i in reversed(ids) if web.cancel(i))
    assert web.join(PATIENCE)
    every = {f"r{r}-{i}" for r in range(30) for i in range(16)}
    assert set(ran) | cancelled == every
    assert not set(ran) & cancelled
    assert set(ran.values()) == {1}
    assert cancelled and ran  # both won sometimes: the race did happen
    assert all(web.status(i) is Status.CANCELLED for i in cancelled)
    assert all(web.status(i) is Status.COMPLETED for i in ran)


# --- periodic across processes ----------------------------------------------------------


def test_a_handle_without_workers_may_declare_a_schedule(pg_queues: Any) -> None:
    recorder = Recorder()
    pg_queues(recorder, workers=1)
    web = pg_queues(workers=0)
    web.periodic("tick", 0.5, lambda: Job(payload=b"tick"))
    recorder.wait_until(lambda r: len(r.succeeded) >= 2, "two periods' jobs")
    first = recorder.succeeded[0]
    assert first.startswith("periodic:tick:0.5s:")
    assert web.status(first) in (Status.PROCESSING, Status.COMPLETED)


_DECLARER = textwrap.dedent(
    """
    import sys, time
    from final import Job, JobQueue

    dsn, ledger, every = sys.argv[1], sys.argv[2], float(sys.argv[3])

    def run(job):
        with open(ledger, "a") as out:
            out.write(job.id + "\\n")

    q = JobQueue(run, dsn=dsn, workers=1)
    q.periodic("tick", every, Job)
    print("declared", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    q.close()
    """
)


def declare(dsn: str, ledger: Path, every: float) -> subprocess.Popen[str]:
    root = str(Path(__file__).resolve().parents[1])
    child = subprocess.Popen(
        [sys.executable, "-c", _DECLARER, dsn, str(ledger), str(every)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": root},
    )
    assert child.stdout is not None and child.stdout.readline() == "declared\n"
    return child


def stop(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.close()
    assert child.wait(timeout=PATIENCE * 3) == 0
    assert child.stdout is not None
    child.stdout.close()


@pytest.mark.slow
def test_three_processes_declaring_one_schedule_run_one_job_per_period(
    db: Database, tmp_path: Path
) -> None:
    every = 1.0
    ledger = tmp_path / "ledger"
    ledger.touch()
    began = period_of(time.time(), every)
    children = [declare(db.queue_dsn, ledger, every) for _ in range(3)]
    for restart in range(2):  # one of them restarts twice, within and across periods
        stop(children[restart])
        children[restart] = declare(db.queue_dsn, ledger, every)
    turn = period_of(time.time(), every) + 3
    while period_of(time.time(), every) < turn:
        time.sleep(0.1)  # three periods turn with all three running
    for child in children:
        stop(child)
    ended = period_of(time.time(), every)
    prefix = period_key("tick", every, 0).removesuffix("0")
    ran = Counter(int(line.removeprefix(prefix)) for line in ledger.read_text().split())
    assert set(ran.values()) == {1}, ran  # one run per period
    assert began <= min(ran) and max(ran) <= ended
    # No period lost while they ran: each period from the first to the last has its job.
    assert sorted(ran) == list(range(min(ran), max(ran) + 1))
    assert len(ran) >= 4
