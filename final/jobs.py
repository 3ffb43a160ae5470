"""The job as data: what a job is, where it stands, and what the queue remembers of it.

A leaf: it imports nothing from the tier, so that the queue, every store and the HTTP
layer can share these types without importing each other.
"""

from __future__ import annotations

import datetime
import enum
import threading
import time
import uuid
from dataclasses import dataclass, field

__all__ = ["MAX_ERROR_LENGTH", "Job", "JobInfo", "Priority", "Record", "Status", "failure_text"]

MAX_ERROR_LENGTH = 2000  # characters of an error kept as last_error: the log has it whole


class Priority(enum.IntEnum):
    """How urgent a job is. Iteration order is the order a worker looks in."""

    HIGH = 2
    MEDIUM = 1
    LOW = 0


@dataclass(slots=True)
class Job:
    """One unit of work. The handler decides what ``payload`` means."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    payload: bytes = b""
    priority: Priority = Priority.MEDIUM
    idempotency_key: str | None = None  # a second job with this key is refused
    max_retries: int | None = None  # this job's own budget; None: the queue's
    run_at: datetime.datetime | None = None  # not started before this instant (timezone-aware)


class Status(enum.Enum):
    SCHEDULED = "scheduled"  # waiting for its run_at; holds no lane room and no worker
    QUEUED = "queued"  # waiting in its lane
    PROCESSING = "processing"  # an attempt is running
    RETRYING = "retrying"  # waiting out a backoff before its next attempt
    COMPLETED = "completed"  # succeeded
    FAILED = "failed"  # failed for good: in the dead letters
    CANCELLED = "cancelled"  # called off by cancel() before it started: never runs


@dataclass(frozen=True, slots=True)
class JobInfo:
    """What ``info(job_id)`` tells about one job. Times are ``time.time()`` values."""

    id: str
    priority: Priority
    status: Status
    attempts: int  # since it was accepted, or last replayed from the dead letters
    max_retries: int
    last_error: str | None
    idempotency_key: str | None
    enqueued_at: float
    started_at: float | None  # the latest attempt's start
    finished_at: float | None
    run_at: float | None = None  # the job's run_at as a time.time() value, if it has one


@dataclass(slots=True, eq=False)
class Record:
    """What the queue knows of one accepted job, and what a store keeps of it.

    Times are ``time.monotonic()`` values, cheap to read on the hot path and immune
    to clock changes; ``info()`` turns them into wall-clock times when asked.
    """

    job: Job
    max_retries: int
    status: Status = Status.QUEUED
    attempts: int = 0
    last_error: str | None = None
    enqueued: float = 0.0
    started: float | None = None  # the latest attempt's start
    finished: float | None = None
    ready: float = 0.0  # when it last entered its lane (or was enqueued)
    # The running attempt, while there is one: its token (0 once it timed out),
    # its deadline, and the worker thread running it.
    token: int = 0
    deadline: float | None = None
    runner: threading.Thread | None = None
    settled: int = 0  # its number in the order of settling, 0 while unsettled

    def info(self) -> JobInfo:
        to_wall = time.time() - time.monotonic()
        return JobInfo(
            self.job.id,
            self.job.priority,
            self.status,
            self.attempts,
            self.max_retries,
            self.last_error,
            self.job.idempotency_key,
            self.enqueued + to_wall,
            None if self.started is None else self.started + to_wall,
            None if self.finished is None else self.finished + to_wall,
            None if self.job.run_at is None else self.job.run_at.timestamp(),
        )


def failure_text(error: BaseException) -> str:
    """What ``last_error`` keeps of an attempt that raised ``error``: its type and message.

    A handler's message is anybody's text, and it goes to the store, the HTTP API and
    the dashboard: a lone surrogate (text decoded with ``surrogateescape``) cannot be
    encoded, and a NUL cannot be held by PostgreSQL, so either would fail the write that
    settles the job, and every read that serves it; both are written as escapes. A
    message longer than ``MAX_ERROR_LENGTH`` characters is cut (the log has it whole),
    and one whose ``str()`` itself raises is named by its type alone.
    """
    try:
        message = str(error)
    except Exception:
        message = "(its message could not be read)"
    text = f"{type(error).__name__}: {message}"
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = text.replace("\x00", "\\x00")
    if len(text) > MAX_ERROR_LENGTH:
        cut = len(text) - MAX_ERROR_LENGTH
        text = f"{text[:MAX_ERROR_LENGTH]}... ({cut} more characters)"
    return text
