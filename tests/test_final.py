"""What the final tier adds: fairness, status, dead letters, idempotency, rate, memory."""

from __future__ import annotations

import gc
import itertools
import logging
import os
import resource
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import final
from final import DuplicateJob, Job, JobQueue, Priority, QueueFull, Status
from final.fairness import FairPicker
from final.rate_limit import TokenBucket
from tests.support import PATIENCE, Recorder

pytestmark = pytest.mark.tiers("final")

FAST = {"backoff": 0.001, "max_backoff": 0.01}
HIGH, MEDIUM, LOW = Priority.HIGH, Priority.MEDIUM, Priority.LOW


@pytest.fixture
def queues() -> Iterator[Any]:
    """Queues made by a test, closed after it (with their recorders' gates opened)."""
    made: list[tuple[JobQueue, Recorder | None]] = []

    def make(handler: Any, **options: Any) -> JobQueue:
        q = JobQueue(handler, **options)
        made.append((q, handler if isinstance(handler, Recorder) else None))
        return q

    yield make
    for q, recorder in made:
        if recorder is not None:
            recorder.release()
        q.close(timeout=PATIENCE)


def gated(queues: Any, **options: Any) -> tuple[JobQueue, Recorder]:
    """One worker held on a HIGH gate job, so a test can fill the lanes, then release."""
    recorder = Recorder(hold=lambda job: job.id == "gate")
    q = queues(recorder, workers=1, **options)
    q.enqueue(Job(id="gate", priority=HIGH))
    recorder.wait_started(1)
    return q, recorder


# -- fairness: the picker alone ----------------------------------------------------------


def saturated_run(fairness: int, lanes: dict[Priority, int], picks: int) -> list[Priority]:
    """Which lane each of ``picks`` picks takes, HIGH refilled so it never runs dry."""
    queues = {p: deque(range(lanes.get(p, 0))) for p in Priority}
    picker = FairPicker(fairness, queues)
    order = []
    for _ in range(picks):
        queues[HIGH].append(0)
        chosen = picker.pick()
        assert chosen is not None
        queues[chosen].popleft()
        order.append(chosen)
    return order


@pytest.mark.parametrize("fairness", [1, 2, 5, 10, 50])
def test_with_two_lanes_a_low_job_starts_exactly_at_pick_fairness_plus_one(fairness: int) -> None:
    order = saturated_run(fairness, {LOW: 3}, 3 * (fairness + 1))
    low_picks = [i + 1 for i, p in enumerate(order) if p is LOW]
    assert low_picks == [fairness + 1, 2 * (fairness + 1), 3 * (fairness + 1)]


@pytest.mark.parametrize("fairness", [1, 3, 10])
def test_with_three_lanes_both_lower_lanes_are_protected(fairness: int) -> None:
    order = saturated_run(fairness, {MEDIUM: 100, LOW: 100}, 20 * (fairness + 2))
    for lane, bound in ((LOW, fairness + 1), (MEDIUM, fairness + 3)):
        picks = [i for i, p in enumerate(order) if p is lane]
        gaps = [b - a for a, b in zip([-1, *picks], picks, strict=False)]
        assert max(gaps) == bound  # never more, and the worst case is reached
    # The price: LOW takes one pick in fairness + 1, MEDIUM a little less, HIGH the rest.
    assert order.count(LOW) / len(order) == pytest.approx(1 / (fairness + 1), abs=0.02)
    assert order.count(MEDIUM) <= order.count(LOW)


def test_fairness_zero_is_strict_priority() -> None:
    order = saturated_run(0, {MEDIUM: 5, LOW: 5}, 200)
    assert set(order) == {HIGH}


lane_ops = st.lists(st.sampled_from(["high", "medium", "low", "pick", "pick", "pick"]))


@settings(max_examples=300, deadline=None)
@given(fairness=st.integers(min_value=0, max_value=12), ops=lane_ops)
def test_the_fairness_bound_holds_for_any_mix_of_arrivals_and_picks(
    fairness: int, ops: list[str]
) -> None:
    lanes = {p: deque[int]() for p in Priority}
    picker = FairPicker(fairness, lanes)
    # Picks in a row that went elsewhere while each lane had a job waiting.
    waited = dict.fromkeys(Priority, 0)
    for op in ops:
        if op != "pick":
            lanes[Priority[op.upper()]].append(0)
            continue
        nonempty = [p for p in Priority if lanes[p]]
        chosen = picker.pick()
        if not nonempty:
            assert chosen is None
            continue
        assert chosen in nonempty
        if fairness == 0:
            assert chosen is nonempty[0]  # strict priority
        lanes[chosen].popleft()
        for p in nonempty:
            waited[p] = 0 if p is chosen else waited[p] + 1
        for p in Priority:
            if not lanes[p]:
                waited[p] = 0
        if fairness:
            assert waited[LOW] <= fairness
            assert waited[MEDIUM] <= fairness + 2


# -- fairness: the queue --------------------------------------------------------------


@pytest.mark.parametrize("fairness", [1, 3, 10])
def test_a_queue_under_a_high_flood_starts_low_and_medium_within_their_bounds(
    queues: Any, fairness: int
) -> None:
    q, recorder = gated(queues, fairness=fairness)
    q.enqueue(Job(id="low", priority=LOW))
    q.enqueue(Job(id="medium", priority=MEDIUM))
    for i in range(4 * fairness + 8):
        q.enqueue(Job(id=f"high-{i}", priority=HIGH))
    recorder.release()
    assert q.join(timeout=PATIENCE)
    picks = recorder.order[1:]  # after the gate
    # From a fresh start both are owed at pick fairness + 1, and LOW wins the tie.
    assert picks.index("low") + 1 == fairness + 1
    assert picks.index("medium") + 1 == fairness + 2


# -- status and info ------------------------------------------------------------------------------


def test_status_follows_a_job_through_a_retry_to_completion(queues: Any) -> None:
    retried = threading.Event()
    recorder = Recorder(
        hold=lambda job: job.id == "watched" and retried.is_set(),
        fail=lambda job, n: job.id == "watched" and n == 1,
    )
    q = queues(recorder, workers=2, max_retries=1, backoff=0.2, max_backoff=0.2)
    assert q.status("watched") is None
    q.enqueue(Job(id="watched"))
    deadline = time.monotonic() + PATIENCE
    while q.status("watched") is not Status.RETRYING:  # the first attempt fails at once
        assert time.monotonic() < deadline
        time.sleep(0.001)
    retried.set()
    recorder.wait_started(2)
    assert q.status("watched") is Status.PROCESSING
    recorder.release()
    assert q.join(timeout=PATIENCE)
    info = q.info("watched")
    assert info is not None
    assert info.status is Status.COMPLETED
    assert info.attempts == 2
    assert info.last_error == "Boom: watched attempt 1"
    assert info.started_at is not None and info.finished_at is not None
    assert info.enqueued_at <= info.started_at <= info.finished_at


# -- dead letters ---------------------------------------------------------------------------------


def test_a_job_that_fails_for_good_is_a_dead_letter_with_its_error(queues: Any) -> None:
    recorder = Recorder(fail=lambda job, n: True)
    q = queues(recorder, max_retries=2, **FAST)
    q.enqueue(Job(id="doomed", priority=LOW))
    assert q.join(timeout=PATIENCE)
    assert q.status("doomed") is Status.FAILED
    assert [job.id for job in q.dead_letters()] == ["doomed"]
    info = q.info("doomed")
    assert info is not None
    assert (info.attempts, info.last_error) == (3, "Boom: doomed attempt 3")
    m = q.metrics()
    assert (m.failed, m.dead, m.by_priority[LOW].failed) == (1, 1, 1)


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no words for it")


def test_an_error_whose_message_cannot_be_read_is_named_by_its_type(queues: Any) -> None:
    # str(error) raised under the queue's lock, and took the worker with it.
    def handler(job: Job) -> None:
        if job.id == "unprintable":
            raise Unprintable

    q = queues(handler, workers=1, max_retries=0)
    q.enqueue(Job(id="unprintable"))
    q.enqueue(Job(id="after"))
    assert q.join(timeout=PATIENCE)
    info = q.info("unprintable")
    assert info is not None and info.last_error == "Unprintable: (its message could not be read)"
    assert q.status("after") is Status.COMPLETED


def test_a_replayed_dead_letter_gets_a_fresh_retry_budget(queues: Any) -> None:
    recorder = Recorder(fail=lambda job, n: n <= 4)  # fails its first life, 1 more
    q = queues(recorder, max_retries=2, **FAST)
    q.enqueue(Job(id="phoenix"))
    assert q.join(timeout=PATIENCE)
    assert recorder.attempts["phoenix"] == 3
    q.retry_dead("phoenix")
    assert q.status("phoenix") in {Status.QUEUED, Status.PROCESSING, Status.RETRYING}
    assert q.join(timeout=PATIENCE)
    assert recorder.attempts["phoenix"] == 5  # two more attempts: failed once, then won
    assert q.status("phoenix") is Status.COMPLETED
    assert q.dead_letters() == []
    m = q.metrics()
    assert (
        m.submitted == m.completed + m.failed + m.lost + m.cancelled
    )  # the replay counts as submitted
    assert (m.submitted, m.completed, m.failed, m.dead) == (2, 1, 1, 0)


def test_retry_dead_of_a_job_that_is_not_dead_is_a_key_error(queues: Any) -> None:
    q = queues(Recorder())
    q.enqueue(Job(id="fine"))
    assert q.join(timeout=PATIENCE)
    with pytest.raises(KeyError, match="fine"):
        q.retry_dead("fine")
    with pytest.raises(KeyError, match="never-seen"):
        q.retry_dead("never-seen")


# -- idempotency and per-job budgets ------------------------------------------------------


def test_a_second_job_with_a_used_key_is_refused_with_the_first_jobs_id(queues: Any) -> None:
    q, recorder = gated(queues)
    q.enqueue(Job(id="first", idempotency_key="order-42"))
    with pytest.raises(DuplicateJob) as queued:
        q.enqueue(Job(id="second", idempotency_key="order-42"))
    assert queued.value.job_id == "first"
    recorder.release()
    assert q.join(timeout=PATIENCE)
    with pytest.raises(DuplicateJob) as completed:  # still refused once it has completed
        q.enqueue(Job(idempotency_key="order-42"))
    assert completed.value.job_id == "first"
    assert recorder.attempts["first"] == 1
    assert "second" not in recorder.attempts


def test_a_job_id_already_known_is_refused(queues: Any) -> None:
    q = queues(Recorder())
    q.enqueue(Job(id="same"))
    with pytest.raises(DuplicateJob, match="same"):
        q.enqueue(Job(id="same"))


def test_concurrent_producers_with_one_key_get_exactly_one_job_in(queues: Any) -> None:
    q, _ = gated(queues)
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def produce(i: int) -> None:
        barrier.wait()
        try:
            q.enqueue(Job(id=f"racer-{i}", idempotency_key="once"))
            outcomes.append("accepted")
        except DuplicateJob:
            outcomes.append("duplicate")

    threads = [threading.Thread(target=produce, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["accepted"] + ["duplicate"] * 7


def test_producers_waiting_for_room_with_one_id_get_exactly_one_job_in(queues: Any) -> None:
    q, recorder = gated(queues, queue_size=1)
    q.enqueue(Job(id="filler"))  # the MEDIUM lane is full: both producers below wait
    outcomes: list[str] = []

    def produce() -> None:
        try:
            q.enqueue(Job(id="twin"))
            outcomes.append("accepted")
        except DuplicateJob:
            outcomes.append("duplicate")

    threads = [threading.Thread(target=produce) for _ in range(2)]
    for t in threads:
        t.start()
    recorder.release()  # room appears; the second to get it must see the first's id
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["accepted", "duplicate"]
    assert q.join(timeout=PATIENCE)
    assert recorder.attempts["twin"] == 1


def test_a_producer_refused_after_waiting_passes_its_wake_up_on(queues: Any) -> None:
    q, recorder = gated(queues, queue_size=1)
    q.enqueue(Job(id="filler"))  # the lane is full: the producers below all wait
    outcomes: dict[str, str] = {}

    def produce(name: str, key: str) -> None:
        try:
            q.enqueue(Job(id=name, idempotency_key=key), timeout=PATIENCE)
            outcomes[name] = "accepted"
        except (DuplicateJob, QueueFull) as exc:
            outcomes[name] = type(exc).__name__

    threads = [
        threading.Thread(target=produce, args=args)
        for args in (("p1", "same"), ("p2", "same"), ("p3", "other"))
    ]
    for t in threads:
        t.start()
    recorder.release()
    for t in threads:
        t.join()
    # One of p1 and p2 is refused as a duplicate after a wake-up; p3 must not be
    # left waiting on a lane with room because that wake-up was spent on a refusal.
    assert outcomes["p3"] == "accepted"
    assert sorted([outcomes["p1"], outcomes["p2"]]) == ["DuplicateJob", "accepted"]


def test_timeouts_racing_with_fast_jobs_never_settle_a_job_twice() -> None:
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # make the race between take and timeout likely
    try:
        for _ in range(10):
            q = JobQueue(lambda job: None, workers=4, job_timeout=1e-4, max_retries=0)
            q.enqueue_many(Job() for _ in range(300))
            assert q.join(timeout=PATIENCE)
            m = q.metrics()
            assert m.submitted == m.completed + m.failed + m.lost + m.cancelled == 300
            q.close(timeout=PATIENCE)
    finally:
        sys.setswitchinterval(switch)


def test_a_job_may_carry_its_own_retry_budget(queues: Any) -> None:
    recorder = Recorder(fail=lambda job, n: True)
    q = queues(recorder, max_retries=1, **FAST)
    q.enqueue(Job(id="default"))
    q.enqueue(Job(id="stubborn", max_retries=4))
    q.enqueue(Job(id="once", max_retries=0))
    assert q.join(timeout=PATIENCE)
    assert dict(recorder.attempts) == {"default": 2, "stubborn": 5, "once": 1}


# -- enqueue_many ----------------------------------------------------------------------------


def test_enqueue_many_accepts_a_batch_larger_than_a_lane(queues: Any) -> None:
    recorder = Recorder()
    q = queues(recorder, workers=2, queue_size=10)
    q.enqueue_many(Job(id=str(i)) for i in range(95))  # waits for room as workers drain
    assert q.join(timeout=PATIENCE)
    assert sorted(recorder.attempts, key=int) == [str(i) for i in range(95)]


def test_enqueue_many_says_how_many_it_accepted_before_a_full_lane(queues: Any) -> None:
    q, _ = gated(queues, queue_size=3)
    with pytest.raises(QueueFull) as full:
        q.enqueue_many([Job(id=str(i)) for i in range(5)], timeout=0)
    assert full.value.accepted == 3
    assert [q.status(str(i)) for i in range(5)] == [Status.QUEUED] * 3 + [None] * 2


def test_enqueue_many_says_how_many_it_accepted_before_a_duplicate(queues: Any) -> None:
    q, _ = gated(queues)
    batch = [Job(id="a"), Job(id="b", idempotency_key="k"), Job(id="c", idempotency_key="k")]
    with pytest.raises(DuplicateJob) as dup:
        q.enqueue_many(batch)
    assert (dup.value.accepted, dup.value.job_id) == (2, "b")


def test_enqueue_many_checks_every_job_before_accepting_any(queues: Any) -> None:
    q = queues(Recorder())
    with pytest.raises(TypeError, match="payload"):
        q.enqueue_many([Job(id="fine"), Job(payload="not bytes")])  # type: ignore[arg-type]
    assert q.status("fine") is None


# -- rate limiting --------------------------------------------------------------------------------


def test_the_token_bucket_allows_its_burst_then_one_start_per_interval() -> None:
    bucket = TokenBucket(rate=100.0, now=0.0)
    assert bucket.burst == 10.0
    assert [bucket.take(0.0) for _ in range(10)] == [0.0] * 10
    assert bucket.take(0.0) == pytest.approx(0.01)
    assert bucket.take(0.005) == pytest.approx(0.005)
    assert bucket.take(0.01) == 0.0
    assert bucket.take(5.0) == 0.0  # idle time refills up to the burst, no further
    assert sum(bucket.take(5.0) == 0.0 for _ in range(20)) == 9


def test_a_slow_rate_still_has_a_burst_of_one() -> None:
    bucket = TokenBucket(rate=0.5, now=0.0)
    assert bucket.burst == 1.0
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == pytest.approx(2.0)


def test_the_rate_limit_holds_across_four_workers_and_drops_nothing(queues: Any) -> None:
    starts: list[float] = []
    lock = threading.Lock()

    def handler(job: Job) -> None:
        with lock:
            starts.append(time.monotonic())

    rate, n = 200.0, 600  # three seconds of starts
    q = queues(handler, workers=4, rate_limit=rate)
    q.enqueue_many(Job() for _ in range(n))
    assert q.join(timeout=PATIENCE)
    assert len(starts) == n
    observed = (n - 1) / (starts[-1] - starts[0])
    assert abs(observed - rate) <= 0.1 * rate, f"{observed:.1f} starts/s for a limit of {rate}"


# -- metrics --------------------------------------------------------------------------------------


def test_metrics_break_down_by_priority_and_add_up(queues: Any) -> None:
    recorder = Recorder(fail=lambda job, n: job.id.startswith("bad"))
    q = queues(recorder, max_retries=1, **FAST)
    for p in Priority:
        q.enqueue_many(Job(id=f"{p.name}-{i}", priority=p) for i in range(10))
    q.enqueue(Job(id="bad", priority=LOW))
    assert q.join(timeout=PATIENCE)
    m = q.metrics()
    assert m.by_priority[HIGH].completed == 10
    assert (m.by_priority[LOW].submitted, m.by_priority[LOW].failed) == (11, 1)
    assert m.by_priority[LOW].retried == 1
    for name in ("submitted", "started", "completed", "failed", "retried", "lost"):
        assert getattr(m, name) == sum(getattr(lane, name) for lane in m.by_priority.values())
    assert m.wait_p50 is not None and m.wait_p99 is not None
    assert 0 <= m.wait_p50 <= m.wait_p99


def test_utilization_is_the_share_of_worker_time_spent_in_handlers(queues: Any) -> None:
    assert queues(Recorder(), workers=2).metrics().utilization < 0.5  # idle
    q, recorder = gated(queues)
    threading.Event().wait(0.2)  # let time pass with the only worker busy
    busy = q.metrics().utilization
    recorder.release()
    assert 0.5 < busy <= 1.0


# -- memory stays bounded -------------------------------------------------------------------------


def test_settled_jobs_past_the_history_are_let_go_of_with_their_keys(
    queues: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="final")
    q = queues(Recorder(fail=lambda job, n: job.id == "dead"), history=5, max_retries=0)
    q.enqueue(Job(id="dead"))
    q.enqueue(Job(id="old", idempotency_key="k"))
    assert q.join(timeout=PATIENCE)
    q.enqueue_many(Job(id=f"new-{i}") for i in range(5))
    assert q.join(timeout=PATIENCE)
    assert q.status("old") is None and q.status("dead") is None
    assert q.status("new-4") is Status.COMPLETED
    q.enqueue(Job(id="again", idempotency_key="k"))  # the key is free again
    assert q.dead_letters() == []
    assert any("dead letter dead let go of" in r.getMessage() for r in caplog.records)


def test_a_replayed_job_is_let_go_of_by_its_latest_settle_not_its_first(queues: Any) -> None:
    q = queues(
        Recorder(fail=lambda job, n: (job.id, n) == ("phoenix", 1)), history=2, max_retries=0
    )
    q.enqueue(Job(id="phoenix"))  # dies: its first entry in the settle order
    assert q.join(timeout=PATIENCE)
    q.retry_dead("phoenix")  # completes: its second entry, the one that counts
    assert q.join(timeout=PATIENCE)
    q.enqueue(Job(id="a"))  # pushes the first entry out: it is stale, and skipped
    assert q.join(timeout=PATIENCE)
    assert q.status("phoenix") is Status.COMPLETED
    q.enqueue(Job(id="b"))  # pushes the second out: now it is let go of
    assert q.join(timeout=PATIENCE)
    assert q.status("phoenix") is None
    assert (q.status("a"), q.status("b")) == (Status.COMPLETED, Status.COMPLETED)


def resident_bytes() -> int:
    """This process's resident memory now (Linux), or its peak elsewhere."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


@pytest.mark.slow
def test_memory_stays_flat_over_a_long_run(queues: Any) -> None:
    q = queues(lambda job: None, workers=4, history=1_000)
    batch = 10_000
    keys = itertools.count()

    def run(batches: int) -> None:
        for _ in range(batches):
            q.enqueue_many(Job(idempotency_key=f"key-{next(keys)}") for _ in range(batch))
        assert q.join(timeout=60)

    run(5)  # warm up: history full, dicts and deques at their working size
    gc.collect()
    before = resident_bytes()
    run(30)  # 300,000 jobs, each with an id and a key
    gc.collect()
    grown = resident_bytes() - before
    # Keeping every settled job would cost well over 100 bytes each: 30 MB and more.
    assert grown < 10_000_000, f"resident memory grew by {grown:,} bytes"


# -- options and input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"fairness": -1}, "fairness"),
        ({"fairness": 1.5}, "fairness"),
        ({"rate_limit": 0}, "rate_limit"),
        ({"rate_limit": float("nan")}, "rate_limit"),
        ({"history": 0}, "history"),
    ],
)
def test_a_bad_option_is_a_value_error_that_names_it(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        JobQueue(lambda job: None, **options)


@pytest.mark.parametrize(
    ("job", "error", "named"),
    [
        (Job(payload="text"), TypeError, "payload"),  # type: ignore[arg-type]
        (Job(id=""), ValueError, "id"),
        (Job(id=7), TypeError, "id"),  # type: ignore[arg-type]
        (Job(idempotency_key=""), ValueError, "idempotency_key"),
        (Job(idempotency_key="k" * 1025), ValueError, "idempotency_key"),
        (Job(max_retries=-1), ValueError, "max_retries"),
    ],
)
def test_a_malformed_job_is_refused_with_the_field_named(
    queues: Any, job: Job, error: type[Exception], named: str
) -> None:
    with pytest.raises(error, match=named):
        queues(Recorder()).enqueue(job)


def test_ids_and_keys_are_kept_exactly_as_given(queues: Any) -> None:
    odd = "ünïcødé 'quotes' \"double\" ; DROP TABLE jobs; --" + "x" * 900
    q = queues(Recorder())
    q.enqueue(Job(id=odd, idempotency_key=odd))
    assert q.join(timeout=PATIENCE)
    assert q.status(odd) is Status.COMPLETED
    with pytest.raises(DuplicateJob) as dup:
        q.enqueue(Job(idempotency_key=odd))
    assert dup.value.job_id == odd


def test_the_final_package_exports_its_additions() -> None:
    assert {"Status", "DuplicateJob", "Metrics", "JobInfo"} <= set(final.__all__)
