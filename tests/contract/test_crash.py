"""A process killed with SIGKILL: what becomes of the jobs it had accepted."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.crash import kill_mid_run
from tests.support import Tier

IN_MEMORY = "{}: the queue lives in memory; a crash loses every job it had accepted"


@pytest.mark.lacks(
    naive=IN_MEMORY.format("naive"),
    improved=IN_MEMORY.format("improved"),
)
def test_jobs_accepted_before_a_kill_run_after_a_restart(tier: Tier, tmp_path: Path) -> None:
    # The child accepts 200 jobs, and is killed once a quarter of them have run;
    # a tier with a file gets a second child on it (see benchmarks/crash.py).
    outcome = kill_mid_run(tier.name, tmp_path, jobs=200, dsn=tier.store_dsn())
    assert outcome.acknowledged == 200
    assert outcome.lost == 0
    assert outcome.ran == 200
