"""The naive tier's lessons that are best shown by what it does, not by what it lacks."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import pytest

import naive
from tests.support import PATIENCE, Recorder

pytestmark = pytest.mark.tiers("naive")

ROOT = Path(__file__).resolve().parents[1]


def test_lesson_1_memory_grows_with_every_job_a_fast_producer_adds() -> None:
    recorder = Recorder(hold=lambda job: True)
    q = naive.JobQueue(recorder, workers=1)
    try:
        q.enqueue(naive.Job())
        recorder.wait_started(1)
        tracemalloc.start()
        try:
            sizes = []
            for _ in range(3):
                for _ in range(10_000):
                    q.enqueue(naive.Job())
                sizes.append(tracemalloc.get_traced_memory()[0])
        finally:
            tracemalloc.stop()
        # Every 10,000 jobs cost about the same again: growth is linear and unbounded.
        first, second = sizes[1] - sizes[0], sizes[2] - sizes[1]
        assert first > 10_000 * 100 and second > 10_000 * 100
        assert 0.5 < second / first < 2
    finally:
        recorder.release()
        q.close()


def test_lesson_5_close_drops_the_queued_jobs_and_join_never_sees_them_settle() -> None:
    recorder = Recorder(hold=lambda job: job.id == "gate")
    q = naive.JobQueue(recorder, workers=1)
    q.enqueue(naive.Job(id="gate"))
    recorder.wait_started(1)
    for i in range(5):
        q.enqueue(naive.Job(id=f"queued-{i}"))
    q.close(timeout=0)  # closing has begun; the worker is still held on the gate
    recorder.release()
    q.close()
    assert recorder.order == ["gate"]
    assert q.join(timeout=0.05) is False  # the dropped jobs never settle


def test_lesson_5_a_queue_nobody_closed_is_cut_off_at_interpreter_exit() -> None:
    script = textwrap.dedent(
        """
        import threading
        from naive import Job, JobQueue
        started = threading.Event()
        def handler(job):
            started.set()
            threading.Event().wait(5)
            print("finished", flush=True)
        q = JobQueue(handler, workers=1)
        q.enqueue(Job())
        started.wait()
        print("exiting", flush=True)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        check=True,
    )
    assert out.stdout.split() == ["exiting"]  # the running job never finished
