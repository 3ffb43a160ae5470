"""Fixtures shared by the test files of final on disk."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from final import JobQueue
from tests.support import PATIENCE


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
