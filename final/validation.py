"""The rules every value given to the final tier must follow, in one place.

The library (``JobQueue`` and ``Job``), the command line (``final/arguments.py``) and
the HTTP API all check with these functions, so that a value is refused with the same
words wherever it comes from. Each raises ``TypeError`` for a value of the wrong type
and ``ValueError`` for one out of range, naming the option or field.
"""

from __future__ import annotations

import datetime
import math

from final.jobs import Job, Priority

__all__ = [
    "MAX_KEY_LENGTH",
    "MAX_RUN_AT_YEAR",
    "check_int",
    "check_job",
    "check_key",
    "check_run_at",
    "check_seconds",
    "check_timeout",
]

MAX_KEY_LENGTH = 1024  # for ids and idempotency keys: long enough for any real key
MAX_RUN_AT_YEAR = 9000  # a run_at later than this is refused: see check_run_at


def check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def check_seconds(name: str, value: object, *, positive: bool = False) -> None:
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > 0 if positive else value >= 0)
    )
    if not ok:
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number of seconds {bound}, got {value!r}")


def check_timeout(timeout: float | None) -> None:
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"timeout must be None or a number >= 0, got {timeout!r}")


def check_key(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not 0 < len(value) <= MAX_KEY_LENGTH:
        raise ValueError(f"{name} must have 1 to {MAX_KEY_LENGTH} characters, got {len(value)}")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            # Not text a file can hold: refused here, not when a commit it shares fails.
            raise ValueError(f"{name} must be valid Unicode, got a lone surrogate") from None


def check_job(job: object) -> None:
    if not isinstance(job, Job):
        raise TypeError(f"enqueue takes a Job, got {type(job).__name__}")
    if not isinstance(job.priority, Priority):
        raise TypeError(f"Job.priority must be a Priority, got {job.priority!r}")
    if not isinstance(job.payload, bytes):
        raise TypeError(f"Job.payload must be bytes, got {type(job.payload).__name__}")
    check_key("Job.id", job.id)
    if job.idempotency_key is not None:
        check_key("Job.idempotency_key", job.idempotency_key)
    if job.max_retries is not None:
        check_int("Job.max_retries", job.max_retries, minimum=0)
    if job.run_at is not None:
        check_run_at(job.run_at)


def check_run_at(run_at: object) -> None:
    """``TypeError`` unless a datetime; ``ValueError`` for a naive one, whose instant is
    unknown, or one after year ``MAX_RUN_AT_YEAR``."""
    if not isinstance(run_at, datetime.datetime):
        raise TypeError(f"Job.run_at must be a datetime, got {type(run_at).__name__}")
    if run_at.tzinfo is None or run_at.utcoffset() is None:
        raise ValueError(
            f"Job.run_at must be timezone-aware, got the naive datetime {run_at.isoformat()}"
            " (use datetime.now(timezone.utc) + timedelta(...))"
        )
    if run_at.year > MAX_RUN_AT_YEAR:
        # A date near datetime.max cannot come back from a file as a datetime (its
        # instant in UTC may be past year 9999), so the queue could not reopen.
        raise ValueError(
            f"Job.run_at must be in year {MAX_RUN_AT_YEAR} or before, got {run_at.isoformat()}"
        )
