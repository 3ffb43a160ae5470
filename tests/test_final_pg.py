"""final on PostgreSQL: one queue shared by many handles, as if in many processes.

Each test has a schema of its own on the test server (``tests/pg.py``). Two handles
on one dsn share nothing but the database, exactly as two processes would: what one
sees of the other's jobs, it read there.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from final import DuplicateJob, Job, JobQueue, Priority, Status, StoreError
from final.pg_schema import SchemaMismatch
from tests.pg import Database
from tests.support import PATIENCE, Boom, Recorder, wait_for

pytest.importorskip("psycopg")

from final import pg_engine  # after the skip: it imports psycopg

pytestmark = pytest.mark.tiers("final-pg")

FAST = {"backoff": 0.01, "max_backoff": 0.02}


def row(db: Database, job_id: str) -> pg_engine.StoredJob | None:
    with db.connect() as conn:
        return pg_engine.find(conn, "default", job_id)


# --- one queue, many handles ---------------------------------------------------------


def test_a_dsn_builds_a_job_queue_shared_through_the_database(pg_queues: Any) -> None:
    q = pg_queues(workers=0)
    assert isinstance(q, JobQueue)
    assert type(q).__name__ == "SharedQueue"


def test_jobs_enqueued_by_a_handle_without_workers_run_on_another(pg_queues: Any) -> None:
    recorder = Recorder()
    producer = pg_queues(workers=0)
    pg_queues(recorder, workers=3)
    producer.enqueue_many([Job(id=f"j{i}") for i in range(30)])
    producer.enqueue(Job(id="last", priority=Priority.HIGH))
    assert producer.join(PATIENCE)
    assert sorted(recorder.attempts) == sorted([f"j{i}" for i in range(30)] + ["last"])
    assert set(recorder.attempts.values()) == {1}
    assert producer.status("j7") is Status.COMPLETED
    info = producer.info("last")
    assert info is not None and info.attempts == 1 and info.finished_at is not None


def test_an_idempotency_key_used_through_one_handle_is_refused_through_another(
    pg_queues: Any,
) -> None:
    first, second = pg_queues(workers=0), pg_queues(workers=0)
    first.enqueue(Job(id="a", idempotency_key="order-1"))
    with pytest.raises(DuplicateJob) as refused:
        second.enqueue_many([Job(id="b"), Job(id="c", idempotency_key="order-1"), Job(id="d")])
    assert refused.value.job_id == "a"
    assert refused.value.accepted == 1
    assert second.status("b") is Status.QUEUED
    assert second.status("d") is None
    with pytest.raises(DuplicateJob):
        second.enqueue(Job(id="a"))


def test_an_id_or_key_with_a_nul_is_refused_by_name_not_by_the_database(pg_queues: Any) -> None:
    # PostgreSQL's text holds no NUL: the insert failed, and over HTTP that was a 500.
    q = pg_queues(workers=0)
    with pytest.raises(ValueError, match=r"Job\.idempotency_key must not contain NUL"):
        q.enqueue(Job(id="a", idempotency_key="order\x001"))
    with pytest.raises(ValueError, match=r"Job\.id must not contain NUL"):
        q.enqueue(Job(id="b\x00"))
    q.enqueue(Job(id="c", idempotency_key="order-1"))  # the handle is not hurt


def test_metrics_count_the_dead_letters_without_reading_them(
    pg_queues: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The dashboard reads metrics() every second: with 20,000 dead letters, fetching
    # every row and its payload to count them took 0.2 s of each read.
    q = pg_queues(Recorder(fail=lambda job, n: True), workers=1, max_retries=0)
    q.enqueue_many([Job(id=f"dead-{i}") for i in range(3)])
    assert q.join(PATIENCE)

    def refused(*args: Any) -> None:
        raise AssertionError("metrics() read the dead letters' rows")

    monkeypatch.setattr(pg_engine, "dead_letters", refused)
    assert q.metrics().dead == 3


def test_a_failing_job_is_retried_then_dead_lettered_and_replayed_from_another_handle(
    pg_queues: Any,
) -> None:
    recorder = Recorder(fail=lambda job, n: n <= 3)
    worker = pg_queues(recorder, workers=2, **FAST)
    producer = pg_queues(workers=0, max_retries=2)  # the budget is fixed where it is enqueued
    producer.enqueue(Job(id="flaky"))
    assert producer.join(PATIENCE)
    assert producer.status("flaky") is Status.FAILED
    assert [job.id for job in producer.dead_letters()] == ["flaky"]
    info = producer.info("flaky")
    assert info is not None and info.attempts == 3 and "Boom" in (info.last_error or "")
    producer.retry_dead("flaky")  # the fourth attempt succeeds
    assert producer.join(PATIENCE)
    assert producer.status("flaky") is Status.COMPLETED
    assert recorder.attempts["flaky"] == 4
    assert worker.metrics().retried == 2
    with pytest.raises(KeyError):
        producer.retry_dead("flaky")


def test_an_attempt_past_job_timeout_fails_and_its_late_end_is_ignored(
    pg_queues: Any, db: Database
) -> None:
    gate = threading.Event()
    worker = pg_queues(lambda job: gate.wait(PATIENCE), workers=1, job_timeout=0.2, max_retries=0)
    worker.enqueue(Job(id="slow"))
    wait_for(lambda: worker.status("slow") is Status.FAILED, "the timeout")
    gate.set()
    assert worker.join(PATIENCE)
    stored = row(db, "slow")
    assert stored is not None and stored.status == "failed"
    assert "timed out" in (stored.last_error or "")
    assert worker.metrics().timed_out == 1


def test_join_waits_only_for_the_jobs_this_handle_accepted(pg_queues: Any) -> None:
    recorder = Recorder(hold=lambda job: job.id == "theirs")
    pg_queues(recorder, workers=2)
    mine, theirs = pg_queues(workers=0), pg_queues(workers=0)
    theirs.enqueue(Job(id="theirs"))
    recorder.wait_started(1)
    mine.enqueue(Job(id="mine"))
    assert mine.join(PATIENCE)
    assert not theirs.join(0.05)
    recorder.release()
    assert theirs.join(PATIENCE)


def test_queues_of_one_database_are_apart(db: Database) -> None:
    recorder = Recorder()
    first = JobQueue(recorder, dsn=db.queue_dsn, queue="first", workers=1)
    second = JobQueue(lambda job: None, dsn=db.queue_dsn, queue="second", workers=0)
    try:
        second.enqueue(Job(id="same", idempotency_key="k"))
        first.enqueue(Job(id="same", idempotency_key="k"))  # ids and keys are per queue
        assert first.join(PATIENCE)
        assert second.status("same") is Status.QUEUED  # nobody serves "second"
        assert first.status("same") is Status.COMPLETED
    finally:
        first.close(timeout=PATIENCE)
        second.close(timeout=0)


def test_a_low_job_is_claimed_within_the_fairness_bound_of_several_processes(
    pg_queues: Any,
) -> None:
    fairness, processes = 2, 2
    producer = pg_queues(workers=0)
    producer.enqueue_many([Job(id=f"high{i}", priority=Priority.HIGH) for i in range(30)])
    producer.enqueue(Job(id="low", priority=Priority.LOW))
    recorder = Recorder()
    for _ in range(processes):
        pg_queues(recorder, workers=1, fairness=fairness)
    assert producer.join(PATIENCE)
    # Each process owes LOW its turn after `fairness` picks of its own from above.
    assert recorder.order.index("low") <= processes * fairness + 1


# --- claims ---------------------------------------------------------------------------


def test_close_gives_back_claimed_jobs_it_did_not_start_without_an_attempt(
    pg_queues: Any, db: Database
) -> None:
    recorder = Recorder(hold=lambda job: True)
    q = pg_queues(recorder, workers=1)
    q.enqueue(Job(id="running"))
    recorder.wait_started(1)
    q.enqueue(Job(id="claimed"))
    # The only worker is busy: claim the job for this process by hand, as the
    # dispatcher would have a moment before the worker freed up.
    with db.connect() as conn:
        (claim,) = pg_engine.claim(conn, "default", q._process, 1)
    q._buffer.append(q._attempt(claim))
    closer = threading.Thread(target=q.close, args=(0,))
    closer.start()
    wait_for(lambda: (r := row(db, "claimed")) is not None and r.status == "queued", "give back")
    stored = row(db, "claimed")
    assert stored is not None and stored.attempts == 0
    recorder.release()
    closer.join(PATIENCE)
    assert recorder.attempts["claimed"] == 0
    assert row(db, "running") is not None and row(db, "running").status == "completed"  # type: ignore[union-attr]


def test_a_process_that_lost_its_claim_cannot_settle_the_job(pg_queues: Any, db: Database) -> None:
    recorder = Recorder(hold=lambda job: job.id == "held")
    q = pg_queues(recorder, workers=1)
    q.enqueue(Job(id="held"))
    recorder.wait_started(1)
    with db.connect(autocommit=False) as conn:
        # Its process looks dead to the database: a rescue takes the job back...
        conn.execute("UPDATE jobq_processes SET heartbeat_at = now() - interval '1 hour'")
        (rescued,) = pg_engine.rescue(conn, "default")
        conn.commit()
    assert rescued.id == "held" and rescued.status == "queued"
    with db.connect() as conn:  # ...and another process claims it
        other = pg_engine.register(conn, "default", 30.0)
        (claim,) = pg_engine.claim(conn, "default", other, 1)
    recorder.release()
    q.enqueue(Job(id="next"))  # one worker: it runs once the held attempt has reported
    recorder.wait_until(lambda r: "next" in r.succeeded, "the next job")
    wait_for(lambda: q.status("next") is Status.COMPLETED, "the next job to settle")
    stored = row(db, "held")
    assert stored is not None and stored.status == "processing"  # the old claim changed nothing
    assert stored.attempts == 2
    with db.connect() as conn:
        assert pg_engine.complete(conn, "default", [("held", claim.token)]) == {"held"}


def test_rate_limit_bounds_starts_across_handles(pg_queues: Any) -> None:
    starts: list[float] = []
    lock = threading.Lock()

    def handler(job: Job) -> None:
        with lock:
            starts.append(time.monotonic())

    rate = 10.0
    producer = pg_queues(workers=0)
    for _ in range(2):
        pg_queues(handler, workers=2, rate_limit=rate)
    producer.enqueue_many([Job(id=f"r{i}") for i in range(25)])
    assert producer.join(PATIENCE)
    starts.sort()
    burst = max(1.0, rate / 10)
    for i, start in enumerate(starts):
        in_window = sum(1 for t in starts[i:] if t < start + 1.0)
        assert in_window <= rate + burst


def test_a_job_that_kills_its_process_is_rescued_with_the_attempt_counted(
    pg_queues: Any, db: Database
) -> None:
    producer = pg_queues(workers=0)
    producer.enqueue(Job(id="orphan"))
    with db.connect() as conn:  # a process that claims the job and dies at once
        dead = pg_engine.register(conn, "default", 0.1)
        pg_engine.claim(conn, "default", dead, 1)
    recorder = Recorder()
    pg_queues(recorder, workers=1, lease=0.3)
    assert producer.join(PATIENCE)
    info = producer.info("orphan")
    assert info is not None and info.status is Status.COMPLETED and info.attempts == 2


def test_a_server_that_drops_every_connection_loses_nothing_acknowledged(
    pg_queues: Any, db: Database
) -> None:
    recorder = Recorder()
    producer = pg_queues(workers=0)
    pg_queues(recorder, workers=2)
    producer.enqueue_many([Job(id=f"before{i}") for i in range(20)])
    with db.connect() as conn:  # what a restart of the server does to the queue's sessions
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (db.schema,),
        )
    accepted = [f"before{i}" for i in range(20)]
    refusals: list[str] = []
    for i in range(20):
        try:
            producer.enqueue(Job(id=f"after{i}"))
        except StoreError as error:  # the call that found the connection gone says so
            refusals.append(str(error))
            continue
        accepted.append(f"after{i}")
    assert len(refusals) <= 1 and all("connection lost" in r for r in refusals)
    assert producer.join(PATIENCE)
    assert set(accepted) <= set(recorder.attempts)


def test_final_without_a_dsn_imports_no_driver() -> None:
    code = "import sys, final; sys.exit(any('psycopg' in m for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- bad input ---------------------------------------------------------------------


def test_a_dsn_with_a_path_is_refused(db: Database, tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="dsn or a path"):
        JobQueue(lambda job: None, dsn=db.queue_dsn, path=tmp_path / "q.db")


def test_no_workers_without_a_dsn_is_refused() -> None:
    with pytest.raises(ValueError, match="workers"):
        JobQueue(lambda job: None, workers=0)


def test_a_malformed_dsn_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="dsn"):
        JobQueue(lambda job: None, dsn="not a dsn", workers=0)


def test_a_server_that_does_not_answer_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="does not answer"):
        JobQueue(lambda job: None, dsn="postgresql://postgres@127.0.0.1:1/test", workers=0)


def test_tables_of_version_1_are_upgraded_in_place(pg_queues: Any, db: Database) -> None:
    pg_queues(workers=0)
    with db.connect() as conn:  # version 1's tables: version 2's, less run_at
        conn.execute("ALTER TABLE jobq_jobs DROP COLUMN run_at")
        conn.execute("UPDATE jobq_version SET version = 1")
        conn.execute(
            "INSERT INTO jobq_jobs (queue, id, payload, priority, max_retries, status, ready_at)"
            " VALUES ('default', 'old', '', 1, 0, 'scheduled', now() + interval '1 day'),"
            " ('default', 'due', '', 1, 0, 'queued', now())"
        )
    recorder = Recorder()
    q = pg_queues(recorder, workers=1)
    recorder.wait_until(lambda r: "due" in r.attempts, "the job of version 1 to run")
    old = q.info("old")
    assert old is not None and old.status is Status.SCHEDULED and old.run_at is not None
    q.enqueue(Job(id="new"))
    assert q.join(PATIENCE)
    assert sorted(recorder.attempts) == ["due", "new"]
    with db.connect() as conn:
        assert conn.execute("SELECT version FROM jobq_version").fetchall() == [(2,)]


def test_tables_of_another_version_are_refused_with_what_to_do(
    pg_queues: Any, db: Database
) -> None:
    pg_queues(workers=0)
    with db.connect() as conn:
        conn.execute("UPDATE jobq_version SET version = 99")
    with pytest.raises(SchemaMismatch, match="99"):
        JobQueue(lambda job: None, dsn=db.queue_dsn, workers=0)


def test_a_failed_handler_names_its_error_in_the_row(pg_queues: Any, db: Database) -> None:
    def handler(job: Job) -> None:
        raise Boom("no luck")

    q = pg_queues(handler, workers=1, max_retries=0)
    q.enqueue(Job(id="x"))
    assert q.join(PATIENCE)
    stored = row(db, "x")
    assert stored is not None and stored.last_error == "Boom: no luck"


# --- the command line ----------------------------------------------------------------


def start_worker(dsn: str, *options: str) -> subprocess.Popen[str]:
    """``python -m final worker`` on ``dsn``, once it has said it is ready."""
    command = [sys.executable, "-m", "final", "worker", "--dsn", dsn, *options]
    worker = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert worker.stderr is not None
    for line in worker.stderr:  # the log; "worker ready" once signals stop it cleanly
        if "worker ready" in line:
            return worker
    worker.kill()
    worker.communicate()
    raise AssertionError(f"the worker exited with {worker.returncode} before it was ready")


def test_a_worker_process_runs_the_jobs_and_stops_on_sigterm_after_its_attempts(
    pg_queues: Any, tmp_path: Any, db: Database
) -> None:
    producer = pg_queues(workers=0)
    handler = "tests.http_handlers:handle"
    worker = start_worker(db.queue_dsn, "--handler", handler, "--workers", "2")
    try:
        producer.enqueue_many([Job(id=f"w{i}") for i in range(10)])
        assert producer.join(PATIENCE)
        released = tmp_path / "release"
        producer.enqueue(Job(id="held", payload=f"hold:{released}".encode()))
        wait_for(lambda: producer.status("held") is Status.PROCESSING, "the held job to start")
        worker.send_signal(signal.SIGTERM)
        released.touch()  # the attempt in flight finishes after the signal
        _, log = worker.communicate(timeout=PATIENCE)  # reads the log to its end, closes it
        assert worker.returncode == 0, log
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert all(producer.status(f"w{i}") is Status.COMPLETED for i in range(10))
    assert producer.status("held") is Status.COMPLETED
    info = producer.info("held")
    assert info is not None and info.attempts == 1


def test_a_worker_without_a_dsn_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from final.__main__ import main

    assert main(["worker", "--handler", "tests.http_handlers:handle"]) == 2
    assert "--dsn" in capsys.readouterr().err


def test_inspect_reads_a_queue_in_postgresql(
    pg_queues: Any, db: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    from final.__main__ import main

    def handler(job: Job) -> None:
        raise Boom("broken")

    q = pg_queues(handler, workers=1, max_retries=0)
    q.enqueue_many([Job(id="dead"), Job(id="waiting", priority=Priority.LOW)])
    wait_for(lambda: q.status("dead") is Status.FAILED, "the dead letter")
    assert main(["inspect", "--dsn", db.queue_dsn]) == 0
    out = capsys.readouterr().out
    assert "dead  medium 1 attempts" in out


def test_completed_jobs_are_pruned_after_retention_and_dead_letters_stay(
    pg_queues: Any, db: Database
) -> None:
    def handler(job: Job) -> None:
        if job.payload == b"fail":
            raise Boom("for good")

    q = pg_queues(handler, workers=2, max_retries=0, retention=0.05, lease=0.3)
    q.enqueue_many([Job(id=f"done-{n}") for n in range(20)] + [Job(id="dead", payload=b"fail")])
    assert q.join(timeout=PATIENCE)
    # The upkeep prunes at each rescue round (every lease / 2): the rows go, the dead stays.
    wait_for(lambda: all(row(db, f"done-{n}") is None for n in range(20)), "the prune")
    dead = row(db, "dead")
    assert dead is not None and dead.status == "failed"
    assert [job.id for job in q.dead_letters()] == ["dead"]


def test_a_bad_retention_is_refused_naming_it(db: Database) -> None:
    with pytest.raises(ValueError, match="retention"):
        JobQueue(lambda job: None, dsn=db.queue_dsn, workers=0, retention=-1.0)


def test_with_autovacuum_off_the_queue_vacuums_its_own_table(pg_queues: Any, db: Database) -> None:
    # This test's own table is opted out of autovacuum (the server's setting stays as
    # it is): the dead rows of 3,000 jobs pass the table's trigger, and the upkeep of
    # the queue's process vacuums it.
    q = pg_queues(workers=2, lease=0.6)
    with db.connect() as conn:
        conn.execute("ALTER TABLE jobq_jobs SET (autovacuum_enabled = off)")
        assert pg_engine.vacuum_due(conn) is False
    q.enqueue_many([Job(id=str(n)) for n in range(3000)])
    assert q.join(timeout=PATIENCE)

    def vacuums() -> int:
        with db.connect() as conn:
            found = conn.execute(
                "SELECT vacuum_count FROM pg_stat_user_tables WHERE relid = 'jobq_jobs'::regclass"
            ).fetchone()
        return 0 if found is None else int(found[0])

    # The server's statistics reach the upkeep up to ten seconds after the rows die.
    deadline = time.monotonic() + 3 * PATIENCE
    while vacuums() == 0:
        assert time.monotonic() < deadline, "the queue never vacuumed its table"
        time.sleep(0.05)
