"""The naive tier: one unbounded FIFO and a few worker threads. See job_queue.py."""

from naive.job_queue import Job, JobQueue, Priority, QueueClosed, QueueFull

__all__ = ["Job", "JobQueue", "Priority", "QueueClosed", "QueueFull"]
