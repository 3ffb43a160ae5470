"""Which job a free worker takes next: priority, and the starvation it can cause."""

from __future__ import annotations

import pytest

from tests.support import PATIENCE, Recorder, Tier

DEFAULT_FAIRNESS = 10


@pytest.mark.lacks(naive="naive: one FIFO; a HIGH job waits behind every job queued before it")
def test_a_free_worker_takes_the_oldest_job_of_the_highest_lane(tier: Tier) -> None:
    recorder = Recorder(hold=lambda job: job.id == "gate")
    q = tier.queue(recorder, workers=1)
    q.enqueue(tier.Job(id="gate"))
    recorder.wait_started(1)
    low, medium, high = tier.Priority.LOW, tier.Priority.MEDIUM, tier.Priority.HIGH
    for i in range(3):  # interleaved, lowest first, so FIFO order is the wrong answer
        q.enqueue(tier.Job(id=f"low-{i}", priority=low))
        q.enqueue(tier.Job(id=f"medium-{i}", priority=medium))
        q.enqueue(tier.Job(id=f"high-{i}", priority=high))
    recorder.release()
    assert q.join(timeout=PATIENCE)
    expected = [f"{lane}-{i}" for lane in ("high", "medium", "low") for i in range(3)]
    assert recorder.order[1:] == expected


@pytest.mark.lacks(
    improved="improved: strict priority; while HIGH jobs keep coming, a LOW job waits for ever"
)
def test_a_low_job_starts_within_the_fairness_window_of_a_high_flood(tier: Tier) -> None:
    recorder = Recorder(hold=lambda job: job.id == "gate")
    q = tier.queue(recorder, workers=1)
    q.enqueue(tier.Job(id="gate", priority=tier.Priority.HIGH))
    recorder.wait_started(1)
    q.enqueue(tier.Job(id="low", priority=tier.Priority.LOW))
    for i in range(5 * DEFAULT_FAIRNESS):
        q.enqueue(tier.Job(id=f"high-{i}", priority=tier.Priority.HIGH))
    recorder.release()
    assert q.join(timeout=PATIENCE)
    picks_before_low = recorder.order.index("low") - 1  # the gate job does not count
    assert picks_before_low <= DEFAULT_FAIRNESS
