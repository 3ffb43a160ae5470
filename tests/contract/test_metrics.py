"""Metrics: a consistent account of every accepted job."""

from __future__ import annotations

import pytest

from tests.support import PATIENCE, Recorder, Tier

NO_METRICS = "naive: no metrics; nothing tells you what ran, failed or waits"


@pytest.mark.lacks(naive=NO_METRICS)
def test_metrics_account_for_every_accepted_job(tier: Tier) -> None:
    recorder = Recorder(fail=lambda job, n: (job.id.endswith("7") and n == 1) or "x" in job.id)
    q = tier.queue(recorder, workers=4, max_retries=1, backoff=0.001, max_backoff=0.01)
    for i in range(200):
        q.enqueue(tier.Job(id=f"{i:03d}" + ("x" if i % 10 == 3 else "")))
    assert q.join(timeout=PATIENCE)
    assert hasattr(q, "metrics")
    m = q.metrics()
    assert m.submitted == 200
    assert m.failed == 20  # the "x" jobs used both attempts
    assert m.completed == 180
    assert m.retried == 20 + 20  # every "x" job and every "7" job retried once
    assert m.started == m.completed + m.failed + m.retried
    # final also counts the jobs cancel() called off; improved has no cancel.
    assert m.submitted == m.completed + m.failed + m.lost + getattr(m, "cancelled", 0)
    assert (m.queued, m.in_flight) == (0, 0)


@pytest.mark.lacks(naive=NO_METRICS)
def test_metrics_show_what_is_queued_and_in_flight(tier: Tier) -> None:
    recorder = Recorder(hold=lambda job: job.id == "gate")
    q = tier.queue(recorder, workers=1)
    q.enqueue(tier.Job(id="gate"))
    recorder.wait_started(1)
    q.enqueue(tier.Job())
    q.enqueue(tier.Job(priority=tier.Priority.LOW))
    assert hasattr(q, "metrics")
    m = q.metrics()
    assert (m.submitted, m.started, m.queued, m.in_flight) == (3, 1, 2, 1)
