"""What happens to a job whose attempt fails or hangs."""

from __future__ import annotations

import pytest

from tests.support import PATIENCE, Recorder, Tier

NO_RETRY = "naive: a failed job is logged and gone; nothing retries it"
FAST = {"backoff": 0.001, "max_backoff": 0.01}


@pytest.mark.lacks(naive=NO_RETRY)
def test_a_failed_job_is_retried_until_it_succeeds(tier: Tier) -> None:
    recorder = Recorder(fail=lambda job, n: n <= 2)
    q = tier.queue(recorder, max_retries=3, **FAST)
    q.enqueue(tier.Job(id="flaky"))
    assert q.join(timeout=PATIENCE)
    assert recorder.attempts["flaky"] == 3
    assert recorder.succeeded == ["flaky"]


@pytest.mark.lacks(naive=NO_RETRY)
def test_a_job_that_always_fails_runs_max_retries_plus_one_times(tier: Tier) -> None:
    recorder = Recorder(fail=lambda job, n: True)
    q = tier.queue(recorder, max_retries=2, **FAST)
    q.enqueue(tier.Job(id="doomed"))
    assert q.join(timeout=PATIENCE)
    assert recorder.attempts["doomed"] == 3


@pytest.mark.lacks(naive="naive: no timeout; a handler that hangs holds its worker for ever")
def test_a_hung_attempt_times_out_and_its_worker_slot_comes_back(tier: Tier) -> None:
    recorder = Recorder(hold=lambda job: job.id == "hangs")
    q = tier.queue(recorder, workers=1, job_timeout=0.2, max_retries=0)
    q.enqueue(tier.Job(id="hangs"))
    q.enqueue(tier.Job(id="next"))
    # One worker, held by a job that never returns: only a timeout frees the slot.
    recorder.wait_until(lambda r: "next" in r.succeeded, "the job behind the hung one")
