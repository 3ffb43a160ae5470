"""Every accepted job runs, once, when nothing fails; join says when they have."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any

import pytest

from tests.support import PATIENCE, Boom, Recorder, Tier


def test_every_accepted_job_runs_exactly_once(tier: Tier) -> None:
    recorder = Recorder()
    q = tier.queue(recorder, workers=4)
    producers, per_producer = 4, 500
    ids = [[f"p{p}-{i}" for i in range(per_producer)] for p in range(producers)]

    def produce(batch: list[str]) -> None:
        for job_id in batch:
            q.enqueue(tier.Job(id=job_id))

    threads = [threading.Thread(target=produce, args=(batch,)) for batch in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert q.join(timeout=PATIENCE)
    expected = Counter(job_id for batch in ids for job_id in batch)
    assert recorder.attempts == expected


def test_join_on_an_idle_queue_returns_true_at_once(tier: Tier) -> None:
    q = tier.queue(Recorder())
    assert q.join(timeout=0) is True


def test_join_returns_false_while_a_job_is_unsettled(tier: Tier) -> None:
    recorder = Recorder(hold=lambda job: True)
    q = tier.queue(recorder, workers=1)
    q.enqueue(tier.Job())
    recorder.wait_started(1)
    assert q.join(timeout=0.05) is False
    recorder.release()
    assert q.join(timeout=PATIENCE) is True


def test_jobs_of_one_priority_run_in_the_order_they_were_accepted(tier: Tier) -> None:
    recorder = Recorder(hold=lambda job: job.id == "gate")
    q = tier.queue(recorder, workers=1)
    q.enqueue(tier.Job(id="gate"))
    recorder.wait_started(1)
    ids = [f"job-{i:02d}" for i in range(20)]
    for job_id in ids:
        q.enqueue(tier.Job(id=job_id))
    recorder.release()
    assert q.join(timeout=PATIENCE)
    assert recorder.order == ["gate", *ids]


def test_a_failing_handler_does_not_kill_the_workers(tier: Tier) -> None:
    recorder = Recorder(fail=lambda job, n: job.id.startswith("doomed"))
    q = tier.queue(recorder, workers=1, max_retries=0)
    for i in range(20):
        q.enqueue(tier.Job(id=f"doomed-{i}"))
    q.enqueue(tier.Job(id="after"))
    assert q.join(timeout=PATIENCE)
    # One worker took twenty failures and was still there for the next job.
    assert recorder.succeeded == ["after"]


def test_a_handler_raising_system_exit_fails_its_job_and_keeps_its_worker(tier: Tier) -> None:
    ran: list[str] = []

    def handler(job: Any) -> None:
        ran.append(job.id)
        if job.id == "exits":
            raise SystemExit(1)  # what sys.exit() in a handler does

    q = tier.queue(handler, workers=1, max_retries=0)
    q.enqueue(tier.Job(id="exits"))
    q.enqueue(tier.Job(id="after"))
    assert q.join(timeout=PATIENCE)
    assert ran == ["exits", "after"]


def test_a_handler_failure_is_logged_with_its_traceback(
    tier: Tier, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=tier.name)
    q = tier.queue(Recorder(fail=lambda job, n: True), workers=1, max_retries=0)
    q.enqueue(tier.Job(id="logged"))
    assert q.join(timeout=PATIENCE)
    records = [r for r in caplog.records if "logged" in r.getMessage()]
    assert len(records) == 1
    assert records[0].exc_info is not None and records[0].exc_info[0] is Boom
