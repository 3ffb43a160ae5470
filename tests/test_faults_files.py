"""The final tier's disk queue against faults users of other queues have met with files.

Each test names a kind of fault: a file still locked after ``close`` returned, a
method reaching a closed store, two names for one file, an id the store cannot
carry. Only the public API is used, and child processes run small script files.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from final import Job, JobQueue, QueueClosed, Status
from final.store import StoreError
from tests.support import PATIENCE, Boom, Recorder

pytestmark = pytest.mark.tiers("final")


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "jobs.db")


@pytest.fixture
def opened() -> Iterator[list[JobQueue]]:
    """Queues a test opened; closed at the end so their files are let go of."""
    queues: list[JobQueue] = []
    yield queues
    for q in queues:
        q.close(timeout=PATIENCE)


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
