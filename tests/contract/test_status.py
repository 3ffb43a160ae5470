"""Following one job by its id, and what happens to a job that fails for good."""

from __future__ import annotations

import pytest

from tests.support import PATIENCE, Recorder, Tier

NO_STATUS = "{}: no status by id; an accepted job can be counted but never found"
NO_DLQ = "{}: a job that fails for good is gone; there is no dead letter queue to replay it from"


@pytest.mark.lacks(naive=NO_STATUS.format("naive"), improved=NO_STATUS.format("improved"))
def test_status_follows_a_job_from_queued_to_completed(tier: Tier) -> None:
    recorder = Recorder(hold=lambda job: job.id == "gate")
    q = tier.queue(recorder, workers=1)
    assert hasattr(q, "status")
    status = tier.module.Status
    q.enqueue(tier.Job(id="gate"))
    q.enqueue(tier.Job(id="waiting"))
    recorder.wait_started(1)
    assert q.status("unknown") is None
    assert q.status("gate") is status.PROCESSING
    assert q.status("waiting") is status.QUEUED
    recorder.release()
    assert q.join(timeout=PATIENCE)
    assert q.status("waiting") is status.COMPLETED


@pytest.mark.lacks(naive=NO_DLQ.format("naive"), improved=NO_DLQ.format("improved"))
def test_a_job_that_fails_for_good_can_be_replayed_from_the_dead_letters(tier: Tier) -> None:
    recorder = Recorder(fail=lambda job, n: n == 1)
    q = tier.queue(recorder, max_retries=0)
    q.enqueue(tier.Job(id="dead"))
    assert q.join(timeout=PATIENCE)
    assert hasattr(q, "dead_letters")
    assert [job.id for job in q.dead_letters()] == ["dead"]
    q.retry_dead("dead")
    assert q.join(timeout=PATIENCE)
    assert recorder.succeeded == ["dead"]
    assert q.dead_letters() == []
