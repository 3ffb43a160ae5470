"""Jobs in time: a job that waits for its run_at, and a job called off before it runs."""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.support import PATIENCE, Recorder, Tier

NO_TIME = {
    "naive": "naive: a job runs as soon as a worker is free; it cannot wait for a time,"
    " and once queued it cannot be called off",
    "improved": "improved: no run_at and no cancel; a job for later needs a timer of your"
    " own outside the queue, and a queued job runs whatever happened since",
}
LATER = timedelta(hours=1)  # far enough that no test sees it fall due
# The finer points, on the tiers that have run_at and cancel: the matrix says once,
# in the tests above them, that naive and improved have neither.
ONLY_FINAL = pytest.mark.tiers("final", "final-pg")


def scheduling(tier: Tier, q: Any) -> None:
    """The tier has run_at and cancel: an assertion, so that a tier without them fails
    the test as a lesson rather than crash it."""
    assert "run_at" in {f.name for f in dataclasses.fields(tier.Job)}
    assert hasattr(q, "cancel")


def in_(delta: timedelta) -> datetime:
    return datetime.now(UTC) + delta


def counted(q: Any, done: Callable[[Any], bool], what: str) -> Any:
    """``q.metrics()`` once ``done`` holds of them. A PostgreSQL handle counts a job it
    ran after the commit that settles it, and ``join()``, which asks the database,
    may return before that count: the status is settled, the counter a moment later."""
    deadline = time.monotonic() + PATIENCE
    while not done(m := q.metrics()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}: {m}"
        time.sleep(0.005)
    return m


class Starts(Recorder):
    """A recorder that notes the wall-clock time each attempt starts."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.started_at: dict[str, float] = {}

    def __call__(self, job: Any) -> None:
        self.started_at.setdefault(job.id, time.time())
        super().__call__(job)


@pytest.mark.lacks(**NO_TIME)
def test_a_scheduled_job_never_starts_before_its_run_at(tier: Tier) -> None:
    recorder = Starts()
    q = tier.queue(recorder, workers=2)
    scheduling(tier, q)
    run_at = in_(timedelta(seconds=0.3))
    q.enqueue(tier.Job(id="later", run_at=run_at))
    q.enqueue(tier.Job(id="now"))
    assert q.join(timeout=PATIENCE)
    # Not their order: a machine stalled for the 0.3 s could let "later" fall due first.
    assert sorted(recorder.order) == ["later", "now"]
    assert recorder.started_at["later"] >= run_at.timestamp()
    info = q.info("later")
    assert info.run_at == pytest.approx(run_at.timestamp(), abs=1e-3)
    assert info.status is tier.module.Status.COMPLETED


@pytest.mark.lacks(**NO_TIME)
def test_a_scheduled_job_holds_no_lane_room_and_no_worker(tier: Tier) -> None:
    recorder = Recorder()
    q = tier.queue(recorder, workers=1, queue_size=1)
    scheduling(tier, q)
    for i in range(5):  # more than the lane holds, and never QueueFull
        q.enqueue(tier.Job(id=f"later-{i}", run_at=in_(LATER)), timeout=0)
    assert q.status("later-0") is tier.module.Status.SCHEDULED
    q.enqueue(tier.Job(id="now"), timeout=0)
    recorder.wait_until(lambda r: r.succeeded == ["now"], "the job due now to run")
    # The handler has returned; its settle (a commit, on PostgreSQL) may still be on its way.
    deadline = time.monotonic() + PATIENCE
    while q.status("now") is not tier.module.Status.COMPLETED:
        assert time.monotonic() < deadline, "the job due now never settled"
        time.sleep(0.005)
    m = q.metrics()
    assert (m.scheduled, m.queued, m.in_flight) == (5, 0, 0)
    assert m.by_priority[tier.Priority.MEDIUM].scheduled == 5


@ONLY_FINAL
def test_a_job_whose_run_at_has_passed_is_queued_at_once(tier: Tier) -> None:
    recorder = Recorder()
    q = tier.queue(recorder)
    scheduling(tier, q)
    q.enqueue(tier.Job(id="late", run_at=in_(-LATER)))
    assert q.join(timeout=PATIENCE)
    assert recorder.succeeded == ["late"]


@pytest.mark.lacks(**NO_TIME)
def test_cancel_calls_off_a_job_that_has_not_started_and_only_such_a_job(tier: Tier) -> None:
    recorder = Recorder(hold=lambda job: job.id == "gate")
    q = tier.queue(recorder, workers=1)
    scheduling(tier, q)
    status = tier.module.Status
    q.enqueue(tier.Job(id="gate"))
    recorder.wait_started(1)
    q.enqueue(tier.Job(id="queued"))
    q.enqueue(tier.Job(id="scheduled", run_at=in_(LATER)))
    assert q.cancel("queued") is True
    assert q.cancel("scheduled") is True
    assert q.cancel("gate") is False  # running
    assert q.cancel("queued") is False  # settled: cancelled already
    with pytest.raises(KeyError):
        q.cancel("nobody")
    assert q.status("queued") is status.CANCELLED
    assert q.status("scheduled") is status.CANCELLED
    recorder.release()
    assert q.join(timeout=PATIENCE)  # a cancelled job counts as settled
    assert q.cancel("gate") is False  # completed
    assert recorder.order == ["gate"]
    m = counted(q, lambda m: m.completed == 1, "the gate's completion")
    assert (m.cancelled, m.scheduled, m.completed, m.submitted) == (2, 0, 1, 3)
    assert m.submitted == m.completed + m.failed + m.lost + m.cancelled


@ONLY_FINAL
def test_cancel_calls_off_a_job_waiting_out_a_backoff(tier: Tier) -> None:
    recorder = Recorder(fail=lambda job, n: True)
    q = tier.queue(recorder, max_retries=3, backoff=60.0, max_backoff=60.0)
    scheduling(tier, q)
    q.enqueue(tier.Job(id="failing"))
    recorder.wait_started(1)
    # The attempt has started; its failure is settled a moment later, after the
    # handler has raised: nothing to wait on but the status itself.
    deadline = time.monotonic() + PATIENCE
    while q.status("failing") is not tier.module.Status.RETRYING:
        assert time.monotonic() < deadline, "the job never went to its backoff"
        time.sleep(0.001)
    assert q.cancel("failing") is True
    assert q.join(timeout=PATIENCE)
    assert recorder.attempts["failing"] == 1
    assert q.metrics().cancelled == 1


@ONLY_FINAL
def test_a_cancelled_jobs_idempotency_key_stays_used(tier: Tier) -> None:
    q = tier.queue(Recorder())
    scheduling(tier, q)
    q.enqueue(tier.Job(id="first", idempotency_key="k", run_at=in_(LATER)))
    assert q.cancel("first")
    with pytest.raises(tier.module.DuplicateJob) as refused:
        q.enqueue(tier.Job(id="second", idempotency_key="k"))
    assert refused.value.job_id == "first"


@ONLY_FINAL
def test_a_run_at_without_a_time_zone_or_not_a_datetime_is_refused_whole(tier: Tier) -> None:
    q = tier.queue(Recorder())
    scheduling(tier, q)
    naive = datetime(2030, 1, 1, 9, 0)
    with pytest.raises(ValueError, match="2030-01-01T09:00:00"):
        q.enqueue(tier.Job(run_at=naive))
    with pytest.raises(TypeError, match="str"):
        q.enqueue(tier.Job(run_at="2030-01-01T09:00:00+00:00"))
    good = [tier.Job(id=f"ok-{i}", run_at=in_(LATER)) for i in range(3)]
    with pytest.raises(ValueError, match="naive"):
        q.enqueue_many([*good[:2], tier.Job(run_at=naive), good[2]])
    assert q.metrics().submitted == 0  # checked whole before any was accepted
    assert q.status("ok-0") is None


@pytest.mark.lacks(**NO_TIME)
def test_cancel_and_a_worker_taking_the_job_exactly_one_wins(tier: Tier) -> None:
    runs, cancels = race_cancel_against_a_worker(tier, rounds=200)
    assert runs + cancels == 200


def race_cancel_against_a_worker(tier: Tier, rounds: int, **options: Any) -> tuple[int, int]:
    """``rounds`` times: a worker finishes a gate job and takes the next job while
    another thread cancels that job, the two let go by one barrier. Asserts that each
    job ran or was cancelled, never both, never neither; returns (runs, cancels)."""
    gates = {f"gate-{i}": threading.Event() for i in range(rounds)}
    recorder = Recorder(hold=lambda job: False)

    def handler(job: Any) -> None:
        gate = gates.get(job.id)
        if gate is not None:
            gate.wait(PATIENCE)
        recorder(job)

    q = tier.queue(handler, workers=1, **options)
    scheduling(tier, q)
    status = tier.module.Status
    barrier = threading.Barrier(2)
    cancelled: dict[str, bool] = {}
    runs = cancels = 0
    for i in range(rounds):
        target = f"target-{i}"
        q.enqueue(tier.Job(id=f"gate-{i}"))
        q.enqueue(tier.Job(id=target))
        opener = threading.Thread(target=lambda g=gates[f"gate-{i}"]: (barrier.wait(), g.set()))
        opener.start()
        barrier.wait()
        # Not a wait for anything: a jitter, so that either side may come first. The
        # cancel, awake already, always won without one; after any sleep at all (60
        # microseconds at least), the worker mostly does. So half the rounds sleep.
        if i % 2:
            time.sleep(random.uniform(0, 0.0002))
        cancelled[target] = q.cancel(target)
        opener.join()
        gate = f"gate-{i}"
        recorder.wait_until(lambda r: gate in r.succeeded, f"{gate} to end")  # noqa: B023
        assert q.join(timeout=PATIENCE)
        ran = recorder.attempts[target]
        assert ran + cancelled[target] == 1, (target, ran, cancelled[target])
        expected = status.CANCELLED if cancelled[target] else status.COMPLETED
        assert q.status(target) is expected
        runs, cancels = runs + ran, cancels + cancelled[target]
    m = counted(q, lambda m: m.completed >= rounds + runs, f"{rounds + runs} completions")
    assert (m.cancelled, m.completed) == (cancels, rounds + runs)
    return runs, cancels
