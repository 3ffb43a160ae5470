"""Checked argparse types for ``python -m final``: a value out of range is refused by
argparse itself, naming the option, before anything starts.

``type=int`` alone would let ``--port 99999`` through (the socket layer wraps it modulo
65536 and listens elsewhere), and ``type=float`` lets ``nan``, ``inf`` and negative
seconds through, to fail later, or never.

The queue's own options are checked by the library's rules (``final/validation.py``),
so ``--queue-size 0`` is refused with the words ``JobQueue(queue_size=0)`` would use,
and take their defaults from ``JobQueue.__init__`` itself: see ``add_queue_options``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import math
from collections.abc import Callable
from typing import Any

from final.job_queue import JobQueue
from final.jobs import Job
from final.validation import check_int, check_seconds

__all__ = [
    "QUEUE_OPTIONS",
    "add_queue_options",
    "integer",
    "load_handler",
    "number",
    "queue_defaults",
    "queue_options",
    "seconds",
    "text",
    "whole",
]


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def whole(name: str, *, minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number that ``check_int(name, value, minimum=minimum)``
    accepts; its refusal is argparse's error for the option, in the library's words."""

    def parse(text: str) -> int:
        value = _int(text)
        try:
            check_int(name, value, minimum=minimum)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    return parse


def seconds(name: str, *, positive: bool = False) -> Callable[[str], float]:
    """An argparse type: a number that ``check_seconds(name, value, positive=positive)``
    accepts; its refusal is argparse's error for the option, in the library's words."""

    def parse(text: str) -> float:
        value = _float(text)
        try:
            check_seconds(name, value, positive=positive)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    return parse


def integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type for a count that is not the queue's: a whole number from
    ``minimum`` to ``maximum`` (inclusive)."""
    bound = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"

    def parse(text: str) -> int:
        value = _int(text)
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


def number(*, positive: bool = False) -> Callable[[str], float]:
    """An argparse type for a quantity that is not the queue's: a finite number,
    > 0 if ``positive``, else >= 0."""
    bound = "> 0" if positive else ">= 0"

    def parse(text: str) -> float:
        value = _float(text)
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text}")
        return value

    return parse


def text(name: str) -> Callable[[str], str]:
    """An argparse type: a string that is not empty, as ``JobQueue`` wants its ``name``."""

    def parse(value: str) -> str:
        if not value:
            raise argparse.ArgumentTypeError(f"{name} must not be empty")
        return value

    return parse


# Each JobQueue option the command line takes: the library's rule for it (the same
# call JobQueue.__init__ makes; for a string, its choices) and what it means. ``path``
# is not here: each command says where its file is.
QUEUE_OPTIONS: dict[str, tuple[Callable[[str], Any] | tuple[str, ...], str]] = {
    "workers": (whole("workers", minimum=1), "worker threads"),
    "queue_size": (whole("queue_size", minimum=1), "capacity of each priority lane"),
    "max_retries": (whole("max_retries", minimum=0), "retries after a job's first attempt"),
    "backoff": (seconds("backoff"), "seconds before a first retry, doubled for each next one"),
    "max_backoff": (seconds("max_backoff"), "most seconds one retry waits"),
    "job_timeout": (
        seconds("job_timeout", positive=True),
        "seconds one attempt may run (without the flag: as long as it takes)",
    ),
    "fairness": (
        whole("fairness", minimum=0),
        "picks in a row from higher lanes before a waiting lower lane's job goes next",
    ),
    "rate_limit": (
        seconds("rate_limit", positive=True),
        "most attempts started per second (without the flag: no limit)",
    ),
    "durability": (
        ("power", "process"),
        "what an acknowledged job survives: a power loss (fsync at each commit), or a"
        " crash of the process",
    ),
    "history": (whole("history", minimum=1), "settled jobs the queue remembers"),
    "retention": (
        seconds("retention"),
        "seconds a completed job stays on disk after it completed (dead letters stay);"
        " a very large number keeps every job",
    ),
    "dsn": (
        text("dsn"),
        "PostgreSQL connection URI: the queue lives there, shared by every process that"
        " names it (instead of a file)",
    ),
    "queue": (text("queue"), "the queue's name in that database (with --dsn)"),
    "executor": (
        ("thread", "process"),
        "where the handler runs: on worker threads, or in worker processes (for"
        " CPU-bound handlers; the handler must be importable by its name)",
    ),
    "lease": (
        seconds("lease", positive=True),
        "seconds after which the jobs of a process that stopped heartbeating are"
        " claimed by another (with --dsn)",
    ),
}


def load_handler(spec: str) -> Callable[[Job], object]:
    """The callable named by ``"package.module:function"`` (an attribute path may follow
    the colon, as in ``"module:obj.method"``), as uvicorn and celery name an app."""
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise ValueError(f"a handler is named as module:function, got {spec!r}")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r} for the handler: {exc}") from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"{module_name!r} has no attribute {attribute!r}") from None
    if not callable(target):
        raise ValueError(f"{spec} is not callable")
    handler: Callable[[Job], object] = target
    return handler


def queue_defaults() -> dict[str, Any]:
    """Each keyword option of ``JobQueue.__init__`` and its default, read from its
    signature: the command line never repeats them."""
    parameters = inspect.signature(JobQueue.__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def add_queue_options(group: argparse._ActionsContainer) -> None:
    """Add ``--workers``, ``--queue-size``... (``QUEUE_OPTIONS``) to ``group``, each
    with ``JobQueue``'s default. A value of ``None`` (no job timeout, no rate limit)
    is the default only: there is no way to ask for it on the command line."""
    defaults = queue_defaults()
    for name, (rule, meaning) in QUEUE_OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(rule, tuple):
            group.add_argument(flag, choices=rule, default=defaults[name], help=meaning)
        else:
            group.add_argument(flag, type=rule, default=defaults[name], help=meaning)


def queue_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``JobQueue`` keyword arguments parsed by ``add_queue_options``."""
    return {name: getattr(args, name) for name in QUEUE_OPTIONS}
