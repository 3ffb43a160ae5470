"""close(): what it waits for, what it refuses, and what it does with the leftovers."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.support import PATIENCE, Recorder, Tier

DROPS = "naive: close() drops the queued jobs without a word"


def _held_with_queue(tier: Tier, queued: int) -> tuple[Any, Recorder]:
    """One worker held on a gate job, ``queued`` jobs waiting behind it."""
    recorder = Recorder(hold=lambda job: job.id == "gate")
    q = tier.queue(recorder, workers=1)
    q.enqueue(tier.Job(id="gate"))
    recorder.wait_started(1)
    for i in range(queued):
        q.enqueue(tier.Job(id=f"queued-{i}"))
    return q, recorder


def test_close_twice_is_safe(tier: Tier) -> None:
    q = tier.queue(Recorder())
    q.close()
    q.close()


def test_enqueue_after_close_raises_queue_closed(tier: Tier) -> None:
    q = tier.queue(Recorder())
    q.close()
    with pytest.raises(tier.QueueClosed):
        q.enqueue(tier.Job())


def test_leaving_the_with_block_closes_the_queue(tier: Tier) -> None:
    with tier.queue(Recorder()) as q:
        q.enqueue(tier.Job())
        assert q.join(timeout=PATIENCE)
    with pytest.raises(tier.QueueClosed):
        q.enqueue(tier.Job())


def test_close_lets_a_started_job_finish(tier: Tier) -> None:
    q, recorder = _held_with_queue(tier, 0)
    closer = threading.Thread(target=q.close)
    closer.start()
    recorder.release()
    closer.join(PATIENCE)
    assert not closer.is_alive()
    assert recorder.succeeded == ["gate"]


@pytest.mark.lacks(naive=DROPS)
def test_close_runs_the_queued_jobs_before_returning(tier: Tier) -> None:
    q, recorder = _held_with_queue(tier, 5)
    closer = threading.Thread(target=q.close)
    closer.start()
    recorder.release()
    closer.join(PATIENCE)
    assert not closer.is_alive()
    assert recorder.succeeded == ["gate"] + [f"queued-{i}" for i in range(5)]


@pytest.mark.lacks(
    naive="naive: no metrics; what close() dropped is not even counted",
    **{
        "final-pg": "final-pg: what close(timeout) leaves is not lost: it stays in the"
        " database, and the other processes of the queue run it"
    },
)
def test_close_with_a_timeout_counts_the_jobs_it_left_as_lost(tier: Tier) -> None:
    q, recorder = _held_with_queue(tier, 5)
    assert hasattr(q, "metrics")
    q.close(timeout=0.05)  # returns while the gate job still runs
    recorder.release()
    assert q.join(timeout=PATIENCE)
    m = q.metrics()
    assert m.lost == 5
    assert recorder.succeeded == ["gate"]  # started before close: never abandoned
    # final also counts the jobs cancel() called off; improved has no cancel.
    assert m.submitted == m.completed + m.failed + m.lost + getattr(m, "cancelled", 0)


def test_close_leaves_no_thread_of_the_queue_running(tier: Tier) -> None:
    before = set(threading.enumerate())
    q = tier.queue(Recorder(), workers=3)
    for _ in range(10):
        q.enqueue(tier.Job())
    assert q.join(timeout=PATIENCE)
    q.close()
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert left == []
