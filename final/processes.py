"""Handlers in child processes: ``JobQueue(handler, executor="process")``.

Threads share one interpreter, and with it the GIL: a handler that computes in pure
Python holds it, and a second worker thread only waits its turn. Child processes each
have their own, so ``workers`` of them use ``workers`` cores. They bring two more things
threads cannot have: a timeout that really stops a hung handler (its child is killed),
and a crash (a segfault in a C extension, the out-of-memory killer) that takes down one
attempt, not the queue.

How it works. The queue keeps its worker threads, its lanes and its store in the parent;
each worker thread, instead of calling the handler, hands the attempt to one of the
``ProcessPool``'s long-lived children and waits for its answer. A child runs one attempt
at a time, so at most ``workers`` run at once, as with threads.

- The handler travels by name. A child imports it by its module and qualified name, so
  ``check_importable`` refuses, at construction, what cannot be imported that way: a
  lambda, a function defined inside another, a function of ``__main__`` (the script run
  is imported again in the child under another name, ``__mp_main__``), or anything that
  importing by name does not give back (a callable instance, a decorator that did not
  keep the name). The job travels pickled, as bytes through a pipe, and the answer
  comes back the same way: some tens of microseconds per job on top of what a thread
  costs (``make bench`` measures it on no-op jobs).
- The start method is ``forkserver`` (``spawn`` where there is none, as on Windows).
  Never ``fork``: the queue has threads (workers, the scheduler, the store's writer),
  and a fork copies the locks they hold at that instant into a child where nobody will
  ever release them. ``spawn`` is safe but starts a fresh interpreter for each child
  and imports everything again (about 115 ms a child on a 2-core machine), paid again
  for every child a timeout or a crash replaces. ``forkserver`` starts one fresh,
  single-threaded server process the first time, which imports ``final``, and each
  child is then forked from it (about 11 ms): safe, and cheap to replace. That
  server is ``multiprocessing``'s, one per interpreter, shared by every queue; it holds
  no job, and it ends when the interpreter does (or when it dies: it watches a pipe).
  As with any ``multiprocessing`` program, a script that creates a queue must do so
  under ``if __name__ == "__main__":``, since the script is imported again in the child.
- A timeout kills. When an attempt passes its deadline, the worker thread waiting for it
  sends its child ``SIGKILL`` at once (0.1 s after the deadline, so that the queue's
  own timer has the first word and counts the attempt as timed out), and a fresh child
  takes its place. No ``SIGTERM`` first: the handler had ``current_attempt().time_left()``
  to stop on its own, a handler stuck in C code would not run a Python signal handler
  anyway, and the child holds nothing the parent needs back: the job's state is the
  parent's. So the child running a hung attempt is gone within ``job_timeout`` + 0.1 s
  and a little scheduling.
- A death fails one attempt. When a child dies (``os._exit``, a signal, the kernel's
  out-of-memory killer), its pipe reads end-of-file; the attempt it ran fails with
  ``ChildDied``, whose message says how (``exit code 1``, ``killed by SIGSEGV``), and is
  retried or dead-lettered like any failure. A fresh child takes its place.
- No child outlives the queue. ``close()`` stops the idle children and each busy one
  once its attempt ends. If the parent dies, even by ``kill -9``, the children must
  notice by themselves: a thread in each child waits on a pipe that only the parent
  holds open (``multiprocessing``'s parent sentinel), and end-of-file (the kernel
  closes it with the parent) ends the child at once with ``os._exit``, even in the
  middle of an attempt. Why not ``prctl(PR_SET_PDEATHSIG)``:
  it is Linux only, it fires when the *thread* that started the child ends, not the
  process (and worker threads come and go here), and under ``forkserver`` the child's
  parent is the server, not the queue. The pipe is portable and exact. At interpreter
  exit the queue's exit hook closes it, children included. Children ignore ``SIGINT``:
  Ctrl-C in a terminal reaches the whole process group, and it is the parent's to
  decide what an interrupt does to the attempts in flight.
- A fork of the parent lets the children be. After ``os.fork()`` (a pre-fork server
  whose master made the queue), the copy's exit would otherwise ``SIGTERM`` them, as
  ``multiprocessing`` does to the daemonic children it lists, and its copy of their
  pipes would keep them alive after the parent's death; an after-fork hook drops both.

What a child cannot do: the handler's ``current_attempt()`` in a child gives ``job``,
``number``, ``deadline``, ``expired`` and ``time_left()``; ``abandoned`` is always False
there (an abandoned attempt's child is killed instead). Anything that needs the parent's
queue object (``join``, ``close``, a queue created in the parent) is not in the child.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

__all__ = [
    "START_METHOD",
    "ChildDied",
    "ProcessPool",
    "check_importable",
    "describe_exit",
]

logger = logging.getLogger(__name__)

START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
_KILL_AFTER = 0.1  # seconds past the deadline before the child is killed: see the docstring
_START_PATIENCE = 60.0  # seconds a new child may take to import the handler and say so
_STOP_PATIENCE = 5.0  # seconds an idle child may take to leave before it is killed

# What a child gets per attempt: call(handler, *args); the queue decides what args are.
Call = Callable[..., object]


class ChildDied(Exception):
    """The child process that ran an attempt died before it answered."""


class RemoteError(Exception):
    """A handler's exception that could not be pickled back: its type and message."""


class _RemoteTraceback(Exception):
    """The child's traceback, as the ``__cause__`` of the exception raised in the parent
    (as ``concurrent.futures.ProcessPoolExecutor`` does): logs show where it happened."""

    def __str__(self) -> str:
        return f'\n"""\n{self.args[0]}"""'


def check_importable(handler: object) -> tuple[str, str]:
    """The module and qualified name a child imports ``handler`` by.

    Raises ``TypeError``, saying what to do, when importing that name does not give
    back ``handler`` itself: a lambda, a nested function or closure, a function of
    ``__main__``, a callable instance, a bound method.
    """
    module = getattr(handler, "__module__", None)
    qualname = getattr(handler, "__qualname__", None)
    move = "define it with def at the top level of a module that the worker can import"
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise TypeError(
            f"executor='process' sends the handler to child processes by its import name, "
            f"and a {type(handler).__name__} instance has none: {move}"
        )
    if "<lambda>" in qualname:
        raise TypeError(f"executor='process' cannot send a lambda to a child process: {move}")
    if "<locals>" in qualname:
        raise TypeError(
            f"executor='process' cannot send {qualname}, a function defined inside "
            f"another (a closure), to a child process: {move}, and pass what it "
            "captured in the job's payload"
        )
    if module == "__main__":
        raise TypeError(
            f"executor='process' cannot send {qualname} from __main__: a child process "
            f"({START_METHOD}) imports the script again under another name, so the "
            f"function it finds is not this one; {move} and import it in the script"
        )
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise TypeError(
            f"executor='process' cannot import the handler as {module}.{qualname} ({exc}): {move}"
        ) from None
    if found is not handler:
        raise TypeError(
            f"importing {module}.{qualname} does not give back this handler (a bound "
            "method, or a decorator that does not keep the name?); executor='process' "
            f"sends it by that name: {move}"
        )
    return module, qualname


def describe_exit(exitcode: int | None) -> str:
    """How a child ended, in words: ``exit code 1``, ``killed by SIGSEGV``."""
    if exitcode is None:
        return "its end could not be observed"
    if exitcode >= 0:
        return f"exit code {exitcode}"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    return f"killed by {name}"


class _Child:
    """One child process and the parent's end of the pipe to it."""

    __slots__ = ("conn", "process")

    def __init__(self, process: Any, conn: Connection) -> None:
        self.process = process
        self.conn = conn

    @property
    def pid(self) -> int:
        pid: int = self.process.pid
        return pid

    def kill(self) -> None:
        """SIGKILL, then reap it. Safe on a child that has already ended."""
        if self.process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):  # gone, not yet reaped
                os.kill(self.pid, signal.SIGKILL)
        self.process.join()
        self.conn.close()
        _live.discard(self)

    def stop(self) -> None:
        """Ask an idle child to leave, and reap it; kill it if it does not."""
        with contextlib.suppress(OSError):  # it has died already: reaped below
            self.conn.send(None)
        self.process.join(_STOP_PATIENCE)
        self.kill()


class ProcessPool:
    """``size`` long-lived child processes, each running one call at a time.

    ``run(args, deadline)`` sends ``args`` to an idle child, which calls
    ``call(handler, *args)``; ``handler`` is imported in the child by its name (see
    ``check_importable``, which the constructor applies), and ``call`` must be a
    module-level function. Thread-safe: each worker thread runs on a child of its own.
    """

    def __init__(self, handler: Callable[..., object], size: int, call: Call) -> None:
        """Starts the children and waits until each has imported the handler.

        Raises ``TypeError`` for a handler that cannot travel by name, and
        ``RuntimeError`` when a child cannot import it (its traceback in the message).
        """
        self._module, self._qualname = check_importable(handler)
        self._call = call
        self._size = size
        self._context: Any = multiprocessing.get_context(START_METHOD)
        _preload_final()
        # Guards the two fields below; never held while talking to a child.
        self._lock = threading.Lock()
        self._idle: list[_Child] = []  # started, waiting for an attempt
        self._closing = False
        try:
            for child in self._start(size):
                self._give_back(child)
        except BaseException:
            self.close()
            raise

    def run(self, args: tuple[object, ...], deadline: float | None) -> None:
        """Run one call in a child; return when it returned, raise what it raised.

        Raises ``ChildDied`` when the child died first (the message says how), and
        ``TimeoutError`` when ``deadline`` (``time.monotonic()``) passed first: the
        child has then been killed. Either way a fresh child takes its place.
        """
        child = self._take()
        try:
            child.conn.send(args)
            if not _wait(child.conn, deadline):
                child.kill()
                self._replace()
                raise TimeoutError(
                    f"the attempt ran past its deadline; its child process (pid "
                    f"{child.pid}) was killed"
                )
            reply = child.conn.recv()
        except (EOFError, OSError):
            child.kill()  # it is dead already: this reaps it and reads how it ended
            self._replace()
            how = describe_exit(child.process.exitcode)
            raise ChildDied(
                f"the child process (pid {child.pid}) running the attempt died: {how}"
            ) from None
        self._give_back(child)
        if reply is not None:
            raise _rebuild(*reply)

    def pids(self) -> list[int]:
        """The idle children's process ids (for tests and the curious)."""
        with self._lock:
            return [child.pid for child in self._idle]

    def close(self) -> None:
        """Stop the idle children now, and each busy one when its call returns.

        Returns without waiting for busy children; safe to call twice.
        """
        with self._lock:
            self._closing = True
            idle, self._idle = self._idle, []
        for child in idle:
            child.stop()

    def _take(self) -> _Child:
        with self._lock:
            while self._idle:
                child = self._idle.pop()
                if child.process.is_alive():
                    return child
                # Died while idle (killed from outside): no attempt of its to fail.
                logger.warning(
                    "child process %d died while idle: %s",
                    child.pid,
                    describe_exit(child.process.exitcode),
                )
                child.kill()
        (child,) = self._start(1)
        return child

    def _give_back(self, child: _Child) -> None:
        with self._lock:
            if not self._closing and len(self._idle) < self._size:
                self._idle.append(child)
                return
        child.stop()

    def _replace(self) -> None:
        """Start a fresh child for one that was killed or died, unless closing."""
        with self._lock:
            if self._closing or len(self._idle) >= self._size:
                return
        try:
            (child,) = self._start(1)
        except RuntimeError:
            logger.exception("could not start a child process to replace one that ended")
            return
        self._give_back(child)

    def _start(self, count: int) -> list[_Child]:
        """Start ``count`` children together, and wait until each is ready."""
        started: list[_Child] = []
        for _ in range(count):
            mine, theirs = self._context.Pipe()
            process = self._context.Process(
                target=_child_main,
                args=(theirs, self._module, self._qualname, self._call),
                name=f"final-child-{self._qualname}",
                # Daemonic, so that multiprocessing's own exit hook ends any child the
                # queue's exit hook did not (see close_at_exit in final/job_queue.py).
                daemon=True,
            )
            process.start()
            theirs.close()  # the child's end lives in the child only: EOF means it died
            child = _Child(process, mine)
            _live.add(child)
            started.append(child)
        for child in started:
            failure = None
            if not child.conn.poll(_START_PATIENCE):
                failure = f"it did not answer within {_START_PATIENCE}s"
            else:
                try:
                    kind, text = child.conn.recv()
                    if kind != "ready":
                        failure = f"it could not import the handler:\n{text}"
                except EOFError:
                    child.process.join()
                    failure = (
                        f"it died ({describe_exit(child.process.exitcode)}) before it could "
                        "import the handler; its error is on stderr. A script that creates "
                        "the queue outside `if __name__ == '__main__':` does this: each "
                        "child imports the script again"
                    )
            if failure is not None:
                for other in started:
                    other.kill()
                raise RuntimeError(
                    f"a child process for {self._module}.{self._qualname} failed to start: "
                    f"{failure}"
                )
        return started


# Every child started in this process and not yet reaped, whichever pool it is in and
# whether a worker thread holds it or not: what a forked copy of this process must let go.
_live: set[_Child] = set()


def _let_go_after_fork() -> None:
    """In the child of an ``os.fork()`` of the parent: the pools' children are not ours.

    The fork copies ``multiprocessing``'s list of the process's children, and at a
    normal exit its hook sends ``SIGTERM`` to every daemonic one in it: the parent's
    children, attempts and all. So they leave that list here. The fork also copies
    the parent's ends of their pipes, and the write end of the pipe each child
    watches for the parent's death (see ``_watch_parent``): held open here, it
    would keep a child alive after the real parent's ``kill -9`` for as long as this
    copy lives. Those are closed; closing a copy of a descriptor sends nothing (the
    finalizer that would close them in the parent never runs here). No
    ``poll`` or ``join`` of the parent's children either: those read the pipes whose
    news (a child's exit code) is the parent's. Runs alone, without the pools' locks
    (another thread of the parent may have held them at the fork).
    """
    for child in list(_live):
        multiprocessing.process._children.discard(child.process)  # type: ignore[attr-defined]
        # The popen's own finalizer would close them, but refuses in another process:
        # its arguments are those descriptors (the sentinel, the parent's lifeline end).
        finalizer = getattr(child.process._popen, "finalizer", None)
        for fd in getattr(finalizer, "_args", ()):
            if isinstance(fd, int):
                with contextlib.suppress(OSError):
                    os.close(fd)
        child.conn.close()
    _live.clear()


os.register_at_fork(after_in_child=_let_go_after_fork)


def _preload_final() -> None:
    """Have the fork server import ``final`` before it forks the first child.

    Importing ``final`` takes a child 100-150 ms (most of a child's start), paid again
    for every child a timeout or a crash replaces, and counted in the deadline of the
    attempt that waits for it. Imported once in the server, it is in every child for
    free. Only ``final``, whose import starts nothing: the handler's own module might
    open a connection or a thread at import, which forked children must not share.
    The list is ``multiprocessing``'s, one per interpreter: we add to it rather than
    replace what the application may have put there, and only before the server has
    started (a running server keeps what it has).
    """
    if START_METHOD != "forkserver":
        return
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    wanted = list(getattr(server, "_preload_modules", None) or ["__main__"])
    if server is None or getattr(server, "_forkserver_pid", None) is not None:
        return
    if "final" not in wanted:
        forkserver.set_forkserver_preload([*wanted, "final"])


def _wait(conn: Connection, deadline: float | None) -> bool:
    """Wait for the child's answer (or its death); False once the deadline has passed
    by ``_KILL_AFTER``."""
    if deadline is None:
        return conn.poll(None)
    while True:
        left = deadline + _KILL_AFTER - time.monotonic()
        if conn.poll(max(0.0, left)):
            return True
        if left <= 0:
            return False


def _rebuild(pickled: bytes | None, text: str, trace: str) -> BaseException:
    """The handler's exception, as the parent raises it: the same type when it pickles."""
    error: BaseException = RemoteError(text)
    if pickled is not None:
        # A class the parent cannot rebuild: its words still tell.
        with contextlib.suppress(Exception):
            error = pickle.loads(pickled)
    error.__cause__ = _RemoteTraceback(trace)
    return error


# -- the child's side -------------------------------------------------------------------


def _child_main(conn: Connection, module: str, qualname: str, call: Call) -> None:
    """A child's life: import the handler, then run one call at a time until told to
    stop (``None``), or until the parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C does
    try:
        handler: Any = importlib.import_module(module)
        for part in qualname.split("."):
            handler = getattr(handler, part)
    except BaseException:
        conn.send(("failed", traceback.format_exc()))
        return
    _watch_parent()
    conn.send(("ready", ""))
    me = os.getpid()
    while True:
        try:
            args = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone, between two attempts
        if args is None:
            return
        reply: tuple[bytes | None, str, str] | None = None
        try:
            call(handler, *args)
        except BaseException as exc:  # SystemExit too: it fails the attempt, not the child
            reply = (_pickled(exc), f"{type(exc).__name__}: {exc}", traceback.format_exc())
        if os.getpid() != me:
            # A fork made by the handler came back here. It must not answer: the parent
            # would take its reply for this attempt's, and then for the next one's, and
            # it would read the pipe beside the child. It has no lifeline either.
            os._exit(0)
        conn.send(reply)


def _watch_parent() -> None:
    """The child's lifeline: a thread that ends the child the moment the parent dies.

    ``multiprocessing`` gives each child a sentinel, the read end of a pipe whose
    write end only the parent holds; the kernel closes it with the parent, even on
    ``kill -9``, and the sentinel reads end-of-file. The child then leaves at once,
    attempt or not, since nobody wants its result. A thread of its own, so that the
    main thread reads the attempts itself: no hand-off between threads per job.
    """
    parent = multiprocessing.parent_process()
    if parent is None:  # pragma: no cover - a child always has one
        return
    sentinel = parent.sentinel

    def watch() -> None:
        multiprocessing.connection.wait([sentinel])
        os._exit(0)

    threading.Thread(target=watch, name="final-child-lifeline", daemon=True).start()


def _pickled(error: BaseException) -> bytes | None:
    try:
        return pickle.dumps(error)
    except Exception:  # a lock or a socket in its arguments: the text will do
        return None
