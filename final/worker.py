"""``python -m final worker``: this process runs jobs of a shared queue until stopped.

Start as many as you like, on as many machines, with the same ``--dsn`` and
``--queue``: each claims jobs as its threads free up. SIGTERM or SIGINT stops it
cleanly: no new claim, the jobs it claimed and had not started go back to the queue
at once (no attempt counted), the attempts in flight finish and settle, and the
process exits 0. A ``kill -9`` loses nothing either: another worker claims what it
held once ``--lease`` has passed, the attempt that died counted.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from final.job_queue import JobQueue
from final.jobs import Job

__all__ = ["run"]

logger = logging.getLogger(__name__)


def run(handler: Callable[[Job], object], **queue_options: Any) -> None:
    """Run ``JobQueue(handler, **queue_options)`` until SIGTERM or SIGINT, then stop it.

    ``queue_options`` must name a ``dsn``: a worker without one would run only the
    jobs it enqueued itself, and it enqueues none (``ValueError``). Raises what
    ``JobQueue`` raises for its options (``ValueError``, ``StoreError``).
    """
    if queue_options.get("dsn") is None:
        raise ValueError("a worker needs --dsn: the queue it serves lives in PostgreSQL")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    queue = JobQueue(handler, **queue_options)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        # Scripts and tests wait for this line: from here on, a signal stops cleanly.
        logger.info(
            "worker ready: queue %r, %d workers", queue_options.get("queue"), queue._workers
        )
        while not stop.wait(1.0):  # a timeout, so that the signal is seen promptly
            pass
        logger.info("signal: stopping; the attempts in flight finish first")
        queue.close(timeout=0)  # no new claim; what was claimed and not started goes back
        queue.close()  # the attempts in flight finish and settle
        m = queue.metrics()
        logger.info("stopped: %d completed, %d failed here", m.completed, m.failed)
    finally:
        queue.close(timeout=0)  # a no-op after a clean stop
        for sig, before in previous.items():
            signal.signal(sig, before)
