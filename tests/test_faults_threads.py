"""Faults other queues' users reported, as they bear on threads, processes and logs.

Each test names the kind of fault it guards against; they use the public API only.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import pytest

from tests.support import PATIENCE, Boom, Tier

FAST = {"backoff": 0.001, "max_backoff": 0.01}

pytestmark = pytest.mark.tiers("improved", "final")


# -- a handler waiting for the queue waits for itself -----------------------------------


def test_join_from_a_handler_is_refused_rather_than_waiting_for_its_own_job(tier: Tier) -> None:
    errors: list[BaseException] = []

    def handler(job: Any) -> None:
        try:
            q.join(timeout=0.2)  # without the check: False after 0.2s, or a hang with None
        except RuntimeError as exc:
            errors.append(exc)

    q = tier.queue(handler, workers=2)
    for _ in range(3):
        q.enqueue(tier.Job())
    assert q.join(timeout=PATIENCE)
    assert len(errors) == 3
    assert all("own job" in str(exc) for exc in errors)


def test_join_from_a_handler_that_timed_out_is_refused_too(tier: Tier) -> None:
    abandoned = threading.Event()
    errors: list[BaseException] = []

    def handler(job: Any) -> None:
        attempt = tier.module.current_attempt()
        while not attempt.abandoned:
            abandoned.wait(0.005)
        try:
            q.join(timeout=0.2)
        except RuntimeError as exc:
            errors.append(exc)
        abandoned.set()

    q = tier.queue(handler, workers=1, job_timeout=0.05, max_retries=0)
    q.enqueue(tier.Job())
    assert abandoned.wait(PATIENCE)
    assert len(errors) == 1 and "own job" in str(errors[0])


# -- an attempt that ends after its deadline is judged by the deadline -------------------


@pytest.fixture
def scheduler_starved() -> Any:
    """Let a spinning handler keep the GIL until it blocks: the queue's scheduler,
    woken at the deadline, cannot run before the worker has settled the attempt.
    This makes the race between the worker and the scheduler go the worker's way."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(5.0)
    yield
    sys.setswitchinterval(before)


@pytest.mark.usefixtures("scheduler_starved")
@pytest.mark.parametrize("raises", [False, True], ids=["returns", "raises"])
def test_an_attempt_that_ends_after_its_deadline_is_timed_out_whoever_sees_it_first(
    tier: Tier, raises: bool
) -> None:
    def handler(job: Any) -> None:
        attempt = tier.module.current_attempt()
        while not attempt.expired:  # spins: never lets go of the GIL
            pass
        if raises:
            raise Boom("too late")

    q = tier.queue(handler, workers=1, job_timeout=0.02, max_retries=1, **FAST)
    for _ in range(3):
        q.enqueue(tier.Job())
    assert q.join(timeout=PATIENCE)
    m = q.metrics()
    assert (m.completed, m.failed, m.timed_out, m.retried) == (0, 3, 6, 3)
