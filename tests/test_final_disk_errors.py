"""The final tier when the disk says no: nothing is acknowledged that is not on disk.

A full disk is simulated with SQLite's ``PRAGMA max_page_count`` on the queue's
writer connection: SQLite then refuses to grow the file exactly as it does when
the file system has no room (``SQLITE_FULL``, "database or disk is full"), and
the rest of the machine is left alone. A read-only location is real: a directory
the process may not write to. Root writes anywhere, so as root that test opens its
queue as the unprivileged user ``nobody``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from final import Job, JobQueue, Priority, Status
from final.jobs import Record
from final.sqlite_store import SQLiteStore
from final.store import StoreError
from tests.support import PATIENCE, Recorder

pytestmark = pytest.mark.tiers("final")

NOBODY = 65534
PAYLOAD = bytes(3000)  # most of a 4 KiB page: each job needs a page of its own


@pytest.fixture
def opened() -> Iterator[list[tuple[JobQueue, Recorder]]]:
    """Queues a test opened, with their recorders: released and closed at the end."""
    queues: list[tuple[JobQueue, Recorder]] = []
    yield queues
    for q, recorder in queues:
        recorder.release()
        q.close(timeout=PATIENCE)


def held(
    path: str, opened: list[tuple[JobQueue, Recorder]]
) -> tuple[JobQueue, Recorder, SQLiteStore]:
    """A queue on ``path``, given its store, whose one worker is held on a gate job, so
    that no job's end is written while the disk fills."""
    recorder = Recorder(hold=lambda job: job.id == "gate")
    store = SQLiteStore(path)
    q = JobQueue(recorder, workers=1, store=store)
    opened.append((q, recorder))
    q.enqueue(Job(id="gate", priority=Priority.HIGH))
    recorder.wait_started(1)
    return q, recorder, store


def fill_the_disk(store: SQLiteStore, room: int = 0) -> None:
    """Let the file grow by ``room`` pages at most (the limit is the writer's)."""
    pages = int(str(store.pragma("page_count"))) + room
    assert store.pragma("max_page_count", pages) == pages


def test_a_full_disk_makes_enqueue_raise_and_acknowledges_nothing_it_did_not_store(
    tmp_path: Path, opened: list[tuple[JobQueue, Recorder]]
) -> None:
    path = str(tmp_path / "jobs.db")
    q, recorder, store = held(path, opened)
    fill_the_disk(store, room=3)  # a few jobs fit, then none
    acknowledged: list[str] = []
    full: StoreError | None = None
    for i in range(100):
        try:
            q.enqueue(Job(id=f"job-{i}", payload=PAYLOAD, idempotency_key=f"key-{i}"))
        except StoreError as exc:
            full = exc
            break
        acknowledged.append(f"job-{i}")
    assert full is not None, "100 jobs of 3 KB fitted in 3 pages"
    assert "database or disk is full" in str(full)
    assert path in str(full)  # names the file too
    assert acknowledged
    refused = f"job-{len(acknowledged)}"
    assert q.status(refused) is None
    # Still full: refused again, and neither its id nor its key was taken.
    with pytest.raises(StoreError, match="full"):
        q.enqueue(Job(id="also-refused", payload=PAYLOAD))
    store.pragma("max_page_count", 1073741823)  # room again
    q.enqueue(Job(id=refused, payload=PAYLOAD, idempotency_key=f"key-{len(acknowledged)}"))
    assert q.status(refused) is Status.QUEUED
    # Close while the gate still holds: the queued jobs stay on disk for the next start.
    q.close(timeout=0)
    recorder.release()
    q.close()

    after = Recorder()
    q2 = JobQueue(after, path=path)
    opened.append((q2, after))
    assert q2.join(timeout=PATIENCE)
    assert sorted(after.attempts) == sorted([*acknowledged, refused])
    assert all(q2.status(job_id) is Status.COMPLETED for job_id in [*acknowledged, refused])
    assert q2.status("gate") is Status.COMPLETED
    assert q2.status("also-refused") is None
    q2.enqueue(Job(id="also-refused"))  # its id was never taken
    assert q2.join(timeout=PATIENCE)
    assert q2.status("also-refused") is Status.COMPLETED


def test_a_full_disk_refuses_a_whole_enqueue_many_batch(
    tmp_path: Path, opened: list[tuple[JobQueue, Recorder]]
) -> None:
    q, recorder, store = held(str(tmp_path / "jobs.db"), opened)
    fill_the_disk(store)
    with pytest.raises(StoreError, match="database or disk is full"):
        # One batch is one commit: it is stored whole or not at all.
        q.enqueue_many(Job(id=f"batch-{i}", payload=PAYLOAD) for i in range(20))
    assert all(q.status(f"batch-{i}") is None for i in range(20))
    assert q.metrics().submitted == 1  # the gate only
    recorder.release()
    assert q.join(timeout=PATIENCE)


@contextmanager
def as_nobody() -> Iterator[None]:
    """As root, act as the unprivileged user ``nobody`` for a while (as anyone else,
    stay who you are: permissions already apply). Effective ids only, so that root
    can take its own back."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def test_a_queue_in_a_directory_it_cannot_write_refuses_to_start() -> None:
    # Not pytest's tmp_path: as root, that is under a directory only root may enter.
    directory = tempfile.mkdtemp(prefix="final-read-only-")
    path = os.path.join(directory, "jobs.db")
    try:
        JobQueue(Recorder(), path=path).close()  # an existing queue
        for name in os.listdir(directory):
            os.chmod(os.path.join(directory, name), 0o444)
        os.chmod(directory, 0o555)  # may be read and entered, not written
        with as_nobody(), pytest.raises(StoreError) as denied:
            JobQueue(Recorder(), path=path)
        # Refused at start, before any job could be acknowledged, naming the file.
        assert str(denied.value) == f"{path}: cannot create the queue there (Permission denied)"
    finally:
        os.chmod(directory, 0o755)
        shutil.rmtree(directory)


class FullAfterOneAdd(SQLiteStore):
    """A store whose disk is full from its second ``add`` on; counts the jobs of each."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.calls: list[int] = []

    def add(self, records: Sequence[Record]) -> None:
        self.calls.append(len(records))
        if len(self.calls) > 1:
            raise StoreError("database or disk is full")
        super().add(records)


def test_a_failed_commit_in_a_long_enqueue_many_says_how_many_were_accepted(
    tmp_path: Path,
) -> None:
    store = FullAfterOneAdd(str(tmp_path / "jobs.db"))
    q = JobQueue(Recorder(), workers=1, queue_size=4, store=store)
    try:
        with pytest.raises(StoreError) as failed:
            # Six jobs, lanes of four: the first commit takes four, the next fails.
            q.enqueue_many(Job(id=f"job-{i}") for i in range(6))
        assert store.calls[0] == 4 and failed.value.accepted == 4
        assert q.join(timeout=PATIENCE)
        assert [q.status(f"job-{i}") for i in range(6)] == [Status.COMPLETED] * 4 + [None] * 2
    finally:
        q.close()
