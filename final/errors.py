"""The exceptions the final tier raises to its callers for a job it cannot accept.

A leaf, like ``final/jobs.py``: every layer may raise or catch these.
"""

from __future__ import annotations

__all__ = [
    "ClaimLost",
    "DuplicateJob",
    "NotADeadLetter",
    "QueueClosed",
    "QueueFull",
    "UnknownJob",
]


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


class NotADeadLetter(KeyError):
    """``retry_dead`` of an id that is not in the dead letters: ``args[0]`` is the id."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id

    def __str__(self) -> str:
        # KeyError's own str() is the repr of its argument, right for a bare key but
        # not for a sentence: that printed in double quotes, the id quoted inside.
        return f"job {self.job_id!r} is not in the dead letters"


class UnknownJob(KeyError):
    """``cancel`` of an id the queue does not know: ``args[0]`` is the id."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id

    def __str__(self) -> str:
        return f"no job with id {self.job_id!r} was accepted by this queue"


class ClaimLost(Exception):
    """``complete(connection)`` of an attempt that no longer holds its job's claim.

    Its lease passed and another process took the job (or this one timed the attempt
    out): whatever the caller's transaction wrote for this attempt must not commit.
    The caller rolls back; the job's other attempt is the one that counts. ``job_id``
    is the job's id.
    """

    def __init__(self, job_id: str, message: str) -> None:
        super().__init__(message)
        self.job_id = job_id
