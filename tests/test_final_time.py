"""Jobs in time on disk and in memory, beyond the contract: restarts, clock steps, old files."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from final import Job, JobQueue, Priority, QueueClosed, QueueFull, Status, StoreError
from final.inspection import format_snapshot
from final.inspection import read as read_snapshot
from final.jobs import Record
from final.sqlite_store import SCHEMA_VERSION, SQLiteStore
from tests.contract.test_time import race_cancel_against_a_worker
from tests.support import PATIENCE, Recorder, Starts, Tier

pytestmark = pytest.mark.tiers("final")

ROOT = Path(__file__).resolve().parents[1]
LATER = timedelta(hours=1)


def in_(delta: timedelta, now: float | None = None) -> datetime:
    return datetime.fromtimestamp(time.time() if now is None else now, UTC) + delta


# -- restarts ----------------------------------------------------------------------------------


def test_a_scheduled_job_keeps_its_time_across_a_restart_and_a_cancel_is_kept_too(
    path: str, opened: list[JobQueue]
) -> None:
    run_at = in_(LATER)
    q = JobQueue(Recorder(), path=path)
    q.enqueue(Job(id="later", run_at=run_at, priority=Priority.LOW))
    q.enqueue(Job(id="off", run_at=run_at))
    q.close()  # returns at once: close() waits for no run_at, and leaves them on disk
    assert q.metrics().lost == 0
    q = JobQueue(Recorder(), path=path)
    opened.append(q)
    info = q.info("later")
    assert info is not None
    assert info.status is Status.SCHEDULED
    assert info.run_at == pytest.approx(run_at.timestamp(), abs=1e-6)
    assert q.metrics().by_priority[Priority.LOW].scheduled == 1
    assert q.cancel("off")
    q.close()
    q = JobQueue(Recorder(), path=path)
    opened.append(q)
    assert q.status("off") is Status.CANCELLED
    assert q.metrics().scheduled == 1


def test_a_cancel_is_on_disk_once_it_returns(path: str) -> None:
    child = textwrap.dedent(
        f"""
        import os
        from datetime import UTC, datetime, timedelta
        from final import Job, JobQueue
        q = JobQueue(lambda job: None, workers=1, path={path!r})
        soon = datetime.now(UTC) + timedelta(seconds=0.2)
        for i in range(50):
            q.enqueue(Job(id=str(i), run_at=soon))
            assert q.cancel(str(i))
        os._exit(0)  # no close, no flush: only what cancel made durable remains
        """
    )
    subprocess.run([sys.executable, "-c", child], cwd=ROOT, timeout=60, check=True)
    recorder = Recorder()
    q = JobQueue(recorder, path=path)
    try:
        assert q.join(timeout=PATIENCE)
        assert recorder.order == []
        assert all(q.status(str(i)) is Status.CANCELLED for i in range(50))
    finally:
        q.close()


def test_cancel_and_a_worker_on_disk_exactly_one_wins(path: str) -> None:
    tier = Tier("final")
    try:
        runs, cancels = race_cancel_against_a_worker(tier, rounds=200, path=path)
    finally:
        tier.cleanup()
    assert runs + cancels == 200
    q = JobQueue(Recorder(), path=path)  # and the disk says the same
    try:
        snapshot = read_snapshot(path)
        assert sum(snapshot.counts["cancelled"].values()) == cancels
        assert sum(snapshot.counts["completed"].values()) == 200 + runs
    finally:
        q.close()


# -- the wall clock steps between two runs ------------------------------------------------------


def test_a_clock_stepped_forward_between_runs_starts_an_overdue_job_at_once(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = 3600.0
    run_at = in_(timedelta(seconds=1))
    q = JobQueue(Recorder(), path=path)
    q.enqueue(Job(id="soon", run_at=run_at))
    q.close()
    true_time = time.time
    monkeypatch.setattr(time, "time", lambda: true_time() + step)  # NTP, a resumed VM
    starts = Starts()
    q = JobQueue(starts, path=path)
    try:
        assert q.join(PATIENCE)  # not an hour later: by this clock it is overdue
        # Never before its run_at by the clock of the moment; by the true time, early
        # by the step at most (here, by less: it was due a second after its enqueue).
        assert starts.of("soon") >= run_at.timestamp()
    finally:
        q.close()


def test_a_clock_stepped_back_between_runs_never_starts_a_job_before_its_run_at(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = 1.0
    true_time = time.time
    with monkeypatch.context() as ahead:
        ahead.setattr(time, "time", lambda: true_time() + step)  # the clock is ahead
        run_at = in_(timedelta(seconds=0.3))  # by that clock
        q = JobQueue(Recorder(), path=path)
        q.enqueue(Job(id="soon", run_at=run_at))
        q.close()
    # The clock is put right. The job was due 0.3 s after its enqueue by the old clock,
    # and is due at its run_at by this one: the step later, not before.
    starts = Starts()
    q = JobQueue(starts, path=path)
    try:
        info = q.info("soon")
        assert info is not None and info.run_at == pytest.approx(run_at.timestamp(), abs=1e-6)
        # Still waiting, unless a stalled machine let its run_at pass (by the true clock).
        assert info.status is Status.SCHEDULED or time.time() >= run_at.timestamp()
        assert q.join(PATIENCE)
        assert starts.of("soon") >= run_at.timestamp()
    finally:
        q.close()


# -- a file of the previous version ---------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
def test_a_file_of_an_earlier_version_is_upgraded_in_place_and_then_schedules(
    path: str, version: int
) -> None:
    store = SQLiteStore(path)
    old = Record(Job(id="old"), 3)
    old.enqueued = time.monotonic()
    store.add([old])
    store.close()
    dropped = ["run_at"] if version == 2 else ["run_at", "delay"]
    db = sqlite3.connect(path)
    for column in dropped:
        db.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
    db.execute(f"PRAGMA user_version = {version}")
    db.commit()
    db.close()
    assert read_snapshot(path).counts["queued"]["medium"] == 1  # inspect reads it as it is
    recorder = Recorder()
    q = JobQueue(recorder, path=path)
    try:
        assert q.join(PATIENCE)
        assert recorder.succeeded == ["old"]
        q.enqueue(Job(id="new", run_at=in_(LATER)))
    finally:
        q.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        columns = [row[1] for row in db.execute("PRAGMA table_info(jobs)")]
        assert columns[-2:] == ["delay", "run_at"]
    finally:
        db.close()
    q = JobQueue(Recorder(), path=path)
    try:
        assert q.status("new") is Status.SCHEDULED
    finally:
        q.close()


# -- what a scheduled job holds, and how it is shown ----------------------------------------------


def test_a_full_lane_still_takes_scheduled_jobs_and_they_enter_it_when_due(
    opened: list[JobQueue],
) -> None:
    recorder = Recorder(hold=lambda job: job.id == "gate")
    q = JobQueue(recorder, workers=1, queue_size=2)
    opened.append(q)
    q.enqueue(Job(id="gate"))
    recorder.wait_started(1)
    q.enqueue_many([Job(id="a"), Job(id="b")])
    with pytest.raises(QueueFull):
        q.enqueue(Job(id="c"), timeout=0)
    soon = in_(timedelta(seconds=0.1))
    q.enqueue_many([Job(id=f"s{i}", run_at=soon) for i in range(3)], timeout=0)
    recorder.release()
    assert q.join(PATIENCE)
    assert sorted(recorder.succeeded) == ["a", "b", "gate", "s0", "s1", "s2"]


def test_close_waits_for_no_run_at_in_memory_it_counts_them_lost(opened: list[JobQueue]) -> None:
    recorder = Recorder()
    q = JobQueue(recorder)
    opened.append(q)
    q.enqueue(Job(id="later", run_at=in_(LATER)))
    q.enqueue(Job(id="now"))
    q.close()  # at once, not in an hour
    m = q.metrics()
    assert (m.completed, m.lost, m.scheduled) == (1, 1, 0)
    assert m.submitted == m.completed + m.failed + m.lost + m.cancelled


def test_cancel_after_close_of_a_job_left_for_later_says_the_queue_is_closed(
    path: str,
) -> None:
    # A cancel racing close() lands here once close() has let go of the job; "no job
    # with that id was accepted" would be false: it was, and it waits on disk.
    for q in (JobQueue(lambda job: None), JobQueue(lambda job: None, path=path)):
        q.enqueue(Job(id="later", run_at=in_(LATER)))
        q.close()
        with pytest.raises(QueueClosed, match="cancel the job after the next start"):
            q.cancel("later")
    again = JobQueue(lambda job: None, path=path)
    try:
        assert again.cancel("later") is True
    finally:
        again.close()


def test_a_run_at_centuries_ahead_leaves_the_scheduler_running(opened: list[JobQueue]) -> None:
    # Past threading.TIMEOUT_MAX from now, a wait until it would raise OverflowError.
    starts = Starts()
    q = JobQueue(starts)
    opened.append(q)
    q.enqueue(Job(id="far", run_at=datetime(2400, 1, 1, tzinfo=UTC)))
    q.enqueue(Job(id="soon", run_at=in_(timedelta(milliseconds=10))))
    starts.of("soon")  # the scheduler let it in
    assert q.status("far") is Status.SCHEDULED


def test_a_run_at_past_year_9000_is_refused_naming_it(path: str) -> None:
    # Year 9999 on disk cannot be read back as a datetime: the file would not reopen.
    q = JobQueue(Recorder(), path=path)
    try:
        for run_at in (datetime.max.replace(tzinfo=UTC), datetime(9001, 1, 1, tzinfo=UTC)):
            with pytest.raises(ValueError, match=f"year 9000 or before, got {run_at.year}"):
                q.enqueue(Job(id="far", run_at=run_at))
        q.enqueue(Job(id="ok", run_at=datetime(9000, 12, 31, tzinfo=UTC)))
    finally:
        q.close()
    q = JobQueue(Recorder(), path=path)
    try:
        assert q.status("ok") is Status.SCHEDULED
    finally:
        q.close()


class HeldAdd(SQLiteStore):
    """A store whose write of the job ``later`` waits for ``go``: a slow disk."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.writing, self.go = threading.Event(), threading.Event()

    def add(self, records: Sequence[Record]) -> None:
        if any(r.job.id == "later" for r in records):
            self.writing.set()
            assert self.go.wait(PATIENCE)
        super().add(records)


def test_close_waits_for_no_run_at_of_a_job_still_being_written(path: str) -> None:
    # The job passes the check for a closing queue, and is written while close()
    # leaves the scheduled jobs: it reaches the heap after that, and must be left too.
    store = HeldAdd(path)
    q = JobQueue(Recorder(), store=store)
    enqueuer = threading.Thread(target=q.enqueue, args=(Job(id="later", run_at=in_(LATER)),))
    enqueuer.start()
    assert store.writing.wait(PATIENCE)
    closer = threading.Thread(target=q.close, daemon=True)
    closer.start()
    deadline = time.monotonic() + PATIENCE
    while True:  # until close() has begun: then an enqueue is refused
        assert time.monotonic() < deadline
        try:
            q.enqueue(Job(id=f"probe-{time.monotonic_ns()}"))
        except QueueClosed:
            break
        time.sleep(0.001)
    store.go.set()
    enqueuer.join(PATIENCE)
    closer.join(PATIENCE)
    assert not closer.is_alive()  # not an hour from now
    q = JobQueue(Recorder(), path=path)
    try:
        assert q.status("later") is Status.SCHEDULED  # accepted, and left on disk
    finally:
        q.close()


def test_inspect_shows_scheduled_and_cancelled_jobs(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = JobQueue(Recorder(), path=path)
    try:
        q.enqueue_many([Job(id=f"later-{i}", run_at=in_(LATER)) for i in range(3)])
        q.enqueue(Job(id="much-later", run_at=in_(3 * LATER)))
        assert q.cancel("later-0")
        snapshot = read_snapshot(path)
    finally:
        q.close()
    assert snapshot.counts["scheduled"]["medium"] == 3
    assert snapshot.counts["cancelled"]["medium"] == 1
    table = format_snapshot(snapshot, now=time.time())
    assert "scheduled" in table and "cancelled" in table
    # Two hours on, the file still says scheduled (nothing is written when a job falls
    # due), and inspect counts the two that are due as queued.
    true_time = time.time
    monkeypatch.setattr(time, "time", lambda: true_time() + 2 * LATER.total_seconds())
    later = read_snapshot(path)
    assert (later.counts["scheduled"]["medium"], later.counts["queued"]["medium"]) == (1, 2)


def test_a_scheduled_job_costs_no_more_than_a_few_hundred_bytes(opened: list[JobQueue]) -> None:
    # The bound on waiting jobs is memory: measured here so that the README's figure
    # stays true (benchmarks/ measures it at scale).
    import tracemalloc

    q = JobQueue(Recorder())
    opened.append(q)
    jobs = [Job(run_at=in_(LATER)) for _ in range(2000)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    q.enqueue_many(jobs)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert q.metrics().scheduled == 2000
    assert (after - before) / 2000 < 600


class RefusesCancels(SQLiteStore):
    """A store whose disk refuses the write of a cancel, as a full disk would."""

    def cancelled(self, record: Record) -> None:
        raise StoreError(f"{self.path}: database or disk is full")


def test_a_cancel_the_disk_refuses_leaves_the_job_where_it_was(path: str) -> None:
    recorder = Recorder(hold=lambda job: job.id == "gate")
    q = JobQueue(recorder, workers=1, store=RefusesCancels(path))
    try:
        q.enqueue(Job(id="gate"))
        recorder.wait_started(1)
        q.enqueue(Job(id="queued"))
        q.enqueue(Job(id="later", run_at=in_(LATER)))
        for job_id in ("queued", "later"):
            with pytest.raises(StoreError, match="disk is full"):
                q.cancel(job_id)
        assert q.status("queued") is Status.QUEUED
        assert q.status("later") is Status.SCHEDULED
        assert q.metrics().scheduled == 1
        recorder.release()
        recorder.wait_until(lambda r: len(r.succeeded) >= 2, "gate and queued")
        assert sorted(recorder.succeeded) == ["gate", "queued"]
        assert q.metrics().cancelled == 0
    finally:
        q.close()  # leaves "later" on disk
    q = JobQueue(Recorder(), path=path)
    try:
        assert q.status("later") is Status.SCHEDULED  # not cancelled on disk either
    finally:
        q.close()


def test_a_job_cancelled_during_its_backoff_stays_cancelled_after_a_restart(path: str) -> None:
    # The end of its failed attempt is a write that may lag; the cancel takes it along
    # in its own commit, so that it cannot land after the cancel and undo it.
    recorder = Recorder(fail=lambda job, n: True)
    q = JobQueue(recorder, path=path, backoff=60.0, max_backoff=60.0)
    try:
        q.enqueue(Job(id="failing"))
        recorder.wait_started(1)
        deadline = time.monotonic() + PATIENCE
        while q.status("failing") is not Status.RETRYING:  # settled after the handler raised
            assert time.monotonic() < deadline
            time.sleep(0.001)
        assert q.cancel("failing")
    finally:
        q.close()
    q = JobQueue(recorder, path=path)
    try:
        assert q.join(PATIENCE)
        info = q.info("failing")
        assert info is not None
        assert (info.status, info.attempts) == (Status.CANCELLED, 1)
        assert recorder.attempts["failing"] == 1
    finally:
        q.close()
