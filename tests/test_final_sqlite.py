"""The final tier on disk: restarts, recovery, a file that is ours, and kill -9."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import final.journal
from benchmarks.crash import kill_repeatedly
from final import DuplicateJob, Job, JobQueue, Priority, Status
from final.inspection import read as read_snapshot
from final.jobs import Record
from final.sqlite_store import SQLiteStore
from final.store import MemoryStore, StoreError
from final.validation import MAX_KEY_LENGTH
from tests.support import PATIENCE, Recorder

pytestmark = pytest.mark.tiers("final")

ROOT = Path(__file__).resolve().parents[1]
FAST = {"backoff": 0.001, "max_backoff": 0.01}


def held(path: str, opened: list[JobQueue], **options: Any) -> tuple[JobQueue, Recorder]:
    """A queue on ``path`` whose one worker is held on a gate job."""
    recorder = Recorder(hold=lambda job: job.id == "gate")
    q = JobQueue(recorder, workers=1, path=path, **options)
    opened.append(q)
    q.enqueue(Job(id="gate", priority=Priority.HIGH))
    recorder.wait_started(1)
    return q, recorder


def reopen(path: str, opened: list[JobQueue], handler: Any = None, **options: Any) -> JobQueue:
    q = JobQueue(handler or Recorder(), path=path, **options)
    opened.append(q)
    return q


# -- restarts --------------------------------------------------------------------------------


def test_close_with_a_timeout_leaves_unrun_jobs_on_disk_for_the_next_start(
    path: str, opened: list[JobQueue]
) -> None:
    q, recorder = held(path, opened)
    q.enqueue_many(Job(id=f"later-{i}") for i in range(5))
    q.close(timeout=0.05)
    assert q.metrics().lost == 0  # kept on disk, not lost
    with pytest.raises(StoreError, match="already open"):
        JobQueue(Recorder(), path=path)  # the gate job still runs: the file stays locked
    recorder.release()
    q.close()  # a second close waits for the running attempt and the store
    after = Recorder()
    q2 = reopen(path, opened, after)
    assert q2.join(timeout=PATIENCE)
    assert sorted(after.attempts) == [f"later-{i}" for i in range(5)]


def test_a_restart_keeps_dead_letters_keys_and_retry_counts(
    path: str, opened: list[JobQueue]
) -> None:
    q = reopen(path, opened, Recorder(fail=lambda job, n: True), max_retries=1, **FAST)
    q.enqueue(Job(id="dead", idempotency_key="order-1"))
    assert q.join(timeout=PATIENCE)
    q.close()
    q2 = reopen(path, opened, Recorder())
    assert [job.id for job in q2.dead_letters()] == ["dead"]
    info = q2.info("dead")
    assert info is not None
    assert (info.status, info.attempts) == (Status.FAILED, 2)
    with pytest.raises(DuplicateJob) as dup:
        q2.enqueue(Job(idempotency_key="order-1"))
    assert dup.value.job_id == "dead"
    # Remembered by the disk alone, refused in the words memory would use.
    assert str(dup.value) == "idempotency key 'order-1' was used by job dead"
    with pytest.raises(DuplicateJob, match=r"^a job with id 'dead' was accepted before$"):
        q2.enqueue(Job(id="dead"))
    q2.retry_dead("dead")
    assert q2.join(timeout=PATIENCE)
    assert q2.status("dead") is Status.COMPLETED


def test_a_job_waiting_out_its_backoff_keeps_its_attempts_across_a_restart(
    path: str, opened: list[JobQueue]
) -> None:
    first = Recorder(fail=lambda job, n: True)
    q = reopen(path, opened, first, max_retries=3, backoff=60.0, max_backoff=60.0)
    q.enqueue(Job(id="patient"))
    first.wait_started(1)
    deadline = time.monotonic() + PATIENCE
    while q.status("patient") is not Status.RETRYING:  # it now waits a minute
        assert time.monotonic() < deadline
        time.sleep(0.001)
    q.close(timeout=0)  # leaves it on disk, waiting out its backoff
    q.close()  # and returns once every thread and the store are done
    after = Recorder(fail=lambda job, n: True)
    q2 = reopen(path, opened, after, backoff=0.001, max_backoff=0.001)
    info = q2.info("patient")
    assert info is not None
    assert info.attempts == 1
    assert info.status is Status.RETRYING
    q2.close(timeout=0)


def test_status_of_a_settled_job_is_answered_from_disk_after_a_restart(
    path: str, opened: list[JobQueue]
) -> None:
    q = reopen(path, opened)
    q.enqueue(Job(id="done"))
    assert q.join(timeout=PATIENCE)
    q.close()
    q2 = reopen(path, opened)
    assert q2.status("done") is Status.COMPLETED
    assert q2.status("never") is None


def test_a_key_memory_has_let_go_of_is_still_refused_from_disk(
    path: str, opened: list[JobQueue]
) -> None:
    q = reopen(path, opened, history=1)
    q.enqueue(Job(id="first", idempotency_key="k"))
    q.enqueue_many(Job() for _ in range(5))
    assert q.join(timeout=PATIENCE)
    with pytest.raises(DuplicateJob) as dup:
        q.enqueue_many([Job(id="ok"), Job(idempotency_key="k"), Job(id="never")])
    assert (dup.value.job_id, dup.value.accepted) == ("first", 1)
    assert q.join(timeout=PATIENCE)
    assert q.status("ok") is Status.COMPLETED
    assert q.status("never") is None


def test_a_handler_that_kills_the_process_ends_in_the_dead_letters(path: str) -> None:
    child = textwrap.dedent(
        f"""
        import os, sys
        from final import Job, JobQueue, DuplicateJob
        q = JobQueue(lambda job: os._exit(1), workers=1, path={path!r}, max_retries=2)
        try:
            q.enqueue(Job(id="bomb"))
        except DuplicateJob:
            pass
        q.join(timeout=5)
        print("survived", flush=True)
        q.close()
        """
    )
    outcomes = []
    for _ in range(6):
        run = subprocess.run(
            [sys.executable, "-c", child], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        outcomes.append(run.returncode)
        if run.returncode == 0:
            break
    # Three claims (max_retries + 1), each killing the process; the fourth start
    # finds the budget spent and settles the job as failed instead of running it.
    assert outcomes == [1, 1, 1, 0]
    q = JobQueue(Recorder(), path=path)
    try:
        info = q.info("bomb")
        assert info is not None
        assert (info.status, info.attempts) == (Status.FAILED, 3)
        assert info.last_error == "the process died during attempt 3"
    finally:
        q.close()


def test_an_acknowledged_enqueue_survives_the_process_dying_the_instant_after(
    path: str,
) -> None:
    child = textwrap.dedent(
        f"""
        import os, threading
        from final import Job, JobQueue
        q = JobQueue(lambda job: threading.Event().wait(), workers=1, path={path!r})
        for i in range(200):
            q.enqueue(Job(id=str(i)))
        os._exit(0)  # no close, no flush: only what enqueue made durable remains
        """
    )
    subprocess.run([sys.executable, "-c", child], cwd=ROOT, timeout=60, check=True)
    q = JobQueue(Recorder(), path=path)
    try:
        assert q.join(timeout=PATIENCE)
        assert all(q.status(str(i)) is Status.COMPLETED for i in range(200))
    finally:
        q.close()


ODD_IDS = ["line\nbreak", 'quo"te', "it's", "ünïcødé ✓", " spaced ", "x" * MAX_KEY_LENGTH, "7"]


def test_attempts_of_jobs_with_odd_ids_are_counted_across_crashes(path: str) -> None:
    # Each start claims one job, whose handler kills the process: its attempt must be
    # found in the journal at the next start, whatever its id holds.
    child = textwrap.dedent(
        f"""
        import os
        from final import DuplicateJob, Job, JobQueue
        q = JobQueue(lambda job: os._exit(1), workers=1, path={path!r}, max_retries=0)
        for job_id in {ODD_IDS!r}:
            try:
                q.enqueue(Job(id=job_id))
            except DuplicateJob:
                pass
        q.join(timeout=5)
        print("survived", flush=True)
        q.close()
        """
    )
    for _ in range(len(ODD_IDS) + 2):
        run = subprocess.run(
            [sys.executable, "-c", child], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        if run.returncode == 0:
            break
    assert run.returncode == 0 and "survived" in run.stdout
    q = JobQueue(Recorder(), path=path)
    try:
        for job_id in ODD_IDS:
            info = q.info(job_id)
            assert info is not None
            assert (info.status, info.attempts) == (Status.FAILED, 1), job_id
            assert info.last_error == "the process died during attempt 1"
    finally:
        q.close()


def test_a_full_attempts_journal_starts_again_and_keeps_what_is_open(path: str) -> None:
    # A journal of 256 bytes starts again every few attempts; the bomb is claimed
    # after 150 jobs, so its attempt is written to a journal many times restarted.
    child = textwrap.dedent(
        f"""
        import os
        import final.journal
        final.journal.JOURNAL_BYTES = 256
        from final import DuplicateJob, Job, JobQueue
        def handler(job):
            if job.id == "bomb":
                os._exit(1)
        q = JobQueue(handler, workers=1, path={path!r})
        try:
            # The others keep a budget: one whose end still lagged at the crash is
            # charged the attempt, and runs again.
            q.enqueue_many([Job(id=str(i)) for i in range(150)] + [Job(id="bomb", max_retries=0)])
        except DuplicateJob:
            pass
        q.join(timeout=20)
        print("survived", flush=True)
        q.close()
        """
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", child], cwd=ROOT, capture_output=True, text=True, timeout=60
        ).returncode
        for _ in range(2)
    ]
    assert runs == [1, 0]  # the bomb went off once, and was dead at the second start
    q = JobQueue(Recorder(), path=path)
    try:
        info = q.info("bomb")
        assert info is not None and (info.status, info.attempts) == (Status.FAILED, 1)
        assert all(q.status(str(i)) is Status.COMPLETED for i in range(150))
    finally:
        q.close()


def test_a_journal_started_again_keeps_which_attempts_ended_and_how(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An attempt whose end is not committed yet survives a restart of the full file as
    # running, or as ended the way it ended, and one still running can end afterwards.
    monkeypatch.setattr(final.journal, "JOURNAL_BYTES", 256)
    journal = final.journal.AttemptsJournal(str(tmp_path / "attempts"))
    try:
        journal.started("ran", 1)
        journal.finished("ran", Status.COMPLETED)
        journal.started("failed", 2)
        journal.finished("failed", Status.FAILED)
        journal.started("odd\nid", 2)
        journal.started("runs", 3)
        for i in range(40):  # fills the file several times: it starts again each time
            journal.started(f"filler-{i}", 1)
            journal.finished(f"filler-{i}", Status.COMPLETED)
            journal.ended([(f"filler-{i}", 1)])
        journal.finished("odd\nid", Status.RETRYING)
        latest = final.journal.read_attempts(journal.path)
        kept = {job_id: latest[job_id] for job_id in ("ran", "failed", "odd\nid", "runs")}
        assert kept == {
            "ran": (1, Status.COMPLETED),
            "failed": (2, Status.FAILED),
            "odd\nid": (2, Status.RETRYING),
            "runs": (3, None),
        }
        assert final.journal.read_journal(journal.path) == {"runs": 3}
    finally:
        journal.close()


def test_an_id_that_is_not_valid_unicode_is_refused_before_the_disk(
    path: str, opened: list[JobQueue]
) -> None:
    q = reopen(path, opened)
    with pytest.raises(ValueError, match="lone surrogate"):
        q.enqueue(Job(id="bad\udc80"))
    q.enqueue(Job(id="good"))  # the store is not hurt
    assert q.join(timeout=PATIENCE)


def test_inspect_sees_a_running_attempt_while_the_queue_holds_the_file(
    path: str, opened: list[JobQueue]
) -> None:
    q, recorder = held(path, opened)  # the gate job is running, held
    q.enqueue_many([Job(id="a"), Job(id="b")])
    snapshot = read_snapshot(path)  # read-only, without the lock the queue holds
    assert snapshot.counts["processing"]["high"] == 1
    assert snapshot.counts["queued"]["medium"] == 2
    recorder.release()
    assert q.join(timeout=PATIENCE)


# -- the file is ours ------------------------------------------------------------------------


def test_a_file_that_is_not_a_database_is_refused_and_left_alone(path: str) -> None:
    Path(path).write_bytes(b"not a database at all" * 100)
    before = Path(path).read_bytes()
    with pytest.raises(StoreError, match="not"):
        JobQueue(Recorder(), path=path)
    assert Path(path).read_bytes() == before


def test_another_programs_database_is_refused_and_left_alone(path: str) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY)")
    db.commit()
    db.close()
    before = Path(path).read_bytes()
    with pytest.raises(StoreError, match="not a job queue of ours"):
        JobQueue(Recorder(), path=path)
    assert Path(path).read_bytes() == before


def test_a_queue_file_of_a_newer_version_is_refused(path: str) -> None:
    JobQueue(Recorder(), path=path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StoreError, match="newer"):
        JobQueue(Recorder(), path=path)


def test_a_second_queue_on_the_same_path_is_refused(path: str, opened: list[JobQueue]) -> None:
    reopen(path, opened)
    with pytest.raises(StoreError, match="already open"):
        JobQueue(Recorder(), path=path)


@pytest.mark.parametrize(("durability", "synchronous"), [("power", 2), ("process", 1)])
def test_durability_sets_and_checks_the_synchronous_pragma(
    path: str, opened: list[JobQueue], durability: str, synchronous: int
) -> None:
    store = SQLiteStore(path, durability)
    opened.append(JobQueue(Recorder(), store=store))
    # The pragma is per connection: the store asks the writer's.
    assert store.pragma("synchronous") == synchronous
    assert store.pragma("journal_mode") == "wal"


def test_an_unknown_durability_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="durability"):
        JobQueue(Recorder(), durability="maybe")


# -- kill -9 at random moments ---------------------------------------------------------------


def test_no_acknowledged_job_is_lost_across_repeated_kill_9(tmp_path: Path) -> None:
    # 20 kills here; `make crash-test` runs 1,000 (see benchmarks/crash.py).
    tally = kill_repeatedly(tmp_path, kills=20, seed=20261123)
    assert tally.kills == 20
    assert tally.acknowledged > 0
    assert tally.integrity_failures == 0  # checked after every restart
    assert tally.lost == 0  # every acknowledged job completed
    assert tally.unknown == 0  # nothing ran that was never enqueued
    assert tally.runs >= tally.expected_runs
    assert tally.duplicates <= tally.duplicate_bound


def test_a_path_in_a_missing_directory_is_a_store_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "jobs.db"
    with pytest.raises(StoreError, match=r"missing/jobs.db: cannot create the queue there"):
        JobQueue(Recorder(), path=path)


class WatchedReplays(SQLiteStore):
    """A store that asks ``watch`` before it writes each replay."""

    watch: Callable[[], None] = staticmethod(lambda: None)

    def revived(self, record: Record) -> None:
        self.watch()
        super().revived(record)


def test_a_replay_is_on_disk_before_any_worker_can_take_it(
    path: str, opened: list[JobQueue]
) -> None:
    # If a worker could take the replayed job first, its end could land on disk before
    # the replay, which would then undo it: the job would run again at the next start.
    recorder = Recorder(fail=lambda job, n: n == 1)  # dies at its first attempt only
    store = WatchedReplays(path)
    q = JobQueue(recorder, max_retries=0, store=store)
    opened.append(q)
    q.enqueue(Job(id="once-dead"))
    assert q.join(timeout=PATIENCE) and q.status("once-dead") is Status.FAILED
    seen: list[object] = []

    def watch() -> None:
        # A replayed job turns QUEUED as it enters its lane: still FAILED, it is in none.
        seen.append(q.status("once-dead") is not Status.FAILED)
        seen.append(recorder.attempts["once-dead"])

    store.watch = watch
    q.retry_dead("once-dead")
    assert seen == [False, 1]  # not in a lane, not run again, while the replay is written
    assert q.join(timeout=PATIENCE) and q.status("once-dead") is Status.COMPLETED


class CountedReads(SQLiteStore):
    """A store that counts its reads of the dead letters and of single jobs."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.reads = {"dead": 0, "find": 0}

    def dead(self) -> list[Record]:
        self.reads["dead"] += 1
        return super().dead()

    def find(self, job_id: str) -> Record | None:
        self.reads["find"] += 1
        return super().find(job_id)


def test_dead_letter_info_reads_the_store_once_for_all_the_dead_letters(
    path: str, opened: list[JobQueue]
) -> None:
    store = CountedReads(path)
    failing = Recorder(fail=lambda job, n: True)
    # A history of one: the first two dead letters are let go of, and only the disk has them.
    q = JobQueue(failing, workers=1, max_retries=0, history=1, store=store)
    opened.append(q)
    for job_id in ("first", "second", "third"):
        q.enqueue(Job(id=job_id))
        assert q.join(timeout=PATIENCE)
    deadline = time.monotonic() + PATIENCE
    while any(q.status(i) is not Status.FAILED for i in ("first", "second")):  # ends lag
        assert time.monotonic() < deadline
        time.sleep(0.001)
    store.reads = {"dead": 0, "find": 0}
    infos = q.dead_letter_info()
    assert store.reads == {"dead": 1, "find": 0}
    assert [info.id for info in infos] == ["first", "second", "third"]  # oldest first
    assert all(info.status is Status.FAILED and info.attempts == 1 for info in infos)
    assert all(info.last_error is not None for info in infos)
    assert [info.id for info in infos] == [job.id for job in q.dead_letters()]


def test_a_dead_letter_memory_lets_go_of_is_not_logged_as_lost_when_the_disk_keeps_it(
    path: str, opened: list[JobQueue], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="final")
    q = reopen(path, opened, Recorder(fail=lambda job, n: job.id == "dead"), history=1)
    q.enqueue(Job(id="dead", max_retries=0))
    assert q.join(timeout=PATIENCE)
    q.enqueue_many(Job() for _ in range(3))  # memory lets go of the dead letter
    assert q.join(timeout=PATIENCE)
    assert [job.id for job in q.dead_letters()] == ["dead"]  # the disk still has it
    assert not any("let go of" in r.getMessage() for r in caplog.records)
    # Its one record says how many attempts it had, in words.
    assert any("failed for good after 1 attempt:" in r.getMessage() for r in caplog.records)


def test_a_queue_takes_a_path_or_a_store_not_both(path: str) -> None:
    with pytest.raises(ValueError, match="a path or a store"):
        JobQueue(Recorder(), path=path, store=MemoryStore())


def test_a_queue_closes_the_store_it_was_given(path: str) -> None:
    q = JobQueue(Recorder(), store=SQLiteStore(path))
    q.close()
    JobQueue(Recorder(), path=path).close()  # the file's lock was let go of


def test_an_end_mark_of_an_earlier_version_queues_its_job_again(path: str) -> None:
    # "e" ends an attempt without saying how: counted, not charged with the death,
    # and run again, as at-least-once allows.
    store = SQLiteStore(path)
    store.add([Record(Job("old"), 2)])
    store.close()
    with open(f"{os.path.realpath(path)}.attempts", "wb") as journal:
        journal.write(b"1eold\n")
    q = JobQueue(lambda job: None, path=path)
    try:
        assert q.join(PATIENCE)
        info = q.info("old")
        assert info is not None
        assert (info.status, info.attempts, info.last_error) == (Status.COMPLETED, 2, None)
    finally:
        q.close()
