"""Where the final tier keeps what must outlive its memory.

The queue keeps its working state itself: the lanes, the retry timers, the running
attempts, and a bounded record of recently settled jobs. It tells its store about
every step in a job's life, and the store's one job is to make those steps survive
what the queue promises, and to answer for what memory no longer holds.

The queue calls a store from any thread, and a store serialises its own writes.
What each write must survive decides how it is called:

- ``add`` (the jobs of one ``enqueue`` or ``enqueue_many``), ``revived`` (a
  replay from the dead letters) and ``cancelled`` (a job called off before it
  started) are durable when they return, because returning is how the queue
  acknowledges them (a cancel that a crash undid would run the job). The queue
  calls them outside its lock, so that a disk write never stalls the other threads.
- ``claimed`` (an attempt about to start, with its attempt count) survives the
  death of the process when it returns, so that a handler which kills the process
  is still counted, and its job ends in the dead letters instead of crashing every
  restart for ever. It need not survive a power loss, which takes the handler down
  too. Called outside the lock, before the handler runs, on every attempt: it must
  be cheap.
- ``retrying`` and ``settled`` may lag: losing one only means that a job runs once
  more after a crash, which at-least-once delivery allows. The queue calls them
  under its lock, so they must not block: a store buffers them.

And one that is not a write: ``released``, when the queue's memory lets go of
settled jobs. From then on the store answers for them (``find``, ``dead``), and a
store whose ``settled`` lags must answer from those records until their ends are
on disk: the disk would still say queued, or running, and a read must never go
back in time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from final.jobs import Record


class StoreError(Exception):
    """The file cannot be used as a queue: not ours, too new, locked, or unwritable."""

    accepted: int = 0  # enqueue_many: how many jobs before the failed commit were accepted


class DuplicateRow(Exception):
    """An insert hit the id or idempotency key of a job already on disk."""

    def __init__(self, job_id: str, first: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id
        self.first = first  # the id of the job already on disk


class Store(Protocol):
    """What the queue asks of its store. A queue takes one of its own as ``store=``:
    tests pass one that fails or is slow, wrapping ``SQLiteStore`` or ``MemoryStore``."""

    # Whether what the store is told outlives the process. The queue asks, because it
    # changes what the queue does: an enqueue is accepted only once a durable store
    # has it (written outside the queue's lock), and jobs that close(timeout) leaves
    # unrun wait in a durable store for the next start instead of being lost.
    durable: bool

    def add(self, records: Sequence[Record]) -> None: ...

    def claimed(self, record: Record) -> None: ...

    def retrying(self, record: Record, due_in: float) -> None: ...

    def settled(self, record: Record) -> None: ...

    def revived(self, record: Record) -> None: ...

    def cancelled(self, record: Record) -> None: ...

    def released(self, records: Sequence[Record]) -> None:
        """Memory lets go of these settled jobs: from now on the store answers for them,
        including while their ends still lag. Called under the queue's lock, once per
        batch let go of (a sixteenth of ``history``): it must not block."""
        ...

    def find(self, job_id: str) -> Record | None:
        """A settled job that memory no longer holds, or None."""
        ...

    def load(self) -> list[tuple[Record, float]]:
        """Every unsettled job, with the seconds left of its backoff, or until its
        run_at for a SCHEDULED one (0 if none, or due)."""
        ...

    def dead(self) -> list[Record]:
        """Every job in the dead letters, oldest first."""
        ...

    def close(self) -> None: ...


class MemoryStore:
    """The store of a queue without a ``path``: nothing outlives the process.

    Every write is a no-op, because there is nothing to write to: the queue's own
    memory is all there is. So a settled job that the queue's ``history`` has let
    go of is forgotten, its idempotency key with it, and a crash loses everything.
    """

    durable = False

    def add(self, records: Sequence[Record]) -> None:
        pass

    def claimed(self, record: Record) -> None:
        pass

    def retrying(self, record: Record, due_in: float) -> None:
        pass

    def settled(self, record: Record) -> None:
        pass

    def revived(self, record: Record) -> None:
        pass

    def cancelled(self, record: Record) -> None:
        pass

    def released(self, records: Sequence[Record]) -> None:
        pass

    def find(self, job_id: str) -> Record | None:
        return None

    def load(self) -> list[tuple[Record, float]]:
        return []

    def dead(self) -> list[Record]:
        return []

    def close(self) -> None:
        pass
