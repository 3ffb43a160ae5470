"""Faults other queues' users reported, as they bear on threads, processes and logs.

Each test names the kind of fault it guards against; they use the public API only.
"""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.support import PATIENCE, Boom, Tier
from tests.test_improved_and_final import wait_for_metrics

ROOT = Path(__file__).resolve().parents[1]
FAST = {"backoff": 0.001, "max_backoff": 0.01}

pytestmark = pytest.mark.tiers("improved", "final")


# -- a handler waiting for the queue waits for itself -----------------------------------


def test_join_from_a_handler_is_refused_rather_than_waiting_for_its_own_job(tier: Tier) -> None:
    errors: list[BaseException] = []

    def handler(job: Any) -> None:
        try:
            q.join(timeout=0.2)  # without the check: False after 0.2s, or a hang with None
        except RuntimeError as exc:
            errors.append(exc)

    q = tier.queue(handler, workers=2)
    for _ in range(3):
        q.enqueue(tier.Job())
    assert q.join(timeout=PATIENCE)
    assert len(errors) == 3
    assert all("own job" in str(exc) for exc in errors)


def test_join_from_a_handler_that_timed_out_is_refused_too(tier: Tier) -> None:
    abandoned = threading.Event()
    errors: list[BaseException] = []

    def handler(job: Any) -> None:
        attempt = tier.module.current_attempt()
        while not attempt.abandoned:
            abandoned.wait(0.005)
        try:
            q.join(timeout=0.2)
        except RuntimeError as exc:
            errors.append(exc)
        abandoned.set()

    q = tier.queue(handler, workers=1, job_timeout=0.05, max_retries=0)
    q.enqueue(tier.Job())
    assert abandoned.wait(PATIENCE)
    assert len(errors) == 1 and "own job" in str(errors[0])


# -- an attempt that ends after its deadline is judged by the deadline -------------------


@pytest.fixture
def scheduler_starved() -> Any:
    """Let a spinning handler keep the GIL until it blocks: the queue's scheduler,
    woken at the deadline, cannot run before the worker has settled the attempt.
    This makes the race between the worker and the scheduler go the worker's way."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(5.0)
    yield
    sys.setswitchinterval(before)


@pytest.mark.usefixtures("scheduler_starved")
@pytest.mark.parametrize("raises", [False, True], ids=["returns", "raises"])
def test_an_attempt_that_ends_after_its_deadline_is_timed_out_whoever_sees_it_first(
    tier: Tier, raises: bool
) -> None:
    def handler(job: Any) -> None:
        attempt = tier.module.current_attempt()
        while not attempt.expired:  # spins: never lets go of the GIL
            pass
        if raises:
            raise Boom("too late")

    q = tier.queue(handler, workers=1, job_timeout=0.02, max_retries=1, **FAST)
    for _ in range(3):
        q.enqueue(tier.Job())
    assert q.join(timeout=PATIENCE)
    m = q.metrics()
    assert (m.completed, m.failed, m.timed_out, m.retried) == (0, 3, 6, 3)


# -- logs: one record per failed attempt, the last one at ERROR ------------------------


def records_about(caplog: pytest.LogCaptureFixture, job_id: str) -> list[tuple[int, str, bool]]:
    """(level, message, has a traceback) of every record at WARNING or above naming the job."""
    return [
        (r.levelno, r.getMessage(), bool(r.exc_info))
        for r in caplog.records
        if r.levelno >= logging.WARNING and f"job {job_id} " in r.getMessage()
    ]


def test_a_job_failing_every_attempt_logs_one_line_each_and_one_traceback(
    tier: Tier, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=tier.name)
    jobs = 200

    def handler(job: Any) -> None:
        raise ConnectionError(f"{job.id}: the service is down")

    q = tier.queue(handler, workers=2, max_retries=3, **FAST)
    for i in range(jobs):
        q.enqueue(tier.Job(id=f"job-{i}"))
    assert q.join(timeout=PATIENCE)
    ours = [r for r in caplog.records if r.name.startswith(tier.name)]
    assert len(ours) == jobs * 4  # one record per failed attempt, no more
    assert [r for r in ours if r.exc_info] == [r for r in ours if r.levelno == logging.ERROR]
    assert sum(r.levelno == logging.ERROR for r in ours) == jobs
    assert records_about(caplog, "job-7") == [
        (
            logging.WARNING,
            f"job job-7 attempt {n} failed: ConnectionError: job-7: the service is down",
            False,
        )
        for n in (1, 2, 3)
    ] + [
        (
            logging.ERROR,
            "job job-7 failed for good after 4 attempts: "
            "ConnectionError: job-7: the service is down",
            True,
        )
    ]


def test_a_timed_out_attempt_is_logged_once_even_when_its_handler_fails_late(
    tier: Tier, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=tier.name)
    late = threading.Semaphore(0)

    def handler(job: Any) -> None:
        attempt = tier.module.current_attempt()
        while not attempt.abandoned:
            threading.Event().wait(0.005)
        try:
            raise Boom("too late to matter")
        finally:
            late.release()

    q = tier.queue(handler, workers=1, job_timeout=0.05, max_retries=1, **FAST)
    q.enqueue(tier.Job(id="slow"))
    assert q.join(timeout=PATIENCE)
    for _ in range(2):
        assert late.acquire(timeout=PATIENCE)
    wait_for_metrics(q, lambda m: m.abandoned == 0, "the abandoned threads to return")
    assert records_about(caplog, "slow") == [
        (logging.WARNING, "job slow attempt 1 failed: timed out after 0.05s", False),
        (logging.ERROR, "job slow failed for good after 2 attempts: timed out after 0.05s", False),
    ]


# -- what users see: names, messages, times after a restart (final) ---------------------


@pytest.mark.tiers("final")
def test_the_store_error_users_catch_is_exported_by_the_tier(tier: Tier, tmp_path: Path) -> None:
    assert "StoreError" in tier.module.__all__
    not_a_queue = tmp_path / "notes.txt"
    not_a_queue.write_text("not a database")
    with pytest.raises(tier.module.StoreError, match="not"):
        tier.module.JobQueue(lambda job: None, path=not_a_queue)


@pytest.mark.tiers("final")
def test_retry_dead_key_error_reads_as_a_sentence(tier: Tier) -> None:
    q = tier.queue(lambda job: None, workers=1)
    q.enqueue(tier.Job(id="fine"))
    assert q.join(timeout=PATIENCE)
    for job_id in ("fine", "never-seen"):
        with pytest.raises(tier.module.NotADeadLetter) as caught:  # a KeyError, exported
            q.retry_dead(job_id)
        assert isinstance(caught.value, KeyError)
        # KeyError's own str() quotes its argument: a sentence in double quotes.
        assert str(caught.value) == f"job {job_id!r} is not in the dead letters"
        assert caught.value.args[0] == job_id  # the missing key, as KeyError carries it


@pytest.mark.tiers("final")
def test_info_after_a_restart_keeps_when_the_last_attempt_started(
    tier: Tier, tmp_path: Path
) -> None:
    path = tmp_path / "queue.db"

    def handler(job: Any) -> None:
        if job.id == "doomed":
            raise Boom("no")

    q = tier.module.JobQueue(handler, workers=1, max_retries=0, path=path)
    q.enqueue(tier.Job(id="done"))
    q.enqueue(tier.Job(id="doomed"))
    assert q.join(timeout=PATIENCE)
    before = {job_id: q.info(job_id) for job_id in ("done", "doomed")}
    q.close()

    q = tier.queue(handler, workers=1, path=path)
    for job_id, seen in before.items():
        after = q.info(job_id)
        assert after is not None and seen is not None
        assert after.status is seen.status
        assert after.started_at is not None and seen.started_at is not None
        assert after.started_at == pytest.approx(seen.started_at, abs=0.05)
        assert after.enqueued_at <= after.started_at <= after.finished_at


# -- os.fork(): the child disowns the parent's queue --------------------------------------

FORK_SCRIPT = """
import os, select, signal, sys, threading
from {tier} import Job, JobQueue, QueueClosed

release, waiting = threading.Event(), threading.Event()

def handler(job):
    print("ran", job.id, os.getpid(), flush=True)
    waiting.set()
    release.wait()  # the parent's jobs are unsettled when it forks

q = JobQueue(handler, workers=1, **{options})
for i in range(3):
    q.enqueue(Job(id=str(i)))
waiting.wait()  # no thread is in the middle of a print at the fork
pid = os.fork()
if pid == 0:
    for use in (lambda: q.enqueue(Job(id="child")), lambda: q.join(0.1)):
        try:
            use()
        except QueueClosed as exc:
            print("child refused:", exc, flush=True)
    sys.exit(0)  # through the interpreter's exit and its hooks, as a child ends
pidfd = os.pidfd_open(pid)
if not select.select([pidfd], [], [], {patience})[0]:
    os.kill(pid, signal.SIGKILL)
    print("child hung at exit", flush=True)
print("child exit code", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
release.set()
q.enqueue(Job(id="after"))
assert q.join({patience})
q.close()
print("parent done", q.metrics().completed, flush=True)
"""


def run_fork_scenario(
    tier: Tier, options: dict[str, Any], template: str = FORK_SCRIPT
) -> list[str]:
    """Run ``template`` for ``tier`` in a fresh interpreter (a fork must not happen in
    pytest's own process), and return what it printed; its exit must be clean."""
    script = (
        template.replace("{tier}", tier.name)
        .replace("{options}", repr(options))
        .replace("{patience}", str(PATIENCE / 2))
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=PATIENCE * 2,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def check_fork_output(lines: list[str]) -> None:
    refusals = [line for line in lines if line.startswith("child refused:")]
    assert len(refusals) == 2 and all("fork" in line for line in refusals)
    assert "child exit code 0" in lines
    assert "child hung at exit" not in lines
    assert lines[-1] == "parent done 4"
    runners = {line.split()[2] for line in lines if line.startswith("ran ")}
    assert len(runners) == 1  # the parent ran every job; the child none


def test_a_forked_child_exits_promptly_and_leaves_the_parents_jobs_alone(tier: Tier) -> None:
    check_fork_output(run_fork_scenario(tier, {}))


@pytest.mark.tiers("final")
def test_a_forked_child_leaves_the_parents_file_alone(tier: Tier, tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    check_fork_output(run_fork_scenario(tier, {"path": str(path)}))
    # Every job completed once, and the file the child inherited is sound.
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = db.execute("SELECT id, status, attempts FROM jobs ORDER BY id").fetchall()
    assert rows == [(i, "completed", 1) for i in ("0", "1", "2", "after")]


@pytest.mark.tiers("final-pg")
def test_a_forked_child_leaves_the_parents_connections_alone(tier: Tier) -> None:
    # The child shares the parent's sockets to the server: its handle must refuse
    # before it sends anything down them, and its exit must not say goodbye on them.
    # The parent then enqueues, joins, closes and reads its metrics on those sockets.
    script = FORK_SCRIPT.replace("{tier}", "final")
    check_fork_output(run_fork_scenario(tier, {"dsn": tier.store_dsn()}, script))


FORK_IN_HANDLER_SCRIPT = """
import os, select, signal, sys
from {tier} import Job, JobQueue

children = []

def handler(job):
    print("ran", job.id, os.getpid(), flush=True)
    if job.id == "forks":
        pid = os.fork()
        if pid:
            children.append(pid)
        # Both return from the handler: the child into its copy of the worker.

q = JobQueue(handler, workers=1, **{options})
for job_id in ("forks", "a", "b"):
    q.enqueue(Job(id=job_id))
assert q.join({patience})
pidfd = os.pidfd_open(children[0])
if not select.select([pidfd], [], [], {patience})[0]:
    os.kill(children[0], signal.SIGKILL)
    print("child hung", flush=True)
os.waitpid(children[0], 0)
q.close()
print("parent", os.getpid(), q.metrics().completed, flush=True)
"""


@pytest.mark.parametrize("on_disk", [False, True], ids=["memory", "disk"])
def test_a_child_forked_by_a_handler_runs_none_of_the_parents_jobs(
    tier: Tier, tmp_path: Path, on_disk: bool
) -> None:
    options = {"path": str(tmp_path / "queue.db")} if on_disk and tier.supports("path") else {}
    lines = run_fork_scenario(tier, options, FORK_IN_HANDLER_SCRIPT)
    parent = lines[-1].split()[1]
    assert lines[-1] == f"parent {parent} 3"
    assert [line for line in lines if line.startswith("ran")] == [
        f"ran {job_id} {parent}" for job_id in ("forks", "a", "b")
    ]
    assert "child hung" not in lines
