"""The contract suite on ``executor="process"``: the test's handler stays in the parent.

The contract tests hand the queue closures (a ``Recorder``, a lambda), which cannot
travel to a child process. Rather than rewrite them, the ``final-process`` tier gives
the queue ``relay``, an importable handler: the queue sends each attempt to one of its
children as it would any handler's, and ``relay``, running there, hands the job back
over a socket to the parent, where the test's closure runs and its return or exception
travels back. So every part of the process plumbing is exercised (the dispatch to a
child, the result and the error coming back, the timeout that kills the child); only
the handler's body runs in the parent. The kill of a child, its death and its
``current_attempt()`` are tested with real handlers in ``tests/test_final_processes.py``.

One handler at a time per test process (``serve``): each contract test runs one queue
at a time. The socket is a Unix socket named after the parent's pid, which a child
knows (``multiprocessing.parent_process()``).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import tempfile
import threading
from collections.abc import Callable
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

_lock = threading.Lock()
_handler: Callable[[Any], object] | None = None
_listener: Listener | None = None
_to_parent: Connection | None = None  # in a child: its connection, opened at first use


def _address(pid: int) -> str:
    return os.path.join(tempfile.gettempdir(), f"final-relay-{pid}.sock")


def serve(handler: Callable[[Any], object]) -> None:
    """From now on, jobs relayed by this process's children run ``handler`` here."""
    global _handler, _listener
    with _lock:
        _handler = handler
        if _listener is None:
            address = _address(os.getpid())
            if os.path.exists(address):
                os.unlink(address)  # left by an earlier process with this pid
            _listener = Listener(address, "AF_UNIX")
            threading.Thread(target=_accept, args=(_listener,), daemon=True).start()


def relay(job: Any) -> None:
    """The handler the queue runs in its children: the parent's handler, by proxy."""
    global _to_parent
    if _to_parent is None:
        parent = multiprocessing.parent_process()
        assert parent is not None and parent.pid is not None, "relay runs in a child"
        _to_parent = Client(_address(parent.pid), "AF_UNIX")
    _to_parent.send(job)
    error: bytes | None = _to_parent.recv()
    if error is not None:
        raise pickle.loads(error)


def _accept(listener: Listener) -> None:
    while True:
        conn = listener.accept()
        threading.Thread(target=_answer, args=(conn,), daemon=True).start()


def _answer(conn: Connection) -> None:
    """Run the handler for one child's jobs, one at a time, as the child sends them."""
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return  # the child has ended, or was killed
        with _lock:
            handler = _handler
        error: bytes | None = None
        try:
            assert handler is not None
            handler(job)
        except BaseException as exc:
            error = pickle.dumps(exc)
        try:
            conn.send(error)
        except OSError:
            return  # its child was killed meanwhile (a timeout): nobody waits
