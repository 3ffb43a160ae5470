"""The final tier: fairness, status, dead letters, idempotency, rate limiting. See job_queue.py."""

from final.errors import ClaimLost, NotADeadLetter, UnknownJob
from final.job_queue import (
    Attempt,
    DuplicateJob,
    Job,
    JobInfo,
    JobQueue,
    LaneMetrics,
    Metrics,
    Priority,
    QueueClosed,
    QueueFull,
    Status,
    StoreError,
    backoff_delay,
    current_attempt,
)
from final.shared_queue import SharedQueue  # JobQueue(dsn=...) builds one

__all__ = [
    "Attempt",
    "ClaimLost",
    "DuplicateJob",
    "Job",
    "JobInfo",
    "JobQueue",
    "LaneMetrics",
    "Metrics",
    "NotADeadLetter",
    "Priority",
    "QueueClosed",
    "QueueFull",
    "SharedQueue",
    "Status",
    "StoreError",
    "UnknownJob",
    "backoff_delay",
    "current_attempt",
]
