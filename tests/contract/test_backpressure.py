"""A bounded lane pushes back on a producer that is faster than the workers."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.support import PATIENCE, Recorder, Tier

NO_BOUND = "naive: an unbounded queue never pushes back; memory grows instead"


def _full_lane(tier: Tier, size: int) -> tuple[Any, Recorder]:
    """One worker held on a gate job, and a MEDIUM lane holding ``size`` jobs."""
    recorder = Recorder(hold=lambda job: job.id == "gate")
    q = tier.queue(recorder, workers=1, queue_size=size)
    q.enqueue(tier.Job(id="gate"))
    recorder.wait_started(1)
    for i in range(size):
        q.enqueue(tier.Job(id=f"queued-{i}"), timeout=0)
    return q, recorder


@pytest.mark.lacks(naive=NO_BOUND)
def test_a_full_lane_raises_queue_full_at_timeout_zero(tier: Tier) -> None:
    q, _ = _full_lane(tier, 3)
    with pytest.raises(tier.QueueFull):
        q.enqueue(tier.Job(id="one-too-many"), timeout=0)


@pytest.mark.lacks(naive=NO_BOUND)
def test_enqueue_waits_out_its_timeout_before_raising_queue_full(tier: Tier) -> None:
    q, _ = _full_lane(tier, 2)
    begun = time.monotonic()
    with pytest.raises(tier.QueueFull):
        q.enqueue(tier.Job(), timeout=0.1)
    assert time.monotonic() - begun >= 0.1


@pytest.mark.lacks(naive=NO_BOUND)
def test_a_blocked_producer_wakes_as_soon_as_room_appears(tier: Tier) -> None:
    q, recorder = _full_lane(tier, 2)
    accepted = threading.Event()

    def produce() -> None:
        q.enqueue(tier.Job(id="patient"))
        accepted.set()

    producer = threading.Thread(target=produce)
    producer.start()
    assert not accepted.wait(0.2), "enqueue returned although the lane was full"
    recorder.release()  # the worker takes the queued jobs: room appears
    assert accepted.wait(PATIENCE)
    producer.join()
    assert q.join(timeout=PATIENCE)
    assert "patient" in recorder.order


@pytest.mark.lacks(naive=NO_BOUND)
def test_each_priority_lane_has_its_own_bound(tier: Tier) -> None:
    q, _ = _full_lane(tier, 2)
    q.enqueue(tier.Job(priority=tier.Priority.HIGH), timeout=0)
    with pytest.raises(tier.QueueFull):
        q.enqueue(tier.Job(), timeout=0)


@pytest.mark.lacks(naive=NO_BOUND)
def test_close_wakes_a_blocked_producer_with_queue_closed(tier: Tier) -> None:
    q, recorder = _full_lane(tier, 1)
    outcome: list[BaseException | None] = []
    started = threading.Event()

    def produce() -> None:
        started.set()
        try:
            q.enqueue(tier.Job(id="late"))
            outcome.append(None)
        except Exception as exc:
            outcome.append(exc)

    producer = threading.Thread(target=produce)
    producer.start()
    started.wait()
    closer = threading.Thread(target=q.close)
    closer.start()
    producer.join(PATIENCE)
    recorder.release()
    closer.join(PATIENCE)
    assert len(outcome) == 1 and isinstance(outcome[0], tier.QueueClosed)
