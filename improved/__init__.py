"""The improved tier: bounded priority lanes, retries, timeouts, metrics. See job_queue.py."""

from improved.job_queue import (
    Attempt,
    Job,
    JobQueue,
    Metrics,
    Priority,
    QueueClosed,
    QueueFull,
    backoff_delay,
    current_attempt,
)

__all__ = [
    "Attempt",
    "Job",
    "JobQueue",
    "Metrics",
    "Priority",
    "QueueClosed",
    "QueueFull",
    "backoff_delay",
    "current_attempt",
]
