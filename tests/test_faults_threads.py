"""Faults other queues' users reported, as they bear on threads, processes and logs.

Each test names the kind of fault it guards against; they use the public API only.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.support import PATIENCE, Tier

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
