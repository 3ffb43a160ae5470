"""The exceptions the final tier raises to its callers for a job it cannot accept.

A leaf, like ``final/jobs.py``: every layer may raise or catch these.
"""

from __future__ import annotations

__all__ = ["DuplicateJob", "QueueClosed", "QueueFull"]


class QueueFull(Exception):
    """The job's lane stayed full past the timeout given to ``enqueue``."""

    accepted: int = 0  # enqueue_many: how many jobs before this one were accepted


class QueueClosed(Exception):
    """``close()`` has begun: the queue accepts no more jobs."""

    accepted: int = 0


class DuplicateJob(Exception):
    """A job with this idempotency key (or this id) was accepted before: ``job_id`` is its id."""

    accepted: int = 0

    def __init__(self, job_id: str, message: str) -> None:
        super().__init__(message)
        self.job_id = job_id
