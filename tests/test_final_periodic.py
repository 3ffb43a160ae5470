"""periodic(name, every, job) in memory and on SQLite: one job per period, whatever restarts.

A period is a slice of the wall clock, so these tests let wall-clock time pass (that
is what they are about); what they assert is counted from the jobs that ran, never
from how long something took. Every interval is long against the load of a shared
2-core machine, and the checks hold whatever a period's job's lateness.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter
from typing import Any

import pytest

from final import Job, JobQueue, QueueClosed, Status
from final.periodic import period_key, period_of
from tests.support import PATIENCE, Recorder

pytestmark = pytest.mark.tiers("final")

EVERY = 0.5


def periods(ids: list[str], name: str = "tick") -> Counter[int]:
    """How many attempts ran for each period of schedule ``name``."""
    prefix = period_key(name, EVERY, 0).removesuffix("0")
    return Counter(int(i.removeprefix(prefix)) for i in ids if i.startswith(prefix))


def test_a_schedule_enqueues_one_job_per_period_named_by_it() -> None:
    recorder = Recorder()
    q = JobQueue(recorder, workers=2)
    first = period_of(time.time(), EVERY)
    q.periodic("tick", EVERY, lambda: Job(id="mine", payload=b"report", idempotency_key="k"))
    recorder.wait_until(lambda r: len(r.succeeded) >= 3, "three periods' jobs")
    q.close()
    ran = periods(recorder.order)
    # At most one job per period. Not every period: a thread woken late skips the
    # ones it slept through. That the first comes at once: the hourly test below.
    assert set(ran.values()) == {1}
    assert min(ran) >= first
    assert q.status(period_key("tick", EVERY, min(ran))) is Status.COMPLETED


def test_declaring_a_schedule_again_in_one_queue_changes_nothing(caplog: Any) -> None:
    recorder = Recorder()
    with JobQueue(recorder, workers=1) as q:
        q.periodic("tick", EVERY, Job)
        q.periodic("tick", float(EVERY), Job)  # the same schedule
        recorder.wait_until(lambda r: len(r.succeeded) >= 2, "two periods' jobs")
    assert set(periods(recorder.order).values()) == {1}


@pytest.mark.parametrize(
    ("every", "job", "error", "words"),
    [
        (0, Job, ValueError, "every must be a finite number of seconds > 0, got 0"),
        (-1.5, Job, ValueError, "got -1.5"),
        (float("inf"), Job, ValueError, "got inf"),
        (True, Job, ValueError, "got True"),
        (1e-9, Job, ValueError, "every must be at least 0.001 seconds, got 1e-09"),
        (1.0, "not callable", TypeError, "job must be a callable that returns a Job"),
    ],
)
def test_bad_schedules_are_refused_naming_the_value(
    every: Any, job: Any, error: type[Exception], words: str
) -> None:
    with JobQueue(lambda job: None) as q, pytest.raises(error, match=words):
        q.periodic("tick", every, job)


def test_a_name_reused_with_another_interval_is_refused_naming_both() -> None:
    with JobQueue(lambda job: None) as q:
        q.periodic("report", 60, Job)
        with pytest.raises(ValueError, match=r"'report' was declared with every=60.0.*every=30"):
            q.periodic("report", 30, Job)
        with pytest.raises(ValueError, match="name must have 1 to"):
            q.periodic("", 60, Job)
        with pytest.raises(TypeError, match="name must be a str"):
            q.periodic(7, 60, Job)  # type: ignore[arg-type]


def test_a_closed_queue_refuses_schedules_and_stops_its_own() -> None:
    recorder = Recorder()
    q = JobQueue(recorder, workers=1)
    q.periodic("tick", EVERY, Job)
    recorder.wait_started(1)
    q.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("final-periodic-")]
    with pytest.raises(QueueClosed):
        q.periodic("other", EVERY, Job)


def test_close_with_a_timeout_waits_no_longer_for_a_job_factory_that_hangs() -> None:
    called, release = threading.Event(), threading.Event()

    def hangs() -> Job:
        called.set()
        release.wait()
        return Job()

    q = JobQueue(Recorder(), workers=1)
    q.periodic("stuck", 3600, hangs)
    assert called.wait(PATIENCE)
    closer = threading.Thread(target=q.close, kwargs={"timeout": 0.1}, daemon=True)
    closer.start()
    closer.join(PATIENCE)
    try:
        assert not closer.is_alive()
    finally:
        release.set()  # its enqueue now finds the queue closed


def test_a_job_factory_that_fails_is_logged_and_the_schedule_goes_on(caplog: Any) -> None:
    calls = Counter[str]()
    recorder = Recorder()

    def flaky() -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("no report today")
        if calls["n"] == 2:
            return "not a job"
        return Job()

    with caplog.at_level(logging.ERROR, logger="final.periodic"), JobQueue(recorder) as q:
        q.periodic("tick", EVERY, flaky)
        recorder.wait_started(1)
    assert "periodic 'tick': job() raised" in caplog.text
    assert "periodic 'tick': job() returned str, not a Job" in caplog.text


def test_a_failing_schedule_keeps_one_job_at_a_time(caplog: Any) -> None:
    # Each job fails 3 times, with backoffs that keep it unsettled over several
    # periods: the periods meanwhile are skipped, not piled up behind it.
    every = 0.2
    recorder = Recorder(fail=lambda job, n: True)
    with caplog.at_level(logging.WARNING, logger="final.periodic"):
        q = JobQueue(recorder, workers=2, max_retries=2, backoff=0.3, max_backoff=0.3)
        q.periodic("tick", every, Job)
        recorder.wait_until(lambda r: len(r.attempts) >= 3, "three periods' jobs")
        q.close()
    dead = q.dead_letter_info()
    assert len(dead) >= 3 and all(d.attempts == 3 for d in dead)
    # No job started before the one of the period before it had ended: never two at once.
    order = recorder.order
    spans = [(order.index(j), len(order) - order[::-1].index(j)) for j in dict.fromkeys(order)]
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(spans))
    assert "skipped, job periodic:tick:0.2s:" in caplog.text


def test_restarts_on_sqlite_enqueue_one_job_per_period(path: str) -> None:
    # Many short lives of a queue on one file, several within a period and across
    # periods: each period that a life saw begin or was started in runs once.
    ran: list[str] = []
    starts = []
    for _ in range(8):
        recorder = Recorder()
        q = JobQueue(recorder, workers=1, path=path)
        starts.append(period_of(time.time(), EVERY))
        q.periodic("tick", EVERY, Job)
        if len(starts) % 3 == 0:  # some lives see a period turn
            turn = period_of(time.time(), EVERY) + 1

            def turned(r: Recorder, turn: int = turn) -> bool:
                return any(p >= turn for p in periods(r.order))

            recorder.wait_until(turned, "a period's turn")
        q.close()
        ran += recorder.order
    count = periods(ran)
    assert set(count.values()) == {1}, count
    # The period of each start ran (made up at start when no life had run it yet).
    assert all(p in count or p + 1 in count for p in starts)


def test_periods_missed_while_nothing_ran_are_made_up_once(path: str) -> None:
    recorder = Recorder()
    q = JobQueue(recorder, workers=1, path=path)
    q.periodic("tick", EVERY, Job)
    recorder.wait_started(1)
    q.close()
    stopped = period_of(time.time(), EVERY)
    while period_of(time.time(), EVERY) < stopped + 4:  # four periods pass with nothing running
        time.sleep(EVERY / 4)
    back = period_of(time.time(), EVERY)
    recorder = Recorder()
    q = JobQueue(recorder, workers=1, path=path)
    q.periodic("tick", EVERY, Job)
    recorder.wait_started(1)
    q.close()
    count = periods(recorder.order)
    assert not [p for p in count if stopped < p < back]  # the missed ones: none
    assert set(count.values()) == {1} and min(count) >= back  # made up once, by this one


def test_a_period_run_before_a_restart_is_not_run_again(path: str) -> None:
    recorder = Recorder()
    first = period_of(time.time(), 3600)
    for _ in range(3):  # three starts within one hour-long period
        made = threading.Event()

        def job(made: threading.Event = made) -> Job:
            made.set()
            return Job()

        with JobQueue(recorder, workers=1, path=path) as q:
            q.periodic("hourly", 3600, job)
            assert made.wait(PATIENCE)  # close() waits for the enqueue that follows
    turned = period_of(time.time(), 3600) != first  # an hour turned during the test
    assert len(recorder.order) == (1 if not turned else len(recorder.order))
    assert recorder.order[0] in (period_key("hourly", 3600, p) for p in (first, first + 1))


def test_a_job_that_never_settles_holds_later_periods_back() -> None:
    recorder = Recorder(hold=lambda job: True)
    q = JobQueue(recorder, workers=1)
    try:
        q.periodic("tick", 0.2, Job)
        recorder.wait_started(1)
        first = period_of(time.time(), 0.2)
        while period_of(time.time(), 0.2) < first + 3:
            time.sleep(0.05)  # three periods pass while the first job runs
        assert q.metrics().queued == 0
        assert len(recorder.order) == 1
    finally:
        recorder.release()
        q.close()


class _Heard(logging.Handler):
    """Sets an event when a record whose message holds ``words`` is logged."""

    def __init__(self, words: str) -> None:
        super().__init__()
        self.words = words
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.words in record.getMessage():
            self.event.set()


def test_a_period_whose_lane_stays_full_is_tried_until_it_ends_then_logged() -> None:
    recorder = Recorder(hold=lambda job: True)
    q = JobQueue(recorder, workers=1, queue_size=1)
    heard = _Heard("skipped: ")
    logger = logging.getLogger("final.periodic")
    logger.addHandler(heard)
    try:
        q.enqueue(Job(id="running"))
        recorder.wait_started(1)
        q.enqueue(Job(id="waiting"))  # the MEDIUM lane is full now
        q.periodic("tick", EVERY, Job)
        assert heard.event.wait(PATIENCE)
        assert q.status(period_key("tick", EVERY, period_of(time.time(), EVERY) - 1)) is None
    finally:
        logger.removeHandler(heard)
        recorder.release()
        q.close()
    assert "running" in recorder.order and "waiting" in recorder.order
