"""The final tier's disk queue against faults users of other queues have met with files.

Each test names a kind of fault: a file still locked after ``close`` returned, a
method reaching a closed store, two names for one file, an id the store cannot
carry. Only the public API is used, and child processes run small script files.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from final import Job, JobQueue, QueueClosed, Status
from final.store import StoreError
from tests.support import PATIENCE, Boom, Recorder

pytestmark = pytest.mark.tiers("final")

ROOT = Path(__file__).resolve().parents[1]


def wait_for_status(q: JobQueue, job_id: str, status: Status) -> None:
    """Poll until the job has ``status``: the queue offers no event to wait on for it."""
    deadline = time.monotonic() + PATIENCE
    while q.status(job_id) is not status:
        if time.monotonic() > deadline:
            raise AssertionError(f"{job_id} never reached {status}")


# -- a file still locked after close returned --------------------------------------------------


def test_close_with_a_timeout_frees_the_file_when_no_attempt_runs(path: str) -> None:
    failed = threading.Event()

    def fail_once(job: Job) -> None:
        failed.set()
        raise Boom("first attempt")

    q = JobQueue(fail_once, path=path, workers=1, max_retries=2, backoff=5, max_backoff=5)
    q.enqueue(Job(id="later"))
    assert failed.wait(PATIENCE)
    wait_for_status(q, "later", Status.RETRYING)  # waiting out its backoff: no attempt runs
    q.close(timeout=0.01)
    again = JobQueue(Recorder(), path=path)  # at once: no StoreError
    try:
        assert again.status("later") is not None
    finally:
        again.close(timeout=0)  # its backoff is long: leave it on disk


def test_close_with_a_timeout_frees_the_file_once_the_running_attempt_ends(
    path: str, opened: list[JobQueue]
) -> None:
    recorder = Recorder(hold=lambda job: job.id == "gate")
    q = JobQueue(recorder, path=path, workers=1)
    q.enqueue(Job(id="gate"))
    recorder.wait_started(1)
    q.close(timeout=0.01)
    with pytest.raises(StoreError, match="already open"):
        JobQueue(Recorder(), path=path)  # the gate attempt still runs: the file is held
    recorder.release()
    # Once status() says the attempt has ended, the file is free: no window between.
    wait_for_status(q, "gate", Status.COMPLETED)
    opened.append(JobQueue(Recorder(), path=path))


def failing(job: Job) -> None:
    raise Boom(f"{job.id} fails")


# -- a method called after close reaches a closed resource -------------------------------------


@pytest.mark.parametrize("on_disk", [False, True], ids=["memory", "disk"])
def test_every_method_after_close_answers_as_the_memory_queue_does(
    path: str, on_disk: bool
) -> None:
    q = JobQueue(failing, path=path if on_disk else None, workers=1, max_retries=0)
    q.enqueue(Job(id="doomed", idempotency_key="k"))
    assert q.join(timeout=PATIENCE)
    q.close()
    assert q.status("nope") is None
    assert q.info("nope") is None
    assert q.status("doomed") is Status.FAILED
    info = q.info("doomed")
    assert info is not None and info.last_error == "Boom: doomed fails"
    assert [job.id for job in q.dead_letters()] == ["doomed"]
    with pytest.raises(QueueClosed):
        q.retry_dead("doomed")
    with pytest.raises(QueueClosed):
        q.retry_dead("nope")
    assert q.metrics().failed == 1
    assert q.join(timeout=0) is True
    with pytest.raises(QueueClosed):
        q.enqueue(Job(id="late"))
    with pytest.raises(QueueClosed):
        q.enqueue_many([Job(id="later")])
    q.close()
    q.close(timeout=0)


# -- two names, one file -----------------------------------------------------------------------


def other_names(tmp_path: Path, path: str) -> dict[str, str]:
    """Every other kind of name for the file at ``path``."""
    (tmp_path / "sub").mkdir()
    os.symlink(path, tmp_path / "symlink.db")
    os.symlink(tmp_path / "symlink.db", tmp_path / "chain.db")
    os.link(path, tmp_path / "hardlink.db")
    os.symlink(tmp_path, tmp_path / "dirlink")
    return {
        "symlink": str(tmp_path / "symlink.db"),
        "symlink to a symlink": str(tmp_path / "chain.db"),
        "hard link": str(tmp_path / "hardlink.db"),
        "through a linked directory": str(tmp_path / "dirlink" / "jobs.db"),
        "with ..": str(tmp_path / "sub" / ".." / "jobs.db"),
        "relative": os.path.relpath(path),
    }


def live_threads() -> set[str]:
    return {thread.name for thread in threading.enumerate() if thread.name.startswith("final")}


def test_a_second_name_for_a_file_open_in_this_process_is_refused(
    tmp_path: Path, path: str, opened: list[JobQueue]
) -> None:
    opened.append(JobQueue(Recorder(), path=path))
    threads = live_threads()
    for kind, name in other_names(tmp_path, path).items():
        files = sorted(os.listdir(tmp_path))
        with pytest.raises(StoreError, match="already open") as refused:
            JobQueue(Recorder(), path=name)
        assert path in str(refused.value), kind  # it names the file already open
        assert sorted(os.listdir(tmp_path)) == files, kind  # nothing created
        assert live_threads() == threads, kind  # no thread left running


HOLDER = """
import sys
from final import JobQueue

q = JobQueue(lambda job: None, path=sys.argv[1])
print("open", flush=True)
sys.stdin.read()  # until the test closes the pipe
q.close()
"""


def test_a_second_name_for_a_file_open_in_another_process_is_refused(
    tmp_path: Path, path: str
) -> None:
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(
        [sys.executable, str(script), path],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        names = other_names(tmp_path, path)
        files = sorted(os.listdir(tmp_path))
        for kind, name in names.items():
            with pytest.raises(StoreError, match="already open"):
                JobQueue(Recorder(), path=name)
            assert sorted(os.listdir(tmp_path)) == files, kind  # nothing created
    finally:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0
        holder.stdout.close()
    JobQueue(Recorder(), path=str(tmp_path / "symlink.db")).close()  # free once closed


def test_a_restart_by_another_symlink_counts_the_attempt_that_killed_the_process(
    tmp_path: Path,
) -> None:
    # The attempts journal follows the file, not the name it was opened by.
    os.symlink(tmp_path / "crash.db", tmp_path / "link.db")
    pairs = [("deadly", "deadly key")]
    result = crash_and_restart(
        tmp_path, pairs, killed_as=str(tmp_path / "link.db"), checked_as=str(tmp_path / "crash.db")
    )
    assert_each_attempt_was_counted(result, pairs)


def test_a_store_that_fails_to_open_leaves_no_thread_and_no_file(tmp_path: Path, path: str) -> None:
    os.mkdir(f"{path}.attempts")  # where the attempts journal must go
    threads = live_threads()
    with pytest.raises(StoreError, match="cannot create the queue there"):
        JobQueue(Recorder(), path=path)
    assert sorted(os.listdir(tmp_path)) == ["jobs.db.attempts"]
    assert live_threads() == threads


def test_a_queue_that_fails_to_recover_leaves_no_thread_and_the_file_free(path: str) -> None:
    with JobQueue(Recorder(), path=path) as q:
        q.enqueue(Job(id="odd"))
    db = sqlite3.connect(path)
    with db:  # a row this code cannot read: a priority it does not know
        db.execute("UPDATE jobs SET status = 'queued', priority = 99")
    db.close()
    threads = live_threads()
    for _ in range(2):  # the second meets the same fault, not a file still held
        with pytest.raises(ValueError, match="99"):
            JobQueue(Recorder(), path=path)
        assert live_threads() == threads


# Kills the process after the Nth statement SQLite is given while the queue opens a
# new file: a crash at every step of a file's creation.
CREATOR = """
import os, signal, sqlite3, sys
from final import JobQueue

path, deadly = sys.argv[1], int(sys.argv[2])
statements = 0

class Dying(sqlite3.Connection):
    def execute(self, *args, **kwargs):
        cursor = super().execute(*args, **kwargs)
        self.counted()
        return cursor

    def executescript(self, *args, **kwargs):
        cursor = super().executescript(*args, **kwargs)
        self.counted()
        return cursor

    def counted(self):
        global statements
        statements += 1
        if statements == deadly:
            os.kill(os.getpid(), signal.SIGKILL)

connect = sqlite3.connect
sqlite3.connect = lambda *args, **kwargs: connect(*args, factory=Dying, **kwargs)
JobQueue(lambda job: None, path=path).close()
print("created", flush=True)
"""


def test_a_crash_at_any_step_of_creating_the_file_leaves_a_file_a_queue_can_open(
    tmp_path: Path, path: str
) -> None:
    script = tmp_path / "creator.py"
    script.write_text(CREATOR)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for deadly in range(1, 50):
        for leftover in tmp_path.glob("jobs.db*"):
            leftover.unlink()
        run = subprocess.run(
            [sys.executable, str(script), path, str(deadly)],
            env=env,
            timeout=60,
            capture_output=True,
            text=True,
        )
        if run.stdout == "created\n":
            break  # no statement left to die after
        assert run.returncode == -signal.SIGKILL, run.stderr
        recorder = Recorder()
        with JobQueue(recorder, path=path) as q:  # not "not a job queue of ours"
            q.enqueue(Job(id="first"))
        assert recorder.attempts["first"] == 1, deadly
    else:
        raise AssertionError("the queue never finished creating its file")


# -- a value the store's encoding cannot carry -------------------------------------------------

# Run as a script file by the tests below: ``kill`` starts every job of the JSON file
# at once and kills the process with SIGKILL once all their attempts have begun;
# ``check`` opens the queue again and prints what it says of each job.
CHILD = """
import json, os, signal, sys, threading
from final import DuplicateJob, Job, JobQueue

mode, path, spec = sys.argv[1:]
with open(spec) as f:
    pairs = json.load(f)
if mode == "kill":
    started, lock, never = [], threading.Lock(), threading.Event()

    def handler(job):
        with lock:
            started.append(job.id)
            if len(started) == len(pairs):
                os.kill(os.getpid(), signal.SIGKILL)
        never.wait()

    q = JobQueue(handler, path=path, workers=len(pairs), max_retries=0)
    q.enqueue_many(Job(id=job_id, idempotency_key=key) for job_id, key in pairs)
    never.wait()
else:
    ran = []
    q = JobQueue(lambda job: ran.append(job.id), path=path, max_retries=0)
    q.join()
    seen = []
    for job_id, key in pairs:
        info = q.info(job_id)
        try:
            q.enqueue(Job(id="again-" + str(len(seen)), idempotency_key=key))
            refused_by = None
        except DuplicateJob as exc:
            refused_by = exc.job_id
        seen.append([info.status.value, info.attempts, info.last_error, info.idempotency_key,
                     refused_by])
    dead = sorted(job.id for job in q.dead_letters())
    q.close()
    print(json.dumps({"ran": ran, "seen": seen, "dead": dead}))
"""


def crash_and_restart(
    tmp_path: Path, pairs: list[tuple[str, str]], killed_as: str = "", checked_as: str = ""
) -> dict[str, Any]:
    """Start every job, kill -9 the process during their attempts, and restart it;
    by default both on ``crash.db``, else by the names given."""
    script, spec = tmp_path / "child.py", tmp_path / "jobs.json"
    script.write_text(CHILD)
    spec.write_text(json.dumps(pairs))
    path = str(tmp_path / "crash.db")
    if not killed_as:
        for leftover in tmp_path.glob("crash.db*"):
            leftover.unlink()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run(
        [sys.executable, str(script), "kill", killed_as or path, str(spec)], env=env, timeout=60
    )
    assert killed.returncode == -signal.SIGKILL
    checked = subprocess.run(
        [sys.executable, str(script), "check", checked_as or path, str(spec)],
        env=env,
        timeout=60,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(checked.stdout)
    return result


def assert_each_attempt_was_counted(result: dict[str, Any], pairs: list[tuple[str, str]]) -> None:
    """Every job died in its one attempt: in the dead letters, never run again."""
    assert result["ran"] == []
    assert result["dead"] == sorted(job_id for job_id, _ in pairs)
    for (job_id, key), seen in zip(pairs, result["seen"], strict=True):
        assert seen == ["failed", 1, "the process died during attempt 1", key, job_id], job_id


ODD_IDS = [
    "a\x00b",  # NUL: where the journal's unused zeros begin
    "\x00",
    "line\nbreak",
    "carriage\rreturn",
    "tab\there",
    "escape\x1b[0m",
    "delete\x7f",
    "separator\u2028and\x85next",
    "no\u00a0break",
    "emoji \U0001f600",
    "12 3",  # looks like an attempt count and an id
    '7j"quoted"',  # looks like the journal's quoted form
    "\\u0000",
    " ",
    "é" * 1024,  # the longest id, two bytes a character
    "\U0001f600" * 1024,  # the longest, four bytes a character
]


def test_ids_and_keys_of_any_character_survive_a_kill_during_their_attempt(
    tmp_path: Path,
) -> None:
    pairs = [(job_id, job_id[::-1]) for job_id in ODD_IDS]  # keys as odd as the ids
    pairs.append(("plain", "plain key"))  # an ordinary job beside them
    assert_each_attempt_was_counted(crash_and_restart(tmp_path, pairs), pairs)


# Any text that can be written to a file (a lone surrogate cannot, and is refused),
# with the characters the journal's format gives a meaning to drawn more often.
TRICKY = st.sampled_from('\x00\n\r\x1b\x7f\u2028 j0123456789"\\')


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    ids=st.lists(
        st.text(st.one_of(TRICKY, st.characters(codec="utf-8")), min_size=1, max_size=30),
        min_size=1,
        max_size=5,
        unique=True,
    )
)
@example(ids=["a\x00b", "after"])  # the first id cut the journal short at its NUL
def test_any_accepted_id_survives_a_kill_during_its_attempt(tmp_path: Path, ids: list[str]) -> None:
    pairs = [(job_id, job_id[::-1]) for job_id in ids]
    assert_each_attempt_was_counted(crash_and_restart(tmp_path, pairs), pairs)
