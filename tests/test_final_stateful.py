"""The final tier on disk against a model of it: hypothesis picks the steps.

Each example runs a queue on a file of its own, and hypothesis chooses a sequence
of steps: enqueue (with idempotency keys, some reused, and ids, some reused),
``enqueue_many``, ``join``, a graceful close and a reopen, an early close
(``close(timeout=0)`` while every worker is held in a handler) and a reopen,
replays from the dead letters, and cancels (of a job waiting behind busy workers,
which wins, and of a settled job, which does not). The model knows what each job's
handler will do,
so it knows how every job must end and after how many attempts; after every step
it checks that each acknowledged job is in a state it allows, and that no job has
used more attempts than its budget.

Deterministic by construction: a job's fate depends on its attempt number only
(``current_attempt().number``, which the queue keeps across restarts), steps wait
on ``join()`` and events, never on time, and an early close holds every worker,
so that no other attempt is under way while it happens.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import final.job_queue
from final import DuplicateJob, Job, JobQueue, Priority, Status
from final.job_queue import backoff_delay, current_attempt
from tests.support import PATIENCE, Boom

pytestmark = pytest.mark.tiers("final")

MAX_RETRIES = 2  # the queue's; a job may carry its own
WORKERS = 2
OPTIONS: dict[str, Any] = {
    "workers": WORKERS,
    "max_retries": MAX_RETRIES,
    "backoff": 0.001,
    "max_backoff": 0.005,
}
ALWAYS = 1_000  # a plan: every attempt fails
KEYS = ("k0", "k1", "k2")
UNSETTLED = {Status.QUEUED, Status.PROCESSING, Status.RETRYING}

plans = st.sampled_from([0, 1, 2, ALWAYS])  # attempts that fail before one succeeds
own_retries = st.sampled_from([None, 0, 1, 2])  # Job.max_retries
keys = st.none() | st.sampled_from(KEYS)
priorities = st.sampled_from(list(Priority))


@dataclass
class Expected:
    """What the model knows of one acknowledged job."""

    fails: int  # attempts that fail before one succeeds, in its current life
    budget: int  # max_retries + 1
    settled: bool = False  # known settled: a join or a graceful close since it was accepted
    calls_before: int = 0  # handler calls in its earlier lives (before replays)
    cancelled_after: int | None = None  # attempts it had when a cancel won

    @property
    def dies(self) -> bool:
        return self.cancelled_after is None and self.fails >= self.budget

    @property
    def end(self) -> Status:
        if self.cancelled_after is not None:
            return Status.CANCELLED
        return Status.FAILED if self.dies else Status.COMPLETED

    @property
    def attempts(self) -> int:
        if self.cancelled_after is not None:
            return self.cancelled_after
        return self.budget if self.dies else self.fails + 1


class Handler:
    """Fails each attempt as the model planned, and holds chosen jobs at a gate."""

    def __init__(self) -> None:
        self.fails: dict[str, int] = {}
        self.calls: Counter[str] = Counter()
        self._cond = threading.Condition()
        self._holding: set[str] = set()
        self._held = 0
        self._gate = threading.Event()

    def __call__(self, job: Job) -> None:
        with self._cond:
            self.calls[job.id] += 1
            held = job.id in self._holding
            if held:
                self._holding.discard(job.id)  # its next attempt, if any, runs freely
                self._held += 1
                self._cond.notify_all()
        if held:
            self._gate.wait()
        if current_attempt().number <= self.fails[job.id]:
            raise Boom(f"{job.id} attempt {current_attempt().number}")

    def hold(self, ids: list[str]) -> None:
        with self._cond:
            self._holding = set(ids)
            self._held = 0
            self._gate.clear()

    def wait_held(self, n: int) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._held >= n, PATIENCE):
                raise AssertionError(f"gave up after {PATIENCE}s waiting for {n} held attempts")

    def release(self) -> None:
        self._gate.set()


class FinalOnDisk(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # The retry jitter draws from the random module on worker threads, and
        # hypothesis, seeing that module's state move while it draws a step, would
        # blame the strategies. The jitter gets a generator of its own instead.
        final.job_queue.backoff_delay = partial(backoff_delay, rand=random.Random(0).random)
        self.dir = tempfile.mkdtemp(prefix="final-stateful-")
        self.path = str(Path(self.dir) / "jobs.db")
        self.handler = Handler()
        self.queue = JobQueue(self.handler, path=self.path, **OPTIONS)
        self.jobs: dict[str, Expected] = {}  # every acknowledged job
        self.keys: dict[str, str] = {}  # idempotency key -> the first job's id
        self.ids = 0

    def teardown(self) -> None:
        self.handler.release()
        try:
            self.queue.close()  # releases the lock on its file
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            final.job_queue.backoff_delay = backoff_delay

    # -- helpers ---------------------------------------------------------------------------

    def fresh_id(self) -> str:
        self.ids += 1
        return f"job-{self.ids}"

    def duplicate_of(self, job: Job) -> set[str]:
        """The ids DuplicateJob may carry for this job; empty if it is accepted.

        A job whose key and id were both used, by two different jobs, may be
        refused for either: the queue checks the key first while it remembers the
        key, and the id first after a restart (it keeps the ids it recovered in
        memory, and leaves their keys to the disk's constraint).
        """
        return self.refusal(job, self.keys, set(self.jobs))

    @staticmethod
    def refusal(job: Job, keys: dict[str, str], ids: set[str]) -> set[str]:
        refused = set()
        if job.idempotency_key is not None and job.idempotency_key in keys:
            refused.add(keys[job.idempotency_key])
        if job.id in ids:
            refused.add(job.id)
        return refused

    def make_job(self, data: st.DataObject, job_id: str, keyed: bool = True) -> tuple[Job, int]:
        job = Job(
            id=job_id,
            priority=data.draw(priorities),
            idempotency_key=data.draw(keys) if keyed else None,
            max_retries=data.draw(own_retries),
        )
        return job, data.draw(plans)

    def accepted(self, job: Job, fails: int) -> None:
        retries = MAX_RETRIES if job.max_retries is None else job.max_retries
        self.jobs[job.id] = Expected(fails, retries + 1)
        if job.idempotency_key is not None:
            self.keys[job.idempotency_key] = job.id

    def plan(self, job: Job, fails: int) -> None:
        """Tell the handler, before enqueue: a worker may take the job at once."""
        if job.id not in self.jobs:  # never overwrite the plan of a job already accepted
            self.handler.fails[job.id] = fails

    def reopen(self) -> None:
        self.queue = JobQueue(self.handler, path=self.path, **OPTIONS)

    def all_settled(self) -> None:
        for expected in self.jobs.values():
            expected.settled = True

    def check_settled(self, q: JobQueue) -> None:
        """The queue is idle: every job ended as planned, after the planned attempts."""
        for job_id, expected in self.jobs.items():
            info = q.info(job_id)
            assert info is not None, job_id
            assert (info.status, info.attempts) == (expected.end, expected.attempts), job_id
            calls = self.handler.calls[job_id]
            assert calls == expected.calls_before + expected.attempts, job_id
        dead = [job.id for job in q.dead_letters()]
        assert len(dead) == len(set(dead)), dead  # each dead job once
        assert set(dead) == {i for i, e in self.jobs.items() if e.dies}

    # -- rules -------------------------------------------------------------------------------

    @rule(data=st.data())
    def enqueue(self, data: st.DataObject) -> None:
        job, fails = self.make_job(data, self.fresh_id())
        self.plan(job, fails)
        refused = self.duplicate_of(job)
        if not refused:
            self.queue.enqueue(job)
            self.accepted(job, fails)
        else:
            with pytest.raises(DuplicateJob) as dup:
                self.queue.enqueue(job)
            assert dup.value.job_id in refused

    @precondition(lambda self: bool(self.jobs))
    @rule(data=st.data())
    def enqueue_an_id_again(self, data: st.DataObject) -> None:
        job, _ = self.make_job(data, data.draw(st.sampled_from(sorted(self.jobs))))
        with pytest.raises(DuplicateJob) as dup:
            self.queue.enqueue(job)
        assert dup.value.job_id in self.duplicate_of(job)

    @rule(data=st.data(), size=st.integers(1, 3))
    def enqueue_many(self, data: st.DataObject, size: int) -> None:
        batch: list[tuple[Job, int]] = []
        for _ in range(size):
            reuse = bool(self.jobs) and data.draw(st.booleans())
            job_id = data.draw(st.sampled_from(sorted(self.jobs))) if reuse else self.fresh_id()
            batch.append(self.make_job(data, job_id))
        # The model's answer: the jobs up to the first duplicate (within the batch too).
        keys, ids = dict(self.keys), set(self.jobs)
        taken, refused = 0, set[str]()
        for job, _ in batch:
            refused = self.refusal(job, keys, ids)
            if refused:
                break
            taken += 1
            ids.add(job.id)
            if job.idempotency_key is not None:
                keys[job.idempotency_key] = job.id
        for job, fails in batch:
            self.plan(job, fails)
        if not refused:
            self.queue.enqueue_many([job for job, _ in batch])
        else:
            with pytest.raises(DuplicateJob) as dup:
                self.queue.enqueue_many([job for job, _ in batch])
            assert dup.value.accepted == taken
            assert dup.value.job_id in refused
        for job, fails in batch[:taken]:
            self.accepted(job, fails)

    @rule()
    def join(self) -> None:
        assert self.queue.join(timeout=PATIENCE)
        self.all_settled()
        self.check_settled(self.queue)
        m = self.queue.metrics()
        assert m.submitted == m.completed + m.failed + m.lost + m.cancelled, m
        assert (m.lost, m.queued, m.retrying, m.in_flight) == (0, 0, 0, 0), m

    @rule()
    def close_and_reopen(self) -> None:
        self.queue.close()  # graceful: runs everything accepted, retries included
        self.all_settled()
        self.reopen()
        self.check_settled(self.queue)  # now from disk: statuses, attempts, dead letters

    def hold_every_worker(self, data: st.DataObject) -> None:
        """Enqueue one fresh job per worker and hold each in its handler."""
        held = []
        for _ in range(WORKERS):
            job, fails = self.make_job(data, self.fresh_id(), keyed=False)
            self.plan(job, fails)
            held.append((job, fails))
        self.handler.hold([job.id for job, _ in held])
        for job, fails in held:
            self.queue.enqueue(job)
            self.accepted(job, fails)
        self.handler.wait_held(WORKERS)

    @rule(data=st.data())
    def close_early_and_reopen(self, data: st.DataObject) -> None:
        # Every worker held in a handler: nothing else runs while the close gives up.
        self.hold_every_worker(data)
        self.queue.close(timeout=0)  # leaves the queued and retrying jobs on disk
        self.handler.release()  # the held attempts end after the queue has stopped
        self.queue.close()  # returns once they have, and the store is closed
        self.reopen()  # the jobs left on disk run here

    @precondition(lambda self: any(e.settled and e.dies for e in self.jobs.values()))
    @rule(data=st.data())
    def replay_a_dead_job(self, data: st.DataObject) -> None:
        dead = sorted(i for i, e in self.jobs.items() if e.settled and e.dies)
        job_id = data.draw(st.sampled_from(dead))
        expected = self.jobs[job_id]
        fails = data.draw(plans)  # the handler may have been fixed meanwhile
        self.handler.fails[job_id] = fails
        self.queue.retry_dead(job_id)
        expected.calls_before += expected.attempts
        expected.fails, expected.settled = fails, False

    @rule(data=st.data())
    def cancel_a_job_waiting_behind_busy_workers(self, data: st.DataObject) -> None:
        # Every worker held in a handler, as for an early close: the job waits in its
        # lane, so the cancel wins, whatever the timing (the model stays deterministic).
        self.hold_every_worker(data)
        job, fails = self.make_job(data, self.fresh_id(), keyed=False)
        self.plan(job, fails)
        self.queue.enqueue(job)
        self.accepted(job, fails)
        assert self.queue.cancel(job.id)
        self.jobs[job.id].cancelled_after = 0
        self.handler.release()

    @precondition(lambda self: any(e.settled for e in self.jobs.values()))
    @rule(data=st.data())
    def cancel_a_settled_job(self, data: st.DataObject) -> None:
        settled = sorted(i for i, e in self.jobs.items() if e.settled)
        job_id = data.draw(st.sampled_from(settled))
        status = self.queue.status(job_id)
        assert self.queue.cancel(job_id) is False
        assert self.queue.status(job_id) is status

    @rule(data=st.data())
    def replay_a_job_that_is_not_dead(self, data: st.DataObject) -> None:
        # A job planned to succeed is never dead; one planned to die may not be yet.
        alive = sorted(i for i, e in self.jobs.items() if not e.dies)
        job_id = data.draw(st.sampled_from([*alive, "never-enqueued"]))
        with pytest.raises(KeyError):
            self.queue.retry_dead(job_id)

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def every_job_is_where_the_model_allows_within_its_budget(self) -> None:
        for job_id, expected in self.jobs.items():
            info = self.queue.info(job_id)
            assert info is not None, f"{job_id} was acknowledged and is unknown"
            allowed = {expected.end} if expected.settled else {expected.end, *UNSETTLED}
            assert info.status in allowed, (job_id, info.status, expected)
            assert info.attempts <= expected.budget, (job_id, info.attempts, expected)


# About 8 s here. No shrinking: every example opens files and starts threads, and
# shrinking a failure took minutes, past the suite's timeout; a failing run of at
# most 20 steps is short enough to read as it is (and the database replays it first).
FinalOnDisk.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=20,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
TestFinalOnDisk = FinalOnDisk.TestCase


# -- what the machine found, as a plain test -----------------------------------------------


def test_a_last_attempt_that_fails_after_close_gave_up_is_not_run_again(tmp_path: Path) -> None:
    # The job's one attempt (max_retries=0) is running when close(timeout=0) gives
    # up waiting, and fails after it: the budget is spent, so the job is dead, on
    # disk too, and a restart must not run it a second time.
    path = str(tmp_path / "jobs.db")
    handler = Handler()
    handler.fails["once"] = ALWAYS
    handler.hold(["once"])
    q = JobQueue(handler, path=path, **OPTIONS)
    try:
        q.enqueue(Job(id="once", max_retries=0))
        handler.wait_held(1)
        q.close(timeout=0)
        handler.release()
    finally:
        q.close()
    q2 = JobQueue(handler, path=path, **OPTIONS)
    try:
        assert q2.join(timeout=PATIENCE)
        info = q2.info("once")
        assert info is not None
        assert (info.status, info.attempts, handler.calls["once"]) == (Status.FAILED, 1, 1)
        assert [job.id for job in q2.dead_letters()] == ["once"]
    finally:
        q2.close()
