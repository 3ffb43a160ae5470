"""Run the HTTP app (``final/http.py``) under uvicorn, with a shutdown that loses nothing.

The first SIGINT or SIGTERM stops accepting: ``POST /jobs`` answers 503 and
``/healthz`` says draining, uvicorn stops listening and lets the requests it is
answering finish. Then the queue stops taking jobs from its lanes, the attempts
already running get ``grace`` seconds to finish, and every job not run stays on disk
for the next start. A second signal exits at once. Either way nothing answered with
201 is lost: with a ``path``, ``enqueue`` returns only once the job is committed, and
an attempt cut short is counted on disk and runs again at the next start.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from final.arguments import load_handler
from final.http import HttpState, create_app, instrument
from final.job_queue import JobQueue
from final.jobs import Job
from final.validation import check_seconds

__all__ = ["load_handler", "serve"]

logger = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn's server, with our signals: the first drains, the second exits at once."""

    def __init__(
        self, config: uvicorn.Config, state: HttpState, stop_queue: Callable[[], None]
    ) -> None:
        super().__init__(config)
        self._state = state
        self._stop_queue = stop_queue

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # serve() installs handle_exit for its whole run, the queue's drain included;
        # uvicorn's own capture would re-raise the signal at the end and kill us there.
        yield

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            # No logging here: a signal handler may interrupt a thread holding its lock.
            os.write(2, f"second {signal.Signals(sig).name}: exiting at once\n".encode())
            os._exit(128 + sig)
        self.should_exit = True  # first: a second signal may interrupt what follows
        # 503 from now on (it only sets an event), and no new attempt starts: the
        # attempts running now are the in-flight jobs the grace period is for.
        self._state.stop_accepting()
        # On a thread of its own: close() takes the queue's lock, and logging its own,
        # which a signal handler must not wait for.
        threading.Thread(target=self._stop_queue, name="final-drain").start()


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    # Listening before uvicorn starts, so that a client told the address is queued in
    # the backlog rather than refused.
    sock.listen(2048)
    return sock


def serve(
    handler: Callable[[Job], object],
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    token: str | None = None,
    grace: float = 10.0,
    access_log: bool = False,
    **queue_options: Any,
) -> None:
    """Serve a JobQueue of ``handler`` over HTTP until SIGINT or SIGTERM.

    ``queue_options`` go to ``JobQueue`` (``path``, ``workers``, ``queue_size``...).
    Raises ``ValueError`` for a ``grace`` that is not a finite number of seconds >= 0
    or a queue option ``JobQueue`` refuses, ``OSError`` if the address cannot be
    bound, and ``StoreError`` if the ``path`` is not a queue of ours or is open in
    another process.
    """
    # Checked before the queue starts, not where the grace is first used, after it.
    check_seconds("grace", grace)
    registry = CollectorRegistry()
    state = HttpState(registry)
    queue = JobQueue(instrument(handler, state), **queue_options)
    try:
        app = create_app(queue, token=token, state=state, registry=registry)
        sock = _bind(host, port)
    except BaseException:
        queue.close(timeout=0)
        raise
    # On disk, what is queued waits for the next start; in memory it would be lost, so
    # without a path the queued jobs get the grace period too.
    durable = queue_options.get("path") is not None or queue_options.get("dsn") is not None
    server = _Server(_config(app, grace, access_log), state, lambda: _stop(queue, grace, durable))
    previous = {s: signal.signal(s, server.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        _log_listening(sock, queue_options.get("path"), token)
        server.run(sockets=[sock])
        _drain(queue, grace, durable)
    finally:
        queue.close(timeout=0)  # a no-op after a clean stop; a failed start leaves no thread
        sock.close()
        for sig, handler_before in previous.items():
            signal.signal(sig, handler_before)


def _config(app: FastAPI, grace: float, access_log: bool) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_level=logging.getLogger().getEffectiveLevel(),
        access_log=access_log,
        timeout_graceful_shutdown=max(1, math.ceil(grace)),  # it takes whole seconds
        server_header=False,
    )


def _log_listening(sock: socket.socket, path: object, token: str | None) -> None:
    # Tests and scripts wait for this line to learn the port (``--port 0``).
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    logger.info(
        "listening on http://%s:%d (path=%s, token %s)",
        shown,
        bound_port,
        path,
        "required" if token else "not required",
    )


def _stop(queue: JobQueue, grace: float, durable: bool) -> None:
    """At the first signal, on a thread of its own: with a path, no new attempt starts."""
    logger.info("signal: draining; running attempts get %ss (a second signal exits now)", grace)
    if durable:
        queue.close(timeout=0)


def _drain(queue: JobQueue, grace: float, durable: bool) -> None:
    """Once the server has stopped: give the attempts (in memory, the queued jobs too)
    ``grace`` seconds, and log what became of the jobs."""
    if durable:
        queue.close(timeout=0)  # as _stop did, if a signal stopped the server
    queue.close(timeout=grace)
    m = queue.metrics()
    logger.info(
        "stopped: %d completed, %d failed, %d still running, %d lost%s",
        m.completed,
        m.failed,
        m.in_flight,
        m.lost,
        " (what did not finish runs at the next start)" if durable else "",
    )
