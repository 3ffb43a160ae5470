"""Faults users of other queues reported, checked against the final tier on disk.

Each test drives the public API only (``JobQueue``, ``Job``, ``status``, ``info``,
``dead_letters``, ``retry_dead``, ``metrics``, ``close``); a crash is a child process
running a small script written to ``tmp_path``.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from final import Job, JobQueue, Status
from tests.support import PATIENCE, wait_for

pytestmark = pytest.mark.tiers("final")

ROOT = Path(__file__).resolve().parents[1]


def run_child(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    """Run ``source`` as a script in a fresh interpreter, from the project's root."""
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


# -- a crash is charged to the attempt that was running, never to one that had ended -------

KILLER = """
    import os, signal, sys
    from final import Job, JobQueue

    def handler(job):
        if job.id == "killer":
            os.kill(os.getpid(), signal.SIGKILL)
        if job.id == "flaky":
            raise RuntimeError("flaky fails")

    q = JobQueue(handler, path=sys.argv[0] + ".db", workers=1, max_retries={max_retries})
    if {first}:
        q.enqueue_many([{jobs}])
    q.join()
"""


@pytest.mark.parametrize("max_retries", [0, 2])
def test_a_job_whose_handler_returned_is_not_charged_with_a_later_crash(
    tmp_path: Path, max_retries: int
) -> None:
    path = str(tmp_path / "child.py.db")
    jobs = 'Job(id="quick"), Job(id="killer")'
    # The killer dies once per run, until its budget is spent: each crash comes
    # milliseconds after "quick" returned, before its end could be committed.
    for run in range(max_retries + 1):
        child = run_child(
            tmp_path, KILLER.format(max_retries=max_retries, first=run == 0, jobs=jobs)
        )
        assert child.returncode == -9, child.stderr
    q = JobQueue(lambda job: None, path=path)
    try:
        assert q.join(PATIENCE)
        quick = q.info("quick")
        assert quick is not None
        assert quick.status is Status.COMPLETED
        assert quick.last_error is None
        killer = q.info("killer")
        assert killer is not None
        assert killer.status is Status.FAILED
        assert killer.last_error == f"the process died during attempt {max_retries + 1}"
        assert [job.id for job in q.dead_letters()] == ["killer"]
    finally:
        q.close()


def test_a_failed_attempt_is_not_charged_with_a_later_crash(tmp_path: Path) -> None:
    path = str(tmp_path / "child.py.db")
    jobs = 'Job(id="flaky", max_retries=1), Job(id="killer", max_retries=0)'
    child = run_child(tmp_path, KILLER.format(max_retries=0, first=True, jobs=jobs))
    assert child.returncode == -9, child.stderr
    q = JobQueue(lambda job: None, path=path, backoff=0.001, max_backoff=0.001)
    try:
        assert q.join(PATIENCE)
        flaky = q.info("flaky")
        assert flaky is not None
        # Its failure is what counts against it, not a death it did not cause: it
        # runs again, and succeeds.
        assert flaky.status is Status.COMPLETED
        assert flaky.last_error is None or "died" not in flaky.last_error
        assert [job.id for job in q.dead_letters()] == ["killer"]
    finally:
        q.close()


TIMED_OUT_KILLER = """
    import os, signal, sys
    from final import Job, JobQueue, current_attempt

    def handler(job):
        attempt = current_attempt()
        while not attempt.abandoned:  # timed out: its end is written, its handler runs on
            pass
        os.kill(os.getpid(), signal.SIGKILL)

    q = JobQueue(handler, path=sys.argv[0] + ".db", max_retries=0, job_timeout=0.05)
    q.enqueue(Job(id="overran"))
    q.join()
"""


def test_a_handler_that_kills_the_process_after_its_timeout_is_still_charged(
    tmp_path: Path,
) -> None:
    # Its end (timed out, and failed for good) was written while the handler still
    # ran: an end, but not the handler's return. The death is its own.
    child = run_child(tmp_path, TIMED_OUT_KILLER)
    assert child.returncode == -9, child.stderr
    q = JobQueue(lambda job: None, path=tmp_path / "child.py.db")
    try:
        assert q.join(PATIENCE)
        info = q.info("overran")
        assert info is not None
        assert info.status is Status.FAILED
        assert info.attempts == 1  # not run again: it would kill every restart
    finally:
        q.close()


# -- a crash does not undo an end the journal holds: what had settled stays settled ---------

SETTLED_THEN_KILLED = """
    import os, signal
    from final import Job, JobQueue

    def handler(job):
        if job.id == "killer":
            os.kill(os.getpid(), signal.SIGKILL)
        if job.id == "dead":
            raise RuntimeError("dead fails")

    q = JobQueue(handler, path={path!r}, workers=1, max_retries=0)
    q.enqueue_many([Job(id="dead"), Job(id="done")])
    q.join()
    # Settled in memory; their ends lag some milliseconds behind on disk.
    q.enqueue(Job(id="killer"))
    q.join()
"""


def restart(path: Path, **options: object) -> tuple[JobQueue, list[str]]:
    """The queue at ``path`` again, and the ids of the jobs its handler runs."""
    ran: list[str] = []

    def handler(job: Job) -> None:
        ran.append(job.id)

    return JobQueue(handler, path=path, **options), ran  # type: ignore[arg-type]


def test_jobs_settled_just_before_a_neighbours_crash_stay_settled(tmp_path: Path) -> None:
    # The crash comes within milliseconds of their ends, before those are committed:
    # several rounds, so that at least one falls in that window however loaded the
    # machine. A completed job must not run again, nor a dead letter leave the dead
    # letters to run past its budget.
    for round_ in range(4):
        path = tmp_path / f"round-{round_}.db"
        child = run_child(tmp_path, SETTLED_THEN_KILLED.format(path=str(path)))
        assert child.returncode == -9, child.stderr
        q, ran = restart(path, workers=1, max_retries=0)
        try:
            assert q.status("done") is Status.COMPLETED
            assert q.status("dead") is Status.FAILED
            assert sorted(job.id for job in q.dead_letters()) == ["dead", "killer"]
            assert q.join(PATIENCE)
            assert ran == []
            done, dead = q.info("done"), q.info("dead")
            assert done is not None and dead is not None
            assert (done.status, done.attempts, done.last_error) == (Status.COMPLETED, 1, None)
            assert (dead.status, dead.attempts) == (Status.FAILED, 1)
            assert dead.last_error is not None and "died during" not in dead.last_error
        finally:
            q.close()


RETRIED_THEN_KILLED = """
    import os, signal
    from final import Job, JobQueue

    def handler(job):
        if job.id == "killer":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(job.id + " fails")

    q = JobQueue(handler, path={path!r}, workers=1, max_retries=1, backoff=0.2, max_backoff=0.2)
    q.enqueue(Job(id="spent"))
    q.join()  # failed twice: its retry spent, it is a dead letter
    # "waits" fails once and waits out its backoff; the one worker takes "killer" first.
    q.enqueue_many([Job(id="waits"), Job(id="killer", max_retries=0)])
    q.join()
"""


def test_a_retried_job_keeps_its_attempts_across_a_neighbours_crash(tmp_path: Path) -> None:
    # After the crash, "spent" stays in the dead letters after its 2 attempts, and
    # "waits" has its one retry left, no more: it runs once more, not charged with
    # the death.
    for round_ in range(3):
        path = tmp_path / f"round-{round_}.db"
        child = run_child(tmp_path, RETRIED_THEN_KILLED.format(path=str(path)))
        assert child.returncode == -9, child.stderr
        q, ran = restart(path, workers=1)
        try:
            assert q.join(PATIENCE)
            assert ran == ["waits"]
            spent, waits = q.info("spent"), q.info("waits")
            assert spent is not None and waits is not None
            assert (spent.status, spent.attempts) == (Status.FAILED, 2)
            assert spent.last_error is not None and "died during" not in spent.last_error
            assert (waits.status, waits.attempts) == (Status.COMPLETED, 2)
            assert sorted(job.id for job in q.dead_letters()) == ["killer", "spent"]
        finally:
            q.close()


# -- a read answers from what has happened, even when memory let go and the disk lags -------


def fail_dead(job: Job) -> None:
    if job.id.startswith("dead"):
        raise RuntimeError("dead fails")


def test_a_dead_letter_memory_let_go_of_reads_failed_before_its_commit(tmp_path: Path) -> None:
    q = JobQueue(fail_dead, path=tmp_path / "q.db", max_retries=0, history=1)
    try:
        q.enqueue(Job(id="dead"))
        assert q.join(PATIENCE)
        q.enqueue(Job(id="next"))  # settles, and memory lets go of "dead"
        assert q.join(PATIENCE)
        assert q.status("dead") is Status.FAILED
        assert [job.id for job in q.dead_letters()] == ["dead"]
        q.retry_dead("dead")
        assert q.join(PATIENCE)
        info = q.info("dead")
        assert info is not None
        assert info.status is Status.FAILED
        assert info.attempts == 1  # a fresh budget, spent once more
    finally:
        q.close()


def test_a_completed_job_memory_let_go_of_never_reads_queued_again(tmp_path: Path) -> None:
    q = JobQueue(fail_dead, path=tmp_path / "q.db", workers=1, history=1)
    try:
        for i in range(50):
            q.enqueue(Job(id=f"done-{i}"))
            q.enqueue(Job(id=f"next-{i}"))
            assert q.join(PATIENCE)
            assert q.status(f"done-{i}") is Status.COMPLETED
    finally:
        q.close()


# -- a retry waits out its own backoff after a restart, whatever the wall clock did ---------


def always_fails(job: Job) -> None:
    raise RuntimeError("not yet")


@pytest.mark.parametrize("step", [3600.0, 86_400.0 * 30])
def test_a_wall_clock_step_between_runs_does_not_delay_a_retry_past_its_backoff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: float
) -> None:
    path = tmp_path / "q.db"
    true_time = time.time
    with monkeypatch.context() as fast:
        fast.setattr(time, "time", lambda: true_time() + step)  # the clock is ahead
        q = JobQueue(always_fails, path=path, backoff=0.5, max_backoff=1.0)
        q.enqueue(Job(id="patient"))
        deadline = time.monotonic() + PATIENCE
        while q.status("patient") is not Status.RETRYING:  # its first attempt failed
            assert time.monotonic() < deadline
            time.sleep(0.001)
        q.close(timeout=0)  # leaves it on disk, waiting out a backoff of at most 0.5 s
        q.close()
    # The clock is put right (NTP, a resumed VM): the retry is still due within its
    # backoff, not `step` seconds later.
    q = JobQueue(lambda job: None, path=path, backoff=0.5, max_backoff=1.0)
    try:
        assert q.join(PATIENCE)
        info = q.info("patient")
        assert info is not None
        assert info.status is Status.COMPLETED
        assert info.attempts == 2
    finally:
        q.close(timeout=0)  # before the fix, the retry is an hour away


def test_a_file_of_schema_version_1_is_upgraded_in_place_and_keeps_its_jobs(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.db"
    q = JobQueue(always_fails, path=path, backoff=0.01, max_backoff=0.01)
    q.enqueue(Job(id="old"))
    deadline = time.monotonic() + PATIENCE
    while q.status("old") is not Status.RETRYING:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    q.close(timeout=0)
    # The file as version 1 wrote it: no column delay (nor run_at, of version 3).
    db = sqlite3.connect(path)
    db.executescript(
        "ALTER TABLE jobs DROP COLUMN run_at; ALTER TABLE jobs DROP COLUMN delay;"
        " PRAGMA user_version = 1;"
    )
    db.close()
    q = JobQueue(lambda job: None, path=path)
    try:
        assert q.join(PATIENCE)
        assert q.status("old") is Status.COMPLETED
    finally:
        q.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3
        columns = [row[1] for row in db.execute("PRAGMA table_info(jobs)")]
        assert columns[-2:] == ["delay", "run_at"]
    finally:
        db.close()


# -- the file does not grow for ever: completed jobs are deleted after `retention` ---------


def test_completed_jobs_are_deleted_after_retention_and_dead_letters_stay(
    tmp_path: Path,
) -> None:
    # A tiny retention rather than an injected clock: what is tested is the real
    # background sweep, batches included (more jobs than one batch looks at).
    q = JobQueue(fail_dead, path=tmp_path / "q.db", max_retries=0, history=1, retention=0.05)
    try:
        q.enqueue(Job(id="dead"))
        q.enqueue_many(Job(id=f"done-{i}", idempotency_key=f"k-{i}") for i in range(600))
        assert q.join(PATIENCE)
        q.enqueue(Job(id="last"))  # memory (history=1) now holds this one only
        assert q.join(PATIENCE)
        wait_for(
            lambda: all(q.status(f"done-{i}") is None for i in range(600)),
            "the completed jobs to be deleted",
        )
        assert q.status("dead") is Status.FAILED
        assert [job.id for job in q.dead_letters()] == ["dead"]
        # Their idempotency keys may be used again.
        q.enqueue(Job(id="again", idempotency_key="k-0"))
        assert q.join(PATIENCE)
        q.retry_dead("dead")  # and a dead letter is still there to replay
        assert q.join(PATIENCE)
    finally:
        q.close()


def test_completed_jobs_are_kept_within_retention(tmp_path: Path) -> None:
    for retention in (None, 3600.0):
        path = tmp_path / f"{retention}.db"
        q = JobQueue(lambda job: None, path=path, history=1, retention=retention)
        q.enqueue_many(Job(id=f"done-{i}") for i in range(300))
        assert q.join(PATIENCE)
        q.close()
        q = JobQueue(lambda job: None, path=path, history=1, retention=retention)
        try:
            assert all(q.status(f"done-{i}") is Status.COMPLETED for i in range(300))
        finally:
            q.close()


@pytest.mark.parametrize("retention", [-1.0, float("nan"), float("inf"), "7 days", True])
def test_a_retention_that_is_not_seconds_is_refused(tmp_path: Path, retention: object) -> None:
    with pytest.raises(ValueError, match="retention"):
        JobQueue(lambda job: None, path=tmp_path / "q.db", retention=retention)  # type: ignore[arg-type]
