"""A process killed with SIGKILL: what becomes of the jobs it had accepted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support import PATIENCE, Recorder, Tier

IN_MEMORY = "{}: the queue lives in memory; a crash loses every job it had accepted"

# The child accepts jobs whose handler never returns, says so, and waits to be killed.
CHILD = textwrap.dedent(
    """
    import sys, threading
    from {tier} import Job, JobQueue
    options = {options!r}
    q = JobQueue(lambda job: threading.Event().wait(), workers=1, **options)
    for i in range({n}):
        q.enqueue(Job(id=f"job-{{i}}"))
    print("accepted", flush=True)
    threading.Event().wait()
    """
)


@pytest.mark.lacks(
    naive=IN_MEMORY.format("naive"),
    improved=IN_MEMORY.format("improved"),
)
def test_jobs_accepted_before_a_kill_run_after_a_restart(tier: Tier, tmp_path: Path) -> None:
    options = {"path": str(tmp_path / "jobs.db")} if tier.supports("path") else {}
    n = 20
    with subprocess.Popen(
        [sys.executable, "-c", CHILD.format(tier=tier.name, options=options, n=n)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "accepted"
        finally:
            os.kill(child.pid, signal.SIGKILL)
    recorder = Recorder()
    q = tier.queue(recorder, workers=2, **options)
    assert q.join(timeout=PATIENCE)
    assert sorted(recorder.attempts) == sorted(f"job-{i}" for i in range(n))
