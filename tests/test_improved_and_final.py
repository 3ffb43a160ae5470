"""What improved adds beyond the shared contract, and final keeps: backoff, timeouts,
metrics, exit. These run against both tiers (``tier`` is improved or final)."""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import PATIENCE, Boom, Recorder, Tier

ROOT = Path(__file__).resolve().parents[1]
FAST = {"backoff": 0.001, "max_backoff": 0.01}

pytestmark = pytest.mark.tiers("improved", "final")


@pytest.fixture
def queues(tier: Tier) -> Any:
    """Make a queue of the tier under test; the tier fixture closes it afterwards."""
    return tier.queue


def wait_for_metrics(q: Any, predicate: Any, what: str) -> Any:
    """Metrics change on worker threads with no event to wait on; poll them briefly."""
    deadline = time.monotonic() + PATIENCE
    while not predicate(m := q.metrics()):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}; last {m}")
        time.sleep(0.005)
    return m


# -- the backoff schedule ------------------------------------------------------------


@pytest.mark.parametrize("retry", range(1, 12))
def test_backoff_doubles_from_the_base_up_to_the_cap(tier: Tier, retry: int) -> None:
    ceiling = min(30.0, 1.0 * 2 ** (retry - 1))
    assert tier.module.backoff_delay(retry, 1.0, 30.0, rand=lambda: 1.0) == ceiling
    # Equal jitter: never less than half the ceiling, so a failing service gets its rest.
    assert tier.module.backoff_delay(retry, 1.0, 30.0, rand=lambda: 0.0) == ceiling / 2
    assert ceiling / 2 <= tier.module.backoff_delay(retry, 1.0, 30.0) <= ceiling


def test_backoff_of_a_huge_retry_number_is_the_cap_not_an_overflow(tier: Tier) -> None:
    assert tier.module.backoff_delay(10_000, 1.0, 30.0, rand=lambda: 1.0) == 30.0


def test_backoff_jitter_spreads_retries_that_failed_together(tier: Tier) -> None:
    delays = {round(tier.module.backoff_delay(3, 1.0, 30.0), 6) for _ in range(100)}
    assert len(delays) > 90


def test_retries_wait_at_least_half_their_nominal_backoff(tier: Tier) -> None:
    starts: list[float] = []

    def handler(job: Any) -> None:
        starts.append(time.monotonic())
        raise Boom

    with tier.module.JobQueue(
        handler, workers=1, max_retries=3, backoff=0.04, max_backoff=0.1
    ) as q:
        q.enqueue(tier.Job())
        assert q.join(timeout=PATIENCE)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(gaps) == 3
    for gap, nominal in zip(gaps, [0.04, 0.08, 0.1], strict=True):
        assert gap >= nominal / 2


def test_a_job_waiting_out_its_backoff_holds_no_worker(tier: Tier, queues: Any) -> None:
    recorder = Recorder(fail=lambda job, n: job.id == "slow-retry")
    q = queues(recorder, workers=1, max_retries=1, backoff=60.0, max_backoff=60.0)
    q.enqueue(tier.Job(id="slow-retry"))
    recorder.wait_started(1)
    q.enqueue(tier.Job(id="next"))
    # The only worker is free for "next" while "slow-retry" waits a minute.
    recorder.wait_until(lambda r: r.succeeded == ["next"], "the job behind the retry")
    m = q.metrics()
    assert (m.retrying, m.retried, m.in_flight) == (1, 1, 0)
    q.close(timeout=0.05)
    assert q.metrics().lost == 1  # close(timeout) counts the retry it did not wait for


def test_close_waits_for_a_job_in_backoff_and_runs_its_retry(tier: Tier) -> None:
    recorder = Recorder(fail=lambda job, n: n == 1)
    q = tier.module.JobQueue(recorder, workers=2, max_retries=1, backoff=0.05, max_backoff=0.05)
    q.enqueue(tier.Job(id="flaky"))
    recorder.wait_started(1)
    q.close()
    assert recorder.succeeded == ["flaky"]
    m = q.metrics()
    assert (m.completed, m.lost, m.retried) == (1, 0, 1)


# -- per-attempt timeouts --------------------------------------------------------------


def test_a_hung_handler_times_out_while_other_jobs_keep_flowing(tier: Tier, queues: Any) -> None:
    recorder = Recorder(hold=lambda job: job.id == "hangs")
    q = queues(recorder, workers=2, job_timeout=0.1, max_retries=1, **FAST)
    q.enqueue(tier.Job(id="hangs"))
    for i in range(200):
        q.enqueue(tier.Job(id=f"ok-{i}"))
    m = wait_for_metrics(q, lambda m: m.failed == 1, "the hung job to fail for good")
    assert m.timed_out == 2  # both of its attempts, each abandoned at its deadline
    assert m.abandoned == 2  # their threads still run the handler: Python cannot kill them
    assert q.join(timeout=PATIENCE)
    assert sorted(recorder.succeeded) == sorted(f"ok-{i}" for i in range(200))
    recorder.release()  # the hung handler returns at last; its late result is ignored
    m = wait_for_metrics(q, lambda m: m.abandoned == 0, "abandoned threads to finish")
    assert (m.completed, m.failed, m.timed_out) == (200, 1, 2)


def test_abandoned_threads_are_capped_at_the_number_of_workers(tier: Tier, queues: Any) -> None:
    recorder = Recorder(hold=lambda job: job.id.startswith("hangs"))
    q = queues(recorder, workers=1, job_timeout=0.05, max_retries=0)
    for i in range(3):
        q.enqueue(tier.Job(id=f"hangs-{i}"))
    m = wait_for_metrics(q, lambda m: m.timed_out == 2, "two attempts to time out")
    # The first abandoned thread was replaced; the second was not, so the third
    # job waits instead of a new thread being started for it.
    assert (m.abandoned, m.queued, m.in_flight) == (2, 1, 0)
    workers = [t for t in threading.enumerate() if t.name.startswith(f"{tier.name}-worker")]
    assert len(workers) <= 2
    recorder.release()  # a returning abandoned thread fills the empty slot itself
    assert q.join(timeout=PATIENCE)
    assert recorder.attempts["hangs-2"] == 1
    wait_for_metrics(q, lambda m: m.abandoned == 0, "both abandoned threads to return")


def test_a_handler_can_see_its_attempt_and_deadline(tier: Tier, queues: Any) -> None:
    seen: list[tuple[int, float | None, bool]] = []

    def handler(job: Any) -> None:
        attempt = tier.module.current_attempt()
        assert attempt.job is job
        seen.append((attempt.number, attempt.time_left(), attempt.expired))
        if attempt.number == 1:
            raise Boom

    q = queues(handler, workers=1, job_timeout=5.0, max_retries=1, **FAST)
    q.enqueue(tier.Job())
    assert q.join(timeout=PATIENCE)
    assert [number for number, _, _ in seen] == [1, 2]
    for _, left, expired in seen:
        assert left is not None and 0 < left <= 5.0
        assert not expired


def test_a_cooperative_handler_stops_at_its_deadline(tier: Tier, queues: Any) -> None:
    stopped = threading.Event()

    def handler(job: Any) -> None:
        attempt = tier.module.current_attempt()
        while not attempt.expired:
            stopped.wait(0.01)  # one slice of real work
        stopped.set()

    q = queues(handler, workers=1, job_timeout=0.05, max_retries=0)
    q.enqueue(tier.Job())
    assert stopped.wait(PATIENCE)
    assert q.join(timeout=PATIENCE)
    assert q.metrics().timed_out == 1


def test_current_attempt_outside_a_handler_is_an_error(tier: Tier) -> None:
    with pytest.raises(RuntimeError, match="inside a handler"):
        tier.module.current_attempt()


def test_without_a_timeout_attempts_have_no_deadline(tier: Tier, queues: Any) -> None:
    seen: list[float | None] = []
    q = queues(lambda job: seen.append(tier.module.current_attempt().time_left()), workers=1)
    q.enqueue(tier.Job())
    assert q.join(timeout=PATIENCE)
    assert seen == [None]


# -- failures are logged, once per attempt ---------------------------------------------


def test_every_failed_attempt_is_logged_once_and_the_last_with_its_traceback(
    tier: Tier, queues: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=tier.name)
    q = queues(Recorder(fail=lambda job, n: True), workers=1, max_retries=2, **FAST)
    q.enqueue(tier.Job(id="doomed"))
    assert q.join(timeout=PATIENCE)
    records = [r for r in caplog.records if "doomed" in r.getMessage()]
    assert [r.getMessage() for r in records] == [
        "job doomed attempt 1 failed: Boom: doomed attempt 1",
        "job doomed attempt 2 failed: Boom: doomed attempt 2",
        "job doomed failed for good after 3 attempts: Boom: doomed attempt 3",
    ]
    assert [r.levelno for r in records] == [logging.WARNING, logging.WARNING, logging.ERROR]
    assert [bool(r.exc_info) for r in records] == [False, False, True]
    assert records[-1].exc_info and records[-1].exc_info[0] is Boom


# -- metrics under concurrency -----------------------------------------------------------


def test_metrics_stay_consistent_under_eight_producers_and_failures(
    tier: Tier, queues: Any
) -> None:
    producers, per_producer = 8, 5_000
    logging.getLogger(tier.name).setLevel(logging.CRITICAL)  # 8,000 tracebacks is noise
    try:
        q = queues(
            Recorder(fail=lambda job, n: job.id.endswith("0")),  # 10% always fail
            workers=4,
            queue_size=100,
            max_retries=1,
            **FAST,
        )
        snapshots: list[Any] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                snapshots.append(q.metrics())

        def produce(p: int) -> None:
            for i in range(per_producer):
                q.enqueue(tier.Job(id=f"{p}-{i}"))

        sampler = threading.Thread(target=sample)
        sampler.start()
        threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert q.join(timeout=60)
        done.set()
        sampler.join()
    finally:
        logging.getLogger(tier.name).setLevel(logging.NOTSET)

    total = producers * per_producer
    final = q.metrics()
    assert final.submitted == total == final.completed + final.failed + final.lost
    assert (final.failed, final.retried) == (total // 10, total // 10)
    assert len(snapshots) > 10
    for m in [*snapshots, final]:
        assert min(m.queued, m.retrying, m.in_flight, m.abandoned) >= 0
        # Every attempt begun has ended in exactly one way, or is still running...
        assert m.started == m.completed + m.failed + m.retried + m.in_flight
        # ...and every accepted job is settled or somewhere in the queue.
        unsettled = m.queued + m.retrying + m.in_flight
        assert m.submitted == m.completed + m.failed + m.lost + unsettled


# -- options and input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"workers": 0}, "workers"),
        ({"workers": 2.5}, "workers"),
        ({"queue_size": -1}, "queue_size"),
        ({"queue_size": 0}, "queue_size"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": True}, "max_retries"),
        ({"backoff": "1s"}, "backoff"),
        ({"backoff": -0.5}, "backoff"),
        ({"backoff": float("nan")}, "backoff"),
        ({"max_backoff": float("inf")}, "max_backoff"),
        ({"backoff": 2.0, "max_backoff": 1.0}, "max_backoff"),
        ({"job_timeout": 0}, "job_timeout"),
        ({"job_timeout": "soon"}, "job_timeout"),
    ],
)
def test_a_bad_option_is_a_value_error_that_names_it(
    tier: Tier, options: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        tier.module.JobQueue(lambda job: None, **options)


@pytest.mark.parametrize("timeout", [-1, float("nan")])
def test_a_negative_enqueue_timeout_is_a_value_error(
    tier: Tier, queues: Any, timeout: float
) -> None:
    q = queues(lambda job: None)
    with pytest.raises(ValueError, match="timeout"):
        q.enqueue(tier.Job(), timeout=timeout)


def test_close_from_a_handler_is_refused_rather_than_deadlocking(tier: Tier, queues: Any) -> None:
    errors: list[BaseException] = []

    def handler(job: Any) -> None:
        try:
            q.close()
        except RuntimeError as exc:
            errors.append(exc)

    q = queues(handler, workers=1)
    q.enqueue(tier.Job())
    assert q.join(timeout=PATIENCE)
    assert len(errors) == 1 and "own job" in str(errors[0])


# -- shutdown ---------------------------------------------------------------------------------


def test_no_thread_is_left_after_timeouts_once_their_handlers_return(tier: Tier) -> None:
    before = set(threading.enumerate())
    recorder = Recorder(hold=lambda job: job.id == "hangs")
    q = tier.module.JobQueue(recorder, workers=2, job_timeout=0.05, max_retries=0)
    q.enqueue(tier.Job(id="hangs"))
    wait_for_metrics(q, lambda m: m.timed_out == 1, "the attempt to time out")
    recorder.release()
    wait_for_metrics(q, lambda m: m.abandoned == 0, "the abandoned thread to return")
    q.close()
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert left == []


def test_a_queue_nobody_closed_still_runs_its_jobs_at_interpreter_exit(tier: Tier) -> None:
    script = textwrap.dedent(
        """
        import threading
        from {tier} import Job, JobQueue
        def handler(job):
            threading.Event().wait(0.05)
            print(job.id, flush=True)
        q = JobQueue(handler, workers=1)
        for i in range(5):
            q.enqueue(Job(id=str(i)))
        print("exiting", flush=True)
        """
    ).replace("{tier}", tier.name)
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        check=True,
    )
    lines = out.stdout.split()
    assert lines[0] == "exiting"
    assert sorted(lines[1:]) == ["0", "1", "2", "3", "4"]
