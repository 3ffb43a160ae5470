"""Fixtures shared by the test files of final on disk and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from final import JobQueue
from tests.pg import Database
from tests.support import PATIENCE, Recorder


@pytest.fixture
def path(tmp_path: Path) -> str:
    """A queue file in the test's own directory."""
    return str(tmp_path / "jobs.db")


@pytest.fixture
def opened() -> Iterator[list[JobQueue]]:
    """Queues a test opened; closed at the end so their files are let go of."""
    queues: list[JobQueue] = []
    yield queues
    for q in queues:
        q.close(timeout=PATIENCE)


@pytest.fixture
def pg_queues(db: Database) -> Iterator[Callable[..., JobQueue]]:
    """Build handles on the test's schema (``dsn=`` may name another); each is closed
    after the test, its ``Recorder`` handler released first."""
    made: list[JobQueue] = []
    recorders: list[Recorder] = []

    def make(handler: Callable[[Any], object] = lambda job: None, **options: Any) -> JobQueue:
        if isinstance(handler, Recorder):
            recorders.append(handler)
        q = JobQueue(handler, dsn=options.pop("dsn", db.queue_dsn), **options)
        made.append(q)
        return q

    yield make
    for recorder in recorders:
        recorder.release()
    for q in made:
        q.close(timeout=PATIENCE)
