"""What every benchmarked system is opened as: the types ``scenarios`` and ``peers`` share.

A leaf: it imports no other module of ``benchmarks``, so that the scenarios and the
peers' adapters both build on it without importing each other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

Handler = Callable[[int], None]
"""Runs job number ``i``; ``None`` in its place means a no-op job."""


class Session(Protocol):
    """One open system: a queue and its workers.

    ``submit(i)`` hands it job number ``i``, ``submit_many(ids)`` hands it several the
    way the system takes a batch, and ``drain()`` returns once every job submitted has
    run. Leaving the ``with`` block that opened it shuts it down.
    """

    def submit(self, i: int) -> None: ...

    def submit_many(self, ids: Sequence[int]) -> None: ...

    def drain(self) -> None: ...


System = Callable[[Handler | None, int, Path], contextlib.AbstractContextManager[Session]]
"""Opens a system: (handler, or None for no-op jobs; workers; a scratch directory)."""


def noop(_: object) -> None:
    """The no-op job of the throughput figures."""


__all__ = ["Handler", "Session", "System", "noop"]
