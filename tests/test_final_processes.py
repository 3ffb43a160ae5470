"""final with ``executor="process"``: attempts in child processes (final/processes.py).

What threads cannot do, processes must: a timeout ends the hung attempt's child, a
child's death (an exit, a crash, a kill from outside) fails that attempt alone, and no
child outlives the queue, even when the parent is killed with ``kill -9``. Which
process ran which attempt is only seen from outside: the handlers write it to a file
(``tests/process_handlers.py``), and the tests poll that file and ``/proc``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from final import Job, JobInfo, JobQueue, Status
from final.arguments import QUEUE_OPTIONS
from tests import process_handlers as handlers
from tests.support import PATIENCE, wait_for

ROOT = Path(__file__).resolve().parent.parent
FAST = {"backoff": 0.01, "max_backoff": 0.02}


@pytest.fixture
def queues() -> Iterator[Callable[..., JobQueue]]:
    """Build process queues; each is closed after the test."""
    made: list[JobQueue] = []

    def make(handler: Callable[[Job], object], **options: Any) -> JobQueue:
        q = JobQueue(handler, executor="process", **options)
        made.append(q)
        return q

    yield make
    for q in made:
        q.close(timeout=PATIENCE)


def notes(path: Path) -> list[tuple[int, int, str]]:
    """The lines the handlers wrote: (pid, attempt number, time left)."""
    if not path.exists():
        return []
    rows = [line.split() for line in path.read_text().splitlines()]
    return [(int(pid), int(number), left) for pid, number, left in rows]


def gone(pid: int) -> bool:
    """True once the process has ended (a zombie has ended too: only its entry is left)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def info_of(q: JobQueue, job_id: str) -> JobInfo:
    found = q.info(job_id)
    assert found is not None, job_id
    return found


def job(note: Path, job_id: str = "j") -> Job:
    return Job(id=job_id, payload=str(note).encode())


# --- what cannot travel to a child is refused at construction --------------------------


def test_a_lambda_is_refused_with_a_type_error_that_says_what_to_do() -> None:
    with pytest.raises(TypeError, match=r"lambda.*define it with def at the top level"):
        JobQueue(lambda job: None, executor="process")


def test_a_closure_is_refused_with_a_type_error_that_says_what_to_do() -> None:
    seen: list[Job] = []

    def handler(job: Job) -> None:
        seen.append(job)

    with pytest.raises(TypeError, match=r"defined inside another.*payload"):
        JobQueue(handler, executor="process")


def test_a_function_of_main_is_refused_since_the_child_imports_the_script_anew() -> None:
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec("def handler(job):\n    pass\n", namespace)
    with pytest.raises(TypeError, match=r"from __main__.*import it in the script"):
        JobQueue(namespace["handler"], executor="process")


def test_a_callable_that_its_name_does_not_give_back_is_refused() -> None:
    class Handler:
        def __call__(self, job: Job) -> None:
            pass

    with pytest.raises(TypeError, match="instance has none"):
        JobQueue(Handler(), executor="process")
    with pytest.raises(TypeError, match="defined inside another"):
        JobQueue(Handler().__call__, executor="process")


def test_an_unknown_executor_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="executor must be 'thread' or 'process'"):
        JobQueue(handlers.noop, executor="processes")


def test_the_command_line_takes_the_executor_as_an_option() -> None:
    rule, _ = QUEUE_OPTIONS["executor"]
    assert rule == ("thread", "process")


# --- attempts run in children ----------------------------------------------------------


def test_each_attempt_runs_in_a_child_that_knows_its_attempt(queues: Any, tmp_path: Path) -> None:
    note = tmp_path / "notes"
    q = queues(handlers.note, workers=2, job_timeout=30.0)
    q.enqueue(job(note))
    assert q.join(PATIENCE)
    [(pid, number, left)] = notes(note)
    assert pid != os.getpid() and not gone(pid)  # a child, kept for the next attempt
    assert number == 1
    assert 0 < float(left) <= 30.0  # the parent's deadline, read by the child's clock
    assert q.status("j") is Status.COMPLETED


def test_a_handler_exception_comes_back_with_its_type_and_message(queues: Any) -> None:
    q = queues(handlers.fail, workers=1, max_retries=0)
    q.enqueue(Job(id="j"))
    assert q.join(PATIENCE)
    assert info_of(q, "j").last_error == "ValueError: no good: j"


def test_a_fork_that_returns_from_the_handler_ends_and_answers_nothing(
    queues: Any, tmp_path: Path
) -> None:
    note = tmp_path / "forks"
    q = queues(handlers.fork_and_return, workers=1, max_retries=0)
    q.enqueue(job(note, "forks"))
    q.enqueue(Job(id="after"))  # runs on the same child, after the fork is gone
    assert q.join(PATIENCE)
    (fork,) = (int(line) for line in note.read_text().split())
    assert gone(fork)  # the child waited for it before it answered
    assert q.status("forks") is Status.COMPLETED and q.status("after") is Status.COMPLETED


def test_complete_in_a_transaction_is_refused_in_a_child_and_says_why(queues: Any) -> None:
    q = queues(handlers.complete_in_child, workers=1, max_retries=0)
    q.enqueue(Job(id="j"))
    assert q.join(PATIENCE)
    error = info_of(q, "j").last_error
    assert error is not None and error.startswith("RuntimeError: complete(connection)")
    assert "executor='thread'" in error


def test_a_hung_attempt_times_out_its_child_is_killed_and_a_fresh_one_retries_it(
    queues: Any, tmp_path: Path
) -> None:
    note = tmp_path / "notes"
    # The retry's child may be started on demand (the killed one's replacement is still
    # on its way), and that start counts in the retry's deadline: 1 s, not a few tenths,
    # so that the retry still gets to its note on a loaded machine.
    q = queues(handlers.note_and_hang, workers=1, job_timeout=1.0, max_retries=1, **FAST)
    q.enqueue(job(note))
    assert q.join(PATIENCE)
    (first, _, _), (second, _, _) = notes(note)
    assert first != second  # the retry ran in a fresh child
    wait_for(lambda: gone(first) and gone(second), "the hung children to be killed")
    info = info_of(q, "j")
    assert (info.status, info.attempts) == (Status.FAILED, 2)
    assert info.last_error == "timed out after 1.0s"
    assert q.metrics().timed_out == 2


@pytest.mark.parametrize(
    ("handler", "how"),
    [
        (handlers.note_and_exit, "exit code 1"),
        (handlers.note_and_segfault, "killed by SIGSEGV"),
    ],
    ids=["os._exit", "SIGSEGV"],
)
def test_a_child_that_dies_fails_its_attempt_with_how_it_died(
    queues: Any, tmp_path: Path, handler: Callable[[Job], None], how: str
) -> None:
    note = tmp_path / "notes"
    q = queues(handler, workers=1, max_retries=0)
    q.enqueue(job(note))
    assert q.join(PATIENCE)
    [(pid, _, _)] = notes(note)
    error = info_of(q, "j").last_error
    assert error == f"ChildDied: the child process (pid {pid}) running the attempt died: {how}"


def test_a_child_killed_from_outside_fails_its_attempt_which_is_retried(
    queues: Any, tmp_path: Path
) -> None:
    note = tmp_path / "notes"
    q = queues(handlers.note_and_hang_once, workers=1, max_retries=1, **FAST)
    q.enqueue(job(note))
    wait_for(lambda: len(notes(note)) == 1, "the first attempt to start")
    [(pid, _, _)] = notes(note)
    os.kill(pid, signal.SIGKILL)
    assert q.join(PATIENCE)
    (_, _, _), (fresh, _, _) = notes(note)
    assert fresh != pid
    info = info_of(q, "j")
    assert info.status is Status.COMPLETED and info.attempts == 2
    assert (info.last_error or "").endswith(
        f"(pid {pid}) running the attempt died: killed by SIGKILL"
    )


def test_a_poison_job_reaches_the_dead_letters_and_the_others_carry_on(queues: Any) -> None:
    q = queues(handlers.die_if_poison, workers=2, max_retries=2, **FAST)
    q.enqueue(Job(id="poison", payload=b"poison"))
    q.enqueue_many([Job(id=f"ok{i}") for i in range(20)])
    assert q.join(PATIENCE)
    info = info_of(q, "poison")
    assert (info.status, info.attempts) == (Status.FAILED, 3)
    assert [j.id for j in q.dead_letters()] == ["poison"]
    assert all(q.status(f"ok{i}") is Status.COMPLETED for i in range(20))
    assert q.metrics().completed == 20


# --- no child outlives the queue ---------------------------------------------------------


def test_close_leaves_no_child_behind(tmp_path: Path) -> None:
    note = tmp_path / "notes"
    q = JobQueue(handlers.note, workers=3, executor="process")
    q.enqueue_many([job(note, f"j{i}") for i in range(6)])
    assert q.join(PATIENCE)
    assert q._pool is not None
    children = set(q._pool.pids()) | {pid for pid, _, _ in notes(note)}
    assert len(children) == 3
    q.close()
    assert all(gone(pid) for pid in children)


def test_close_with_a_timeout_returns_during_a_hung_attempt_whose_child_ends_at_its_deadline(
    queues: Any, tmp_path: Path
) -> None:
    note = tmp_path / "notes"
    q = queues(handlers.note_and_hang, workers=2, job_timeout=3.0, max_retries=0)
    q.enqueue(job(note))
    wait_for(lambda: len(notes(note)) == 1, "the attempt to start")
    [(busy, _, _)] = notes(note)
    assert q._pool is not None
    [idle] = q._pool.pids()
    q.close(timeout=0.1)
    # close() did not wait for the hung attempt, nor leave the idle child behind.
    assert q.status("j") is Status.PROCESSING and not gone(busy)
    assert gone(idle)
    wait_for(lambda: gone(busy), "the hung child to be killed at the attempt's deadline")
    wait_for(lambda: q.status("j") is Status.FAILED, "the attempt to settle")
    assert info_of(q, "j").last_error == "timed out after 3.0s"


def _run_script(code: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(script)], env=env, cwd=tmp_path)


def test_no_child_is_left_behind_at_interpreter_exit(tmp_path: Path) -> None:
    note = tmp_path / "notes"
    script = _run_script(
        f"""
        from final import Job, JobQueue
        from tests import process_handlers

        if __name__ == "__main__":
            q = JobQueue(process_handlers.note, workers=2, executor="process")
            q.enqueue(Job(payload={str(note).encode()!r}))
            # no close(): the interpreter's exit must end the children
        """,
        tmp_path,
    )
    assert script.wait(PATIENCE) == 0
    [(pid, _, _)] = notes(note)
    wait_for(lambda: gone(pid), "the child to end with the interpreter")


def test_after_kill_9_of_the_parent_its_children_end_and_the_jobs_rerun(
    tmp_path: Path,
) -> None:
    kill_the_parent_then_rerun(tmp_path, {"path": str(tmp_path / "jobs.db")})


def kill_the_parent_then_rerun(tmp_path: Path, store: dict[str, Any]) -> None:
    """A parent on ``store`` (``path`` or ``dsn`` and its options) killed with SIGKILL
    while two children run attempts: the children end, and a new queue on the same
    store runs the jobs again, the dead attempts counted."""
    note = tmp_path / "notes"
    script = _run_script(
        f"""
        import time
        from final import Job, JobQueue
        from tests import process_handlers

        if __name__ == "__main__":
            q = JobQueue(
                process_handlers.note_and_hang, workers=2, executor="process", **{store!r}
            )
            q.enqueue_many([Job(id=f"j{{i}}", payload={str(note).encode()!r}) for i in range(3)])
            time.sleep(3600)
        """,
        tmp_path,
    )
    try:
        wait_for(lambda: len(notes(note)) == 2, "two attempts to run in two children")
    finally:
        script.kill()
        script.wait()
    children = [pid for pid, _, _ in notes(note)]
    wait_for(lambda: all(gone(pid) for pid in children), "the orphaned children to end")
    options: dict[str, Any] = {**store, **FAST}
    with JobQueue(handlers.note, workers=2, executor="process", **options) as q:
        ids = [f"j{i}" for i in range(3)]
        # With a dsn, the two that died with the parent are rescued once their lease
        # passes; with a path, at the start. The third had not started and runs once.
        wait_for(lambda: {q.status(i) for i in ids} == {Status.COMPLETED}, "the rerun")
        attempts = sorted(info_of(q, i).attempts for i in ids)
    assert attempts == [1, 2, 2]  # the two that died with the parent ran again, counted


# --- os.fork() of the parent: the fork's exit leaves the parent's children alone ---------

FORK_SCRIPT = """
import os, sys, time
from pathlib import Path
from final import Job, JobQueue
from final.processes import ChildDied
from tests import process_handlers

if __name__ == "__main__":
    note = Path({note!r})
    q = JobQueue(process_handlers.note_and_wait_for_go, workers=2, executor="process", **{options})
    q.enqueue(Job(id="j", payload=str(note).encode()))
    while not note.exists() or not note.read_text():
        time.sleep(0.01)  # the attempt is running in a child
    children = {{*q._pool.pids(), int(note.read_text().split()[0])}}
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # the interpreter's normal exit, multiprocessing's exit hook included
    print("fork exit code", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
    Path(str(note) + ".go").touch()
    assert q.join({patience})
    info = q.info("j")
    print("job", info.status.value, info.attempts, info.last_error, flush=True)
    print("children kept", set(q._pool.pids()) == children, len(children), flush=True)
    q.close()
"""


def run_fork_script(tmp_path: Path, options: dict[str, Any]) -> tuple[list[str], str]:
    note = tmp_path / "notes"
    code = FORK_SCRIPT.format(note=str(note), options=options, patience=PATIENCE)
    script = tmp_path / "script.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, str(script)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=PATIENCE * 3,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines(), out.stderr


def check_fork_script(lines: list[str], stderr: str) -> None:
    # Before the fix, the fork's exit sent SIGTERM to the parent's children (the attempt
    # failed with ChildDied) and then failed "can only join a child process".
    assert lines == ["fork exit code 0", "job completed 1 None", "children kept True 2"], stderr
    assert "child process" not in stderr


def test_a_forked_copy_of_the_parent_exits_without_touching_its_children(
    tmp_path: Path,
) -> None:
    check_fork_script(*run_fork_script(tmp_path, {}))


def test_after_kill_9_of_the_parent_its_children_end_even_while_a_fork_of_it_lives(
    tmp_path: Path,
) -> None:
    # The fork must not hold the pipe whose end tells the children that the parent died.
    note, forked = tmp_path / "notes", tmp_path / "forked"
    script = _run_script(
        f"""
        import os, time
        from pathlib import Path
        from final import Job, JobQueue
        from tests import process_handlers

        if __name__ == "__main__":
            q = JobQueue(process_handlers.note_and_hang, workers=1, executor="process")
            q.enqueue(Job(payload={str(note).encode()!r}))
            pid = os.fork()
            if pid == 0:
                time.sleep(3600)
                os._exit(0)
            Path({str(forked)!r}).write_text(str(pid))
            time.sleep(3600)
        """,
        tmp_path,
    )
    fork = 0
    try:
        wait_for(lambda: len(notes(note)) == 1 and forked.exists(), "the attempt and the fork")
        wait_for(lambda: forked.read_text() != "", "the fork's pid")
        fork = int(forked.read_text())
    finally:
        script.kill()
        script.wait()
    try:
        [(child, _, _)] = notes(note)
        wait_for(lambda: gone(child), "the orphaned child to end")
        assert not gone(fork)
    finally:
        if fork:
            os.kill(fork, signal.SIGKILL)


# --- on PostgreSQL -----------------------------------------------------------------------


@pytest.mark.tiers("final-pg")
def test_on_postgresql_a_child_that_dies_fails_only_its_attempt(db: Any) -> None:
    pytest.importorskip("psycopg")
    with JobQueue(
        handlers.die_if_poison,
        dsn=db.queue_dsn,
        workers=2,
        executor="process",
        max_retries=1,
        backoff=0.01,
        max_backoff=0.02,
    ) as q:
        q.enqueue(Job(id="poison", payload=b"poison"))
        q.enqueue_many([Job(id=f"ok{i}") for i in range(10)])
        assert q.join(PATIENCE)
        info = info_of(q, "poison")
        assert (info.status, info.attempts) == (Status.FAILED, 2)
        assert "died: exit code 1" in (info.last_error or "")
        assert all(q.status(f"ok{i}") is Status.COMPLETED for i in range(10))


@pytest.mark.tiers("final-pg")
def test_on_postgresql_after_kill_9_of_the_parent_its_children_end_and_the_jobs_rerun(
    db: Any, tmp_path: Path
) -> None:
    pytest.importorskip("psycopg")
    kill_the_parent_then_rerun(tmp_path, {"dsn": db.queue_dsn, "lease": 1.0})


@pytest.mark.tiers("final-pg")
def test_on_postgresql_a_forked_copy_of_the_parent_exits_without_touching_its_children(
    db: Any, tmp_path: Path
) -> None:
    pytest.importorskip("psycopg")
    check_fork_script(*run_fork_script(tmp_path, {"dsn": db.queue_dsn}))
