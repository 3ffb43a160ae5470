"""The queue's moves on PostgreSQL: one function for each statement of ``pg_queries``.

Each function takes a psycopg 3 connection and runs on it. On a connection in
autocommit mode, a function of one statement commits on its own, in one round trip;
a function of several opens its own transaction. On a connection inside a
transaction (the caller's own, for effects that must commit with the job's), every
function joins that transaction, through a savepoint where it needs one, and
nothing it did is visible to other processes before the caller commits.

The moves of a job, and who makes them:

- ``enqueue`` inserts jobs (a producer), ``claim`` takes due jobs for a process,
  counting the attempt; ``complete``, ``retry``, ``fail``, ``give_back`` and ``extend``
  end or change an attempt, fenced by its claim token: each says whether it applied,
  and none applies once the claim has moved on.
- ``register``, ``heartbeat`` and ``deregister`` keep a process's row, which is how
  the others know its claims are alive; ``rescue`` takes back the claims of a process
  that stopped heartbeating (or of an attempt past its deadline), one rescuer at a
  time; ``prune`` deletes completed jobs past their retention.
- ``find``, ``dead_letters``, ``revive``, ``cancel``, ``unsettled`` and ``counts``
  answer ``status``, ``info``, ``dead_letters``, ``retry_dead``, ``cancel``, ``join``
  and the gauges for every job of the queue, wherever it ran.

Every time is the database server's; the functions take durations in seconds. The
functions raise what psycopg raises (``psycopg.OperationalError`` when the connection
is lost): reconnecting, and deciding what a lost round trip means, is the caller's.
"""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import pq, sql

from final import pg_queries as q
from final.jobs import Priority

__all__ = [
    "Claim",
    "NewJob",
    "Refused",
    "Rescued",
    "StoredJob",
    "cancel",
    "claim",
    "claim_counting",
    "complete",
    "counts",
    "dead_count",
    "dead_letters",
    "deregister",
    "enqueue",
    "enqueue_one",
    "extend",
    "fail",
    "find",
    "give_back",
    "heartbeat",
    "held",
    "listen",
    "next_due",
    "oldest_waiting",
    "prune",
    "recent_failures",
    "refund_tokens",
    "register",
    "rescue",
    "retry",
    "revive",
    "set_config",
    "status_counts",
    "tables_present",
    "take_tokens",
    "unsettled",
    "vacuum",
    "vacuum_due",
    "waiting",
    "where_am_i",
]

Connection = psycopg.Connection[Any]


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to insert. ``run_at`` (timezone-aware) holds it back until then."""

    id: str
    payload: bytes
    priority: int
    max_retries: int
    idempotency_key: str | None = None
    run_at: datetime.datetime | None = None

    def __post_init__(self) -> None:
        # A naive time would be read in the server's time zone, whatever the caller meant.
        if self.run_at is not None and self.run_at.utcoffset() is None:
            raise ValueError(f"run_at must be timezone-aware, got {self.run_at!r}")


@dataclass(frozen=True, slots=True)
class Refused:
    """The first job of a batch that ``enqueue`` refused, and the job in its way.

    ``index`` is its position in the batch (the jobs before it were inserted, the
    ones after it were not); ``holder`` is the id of the job that already has its
    id (``by == "id"``) or its idempotency key (``by == "key"``).
    """

    index: int
    holder: str
    by: Literal["id", "key"]


@dataclass(frozen=True, slots=True)
class Claim:
    """A job claimed for one attempt. ``token`` fences every later move of it."""

    id: str
    token: int
    payload: bytes
    priority: int
    idempotency_key: str | None
    max_retries: int
    attempts: int  # this attempt included
    enqueued_at: datetime.datetime
    ready_at: datetime.datetime
    seq: int
    deadline: datetime.datetime | None
    run_at: datetime.datetime | None = None


@dataclass(frozen=True, slots=True)
class Rescued:
    """A job taken back from a lost attempt: ``status`` is "queued" or "failed"."""

    id: str
    status: str
    attempts: int
    reason: str


@dataclass(frozen=True, slots=True)
class StoredJob:
    """A job as the database holds it, for ``status``, ``info`` and ``dead_letters``."""

    id: str
    payload: bytes
    priority: int
    idempotency_key: str | None
    max_retries: int
    status: str
    attempts: int
    last_error: str | None
    enqueued_at: datetime.datetime
    ready_at: datetime.datetime
    started_at: datetime.datetime | None
    finished_at: datetime.datetime | None
    run_at: datetime.datetime | None = None  # the time it was enqueued to wait for


def register(conn: Connection, queue: str, lease: float) -> int:
    """Record a process's start; return its fresh id.

    ``lease`` (seconds) is how long the process may go without a ``heartbeat``
    before its claims may be rescued.
    """
    row = conn.execute(
        q.REGISTER,
        {"queue": queue, "host": socket.gethostname(), "pid": os.getpid(), "lease": lease},
    ).fetchone()
    assert row is not None
    return int(row[0])


def heartbeat(conn: Connection, process: int) -> bool:
    """Prove that ``process`` is alive. False: it was declared dead, its claims are gone."""
    return conn.execute(q.HEARTBEAT, {"process": process}).rowcount == 1


def deregister(conn: Connection, process: int) -> None:
    """Forget a process that is closing (after it gave back what it had not started)."""
    conn.execute(q.DEREGISTER, {"process": process})


def enqueue(conn: Connection, queue: str, jobs: Sequence[NewJob]) -> Refused | None:
    """Insert ``jobs`` in order, and wake the queue's listeners once.

    Returns None when every job was inserted. Otherwise the jobs before the first
    refused one (its id or idempotency key is taken, by an earlier job or by one
    before it in ``jobs``) are inserted, the ones from it on are not, and the
    returned ``Refused`` says which it was and which job holds what it asked for.
    """
    batch = list(jobs)
    if not batch:
        return None
    if len(batch) == 1:
        # One job, one statement: it commits on its own, or joins the caller's
        # transaction, where a refusal (ON CONFLICT DO NOTHING) breaks nothing.
        inserted = _insert(conn, queue, batch)
        if inserted:
            return None
        holder = _holder(conn, queue, batch[0])
        if holder is not None:
            return Refused(0, *holder)
    elif not conn.autocommit and conn.info.transaction_status == pq.TransactionStatus.IDLE:
        conn.execute(q.FIRST_STATEMENT)  # the caller's transaction begins here, not ours
    refused: Refused | None = None
    while batch:
        # A transaction of our own on an idle connection, a savepoint in the caller's.
        with conn.transaction() as attempt:
            inserted = _insert(conn, queue, batch)
            index = _first_refused(batch, inserted)
            if index is None:
                break
            # Asked before the rollback, which takes the batch's own rows with it.
            holder = _holder(conn, queue, batch[index])
            raise psycopg.Rollback(attempt)
        if holder is None:
            continue  # the job in the way was deleted meanwhile: try the same batch
        refused = Refused(index, *holder)
        batch = batch[:index]
    return refused


def enqueue_one(conn: Connection, queue: str, job: NewJob, cap: int) -> bool:
    """Insert ``job`` (due now: no ``run_at``) if its lane holds fewer than ``cap``
    due jobs (as ``waiting`` counts them), and wake the queue's listeners; one
    statement.

    False when it was not inserted: its lane is full, or its id or idempotency key
    is taken. ``enqueue`` and ``waiting`` tell which.
    """
    if job.run_at is not None:
        raise ValueError("enqueue_one takes a job due now; enqueue takes the others")
    params = {
        "queue": queue,
        "id": job.id,
        "payload": job.payload,
        "priority": job.priority,
        "key": job.idempotency_key,
        "max_retries": job.max_retries,
        "cap": cap,
    }
    return conn.execute(q.ENQUEUE_ONE, params).fetchone() is not None


def _insert(conn: Connection, queue: str, batch: Sequence[NewJob]) -> list[str]:
    row = conn.execute(
        q.ENQUEUE,
        {
            "queue": queue,
            "ids": [job.id for job in batch],
            "payloads": [job.payload for job in batch],
            "priorities": [job.priority for job in batch],
            "keys": [job.idempotency_key for job in batch],
            "max_retries": [job.max_retries for job in batch],
            "run_at": [job.run_at for job in batch],
        },
    ).fetchone()
    return [] if row is None else list(row[0])


def _first_refused(batch: Sequence[NewJob], inserted: Sequence[str]) -> int | None:
    left = set(inserted)
    for index, job in enumerate(batch):
        if job.id not in left:
            return index
        left.discard(job.id)  # a second job with this id was refused
    return None


def _holder(conn: Connection, queue: str, job: NewJob) -> tuple[str, Literal["id", "key"]] | None:
    row = conn.execute(
        q.HOLDER, {"queue": queue, "id": job.id, "key": job.idempotency_key}
    ).fetchone()
    if row is None:
        return None
    return row[0], "id" if row[1] else "key"


def claim(
    conn: Connection,
    queue: str,
    process: int,
    limit: int,
    timeout: float | None = None,
    lane: int | None = None,
) -> list[Claim]:
    """Claim up to ``limit`` due jobs for ``process``, counting an attempt for each.

    Returned in the order they should start: highest priority first, then by their
    place in the line. ``timeout`` (seconds) sets each attempt's deadline, after
    which ``rescue`` takes the job back even from a live process; None: no deadline.
    ``lane``: only jobs of that priority (fairness's turn for a lower lane).
    Jobs locked by another claimer are skipped, never waited for.
    """
    params = {
        "queue": queue,
        "process": process,
        "limit": limit,
        "timeout": timeout,
        "lanes": [int(p) for p in Priority] if lane is None else [lane],
    }
    rows = conn.execute(q.CLAIM, params).fetchall()
    claims = [Claim(*row) for row in rows]
    claims.sort(key=lambda c: (-c.priority, c.ready_at, c.seq))
    return claims


def claim_counting(
    conn: Connection,
    queue: str,
    process: int,
    limit: int,
    timeout: float | None,
    lanes: Sequence[int],
) -> tuple[list[Claim], dict[int, int]]:
    """``claim`` across every lane, and what ``waiting`` would have said just before it.

    One statement, so one round trip where ``waiting`` then ``claim`` take two: the
    counts (each lane of ``lanes``, counted no further than ``limit``) are read in the
    claim's own snapshot, before it changed anything. When nothing was claimed, every
    count is 0: nothing due was waiting, or another claimer holds it.
    """
    params = {
        "queue": queue,
        "process": process,
        "limit": limit,
        "timeout": timeout,
        "lanes": list(lanes),
    }
    rows = conn.execute(q.CLAIM_COUNTING, params).fetchall()
    if not rows:
        return [], dict.fromkeys(lanes, 0)
    counts = dict(zip(lanes, map(int, rows[0][-1]), strict=True))
    claims = [Claim(*row[:-1]) for row in rows]
    claims.sort(key=lambda c: (-c.priority, c.ready_at, c.seq))
    return claims, counts


def take_tokens(conn: Connection, queue: str, want: int, rate: float, burst: float) -> int:
    """Take up to ``want`` tokens from the queue's shared bucket; return how many.

    The bucket gains ``rate`` tokens a second (by the server's clock) up to ``burst``;
    every process of the queue takes from the same row.
    """
    conn.execute(q.RATE_ROW, {"queue": queue, "burst": burst})
    params = {"queue": queue, "want": want, "rate": rate, "burst": burst}
    row = conn.execute(q.TAKE_TOKENS, params).fetchone()
    return 0 if row is None else int(row[0])


def refund_tokens(conn: Connection, queue: str, n: int, burst: float) -> None:
    """Put back ``n`` tokens taken for claims that found no job."""
    if n > 0:
        conn.execute(q.REFUND_TOKENS, {"queue": queue, "n": n, "burst": burst})


def complete(conn: Connection, queue: str, claims: Sequence[tuple[str, int]]) -> set[str]:
    """Mark attempts ``(id, token)`` as succeeded; return the ids whose claim still held."""
    if not claims:
        return set()
    rows = conn.execute(
        q.COMPLETE,
        {"queue": queue, "ids": [c[0] for c in claims], "claims": [c[1] for c in claims]},
    ).fetchall()
    return {row[0] for row in rows}


def held(conn: Connection, queue: str, job_id: str, token: int) -> bool:
    """Whether the attempt of claim ``token`` still holds job ``job_id``; never waits."""
    row = conn.execute(q.HELD, {"queue": queue, "id": job_id, "claim": token}).fetchone()
    return row is not None and bool(row[0])


def completed_here(conn: Connection, queue: str, job_id: str) -> bool:
    """Whether the transaction open on ``conn`` is the one that completed ``job_id``."""
    row = conn.execute(q.COMPLETED_HERE, {"queue": queue, "id": job_id}).fetchone()
    return row is not None and bool(row[0])


def where_am_i(conn: Connection) -> tuple[Any, ...]:
    """What identifies the queue's tables as ``conn`` sees them: the jobs table's oid
    (None when it sees none), the database, and the server's start time and port."""
    row = conn.execute(q.WHERE_AM_I).fetchone()
    assert row is not None
    return tuple(row)


def retry(conn: Connection, queue: str, job_id: str, token: int, error: str, delay: float) -> bool:
    """Put a failed attempt's job back in line after ``delay`` seconds; True if the claim held."""
    params = {"queue": queue, "id": job_id, "claim": token, "error": error, "delay": delay}
    return conn.execute(q.RETRY, params).rowcount == 1


def fail(conn: Connection, queue: str, job_id: str, token: int, error: str) -> bool:
    """Move a failed attempt's job to the dead letters; True if the claim held."""
    params = {"queue": queue, "id": job_id, "claim": token, "error": error}
    return conn.execute(q.FAIL, params).rowcount == 1


def give_back(conn: Connection, queue: str, claims: Sequence[tuple[str, int]]) -> set[str]:
    """Return claimed, unstarted jobs to their place in line, uncounting the attempt.

    Returns the ids whose claim still held.
    """
    if not claims:
        return set()
    row = conn.execute(
        q.GIVE_BACK,
        {"queue": queue, "ids": [c[0] for c in claims], "claims": [c[1] for c in claims]},
    ).fetchone()
    return set() if row is None else set(row[0])


def extend(conn: Connection, queue: str, job_id: str, token: int, seconds: float) -> bool:
    """Move a running attempt's deadline to ``seconds`` from now; True if the claim held."""
    params = {"queue": queue, "id": job_id, "claim": token, "seconds": seconds}
    return conn.execute(q.EXTEND, params).rowcount == 1


def rescue(conn: Connection, queue: str) -> list[Rescued]:
    """Take back the jobs of lost attempts, and forget the processes past their lease.

    An attempt is lost when its process has not heartbeated within the lease it
    registered (or its row is gone), or when it passed its deadline. Its job goes
    back to the front of its line, or to the dead letters when the lost attempt
    was its last. Returns what it took back; empty as well when another process
    is rescuing this queue at the same moment. Runs in a transaction of its own
    (or a savepoint of the caller's).
    """
    with conn.transaction():
        locked = conn.execute(q.RESCUE_LOCK, {"queue": queue}).fetchone()
        if locked is None or not locked[0]:
            return []
        rows = conn.execute(q.RESCUE, {"queue": queue}).fetchall()
        conn.execute(q.SWEEP_PROCESSES, {"queue": queue})
        rescued = [Rescued(*row) for row in rows]
        if any(r.status == "queued" for r in rescued):
            conn.execute(q.NOTIFY, {"queue": queue})
    return rescued


def prune(conn: Connection, queue: str, retention: float, batch: int = 1000) -> int:
    """Delete completed and cancelled jobs that settled over ``retention`` seconds ago.

    Deletes at most ``batch`` rows per transaction, committing between batches when
    ``conn`` is in autocommit mode; returns how many it deleted in all.
    """
    deleted = 0
    for status in ("completed", "cancelled"):
        params = {"queue": queue, "status": status, "retention": retention, "batch": batch}
        while True:
            count = conn.execute(q.PRUNE, params).rowcount
            deleted += count
            if count < batch:
                break
    return deleted


def find(conn: Connection, queue: str, job_id: str) -> StoredJob | None:
    """The job ``job_id`` of the queue, or None if the queue has no such job."""
    row = conn.execute(q.FIND, {"queue": queue, "id": job_id}).fetchone()
    return None if row is None else StoredJob(*row)


def dead_count(conn: Connection, queue: str) -> int:
    """How many dead letters the queue holds."""
    row = conn.execute(q.DEAD_COUNT, {"queue": queue}).fetchone()
    return 0 if row is None else int(row[0])


def dead_letters(conn: Connection, queue: str) -> list[StoredJob]:
    """Every dead letter of the queue, in the order they failed."""
    return [StoredJob(*row) for row in conn.execute(q.DEAD_LETTERS, {"queue": queue})]


def revive(conn: Connection, queue: str, job_id: str) -> bool:
    """Put a dead letter back in line with a fresh budget; False if it is not dead."""
    return conn.execute(q.REVIVE, {"queue": queue, "id": job_id}).fetchone() is not None


def cancel(conn: Connection, queue: str, job_id: str) -> bool | None:
    """Cancel a job that has not started: True; False if it is running or settled
    (or being claimed right now). None when the queue has no job ``job_id``.
    """
    cancelled, _ = cancel_in_lane(conn, queue, job_id)
    return cancelled


def cancel_in_lane(conn: Connection, queue: str, job_id: str) -> tuple[bool | None, int | None]:
    """``cancel``, and the priority of the job it cancelled (None when it did not)."""
    row = conn.execute(q.CANCEL, {"queue": queue, "id": job_id}).fetchone()
    assert row is not None
    cancelled, known, priority = row
    return (bool(cancelled) if known else None), priority


def next_due(conn: Connection, queue: str, lanes: Sequence[int]) -> float | None:
    """Seconds (by the server's clock) until the first job of ``lanes`` that waits for
    its ``run_at`` or its backoff is due; None when no job waits for a time."""
    row = conn.execute(q.NEXT_DUE, {"queue": queue, "lanes": list(lanes)}).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def unsettled(
    conn: Connection, queue: str, job_ids: Sequence[str], scheduled: bool = True
) -> set[str]:
    """The ids among ``job_ids`` whose jobs have not settled (a pruned job has).

    ``scheduled=False`` leaves out the jobs whose ``run_at`` has not come yet.
    """
    if not job_ids:
        return set()
    params = {"queue": queue, "ids": list(job_ids), "scheduled": scheduled}
    return {row[0] for row in conn.execute(q.UNSETTLED, params)}


def counts(conn: Connection, queue: str) -> dict[tuple[int, str], int]:
    """How many jobs wait or run, by ``(priority, status)``; absent pairs are 0."""
    rows = conn.execute(q.COUNTS, {"queue": queue})
    return {(priority, status): count for priority, status, count in rows}


def waiting(conn: Connection, queue: str, cap: int, lanes: Sequence[int]) -> dict[int, int]:
    """Queued jobs of each priority in ``lanes``, counted up to ``cap`` (an int >= 0)."""
    rows = conn.execute(q.WAITING, {"queue": queue, "cap": cap, "lanes": list(lanes)})
    return {int(p): int(n) for p, n in rows.fetchall()}


def status_counts(conn: Connection, queue: str) -> dict[tuple[str, int], int]:
    """How many jobs of the queue are in each ``(status, priority)``; absent pairs are 0."""
    rows = conn.execute(q.STATUS_COUNTS, {"queue": queue})
    return {(status, priority): count for status, priority, count in rows}


def oldest_waiting(conn: Connection, queue: str) -> float | None:
    """When the oldest waiting job was enqueued (seconds since the epoch), if any waits."""
    row = conn.execute(q.OLDEST_WAITING, {"queue": queue}).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def set_config(conn: Connection, name: str, value: str) -> None:
    """Set the session setting ``name`` (``synchronous_commit``, ``lock_timeout``...)."""
    conn.execute(q.SET_CONFIG, {"name": name, "value": value})


def tables_present(conn: Connection) -> bool:
    """Whether the queue's tables exist where ``conn`` looks (its ``search_path``)."""
    row = conn.execute(q.TABLES_PRESENT).fetchone()
    return row is not None and bool(row[0])


def listen(conn: Connection, queue: str) -> str:
    """Subscribe ``conn`` (in autocommit mode) to the queue's wake-ups; return the channel.

    A notification arrives once per transaction that made jobs claimable: read them
    with ``conn.notifies(timeout=...)``. Its payload is empty when jobs are due now,
    or the seconds (a float, by the server's clock) until the first job it enqueued
    is due. It is a hint, never a promise: a claimer still polls, because
    notifications are lost while a connection is down.
    """
    row = conn.execute(q.CHANNEL, {"queue": queue}).fetchone()
    assert row is not None
    channel = str(row[0])
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    return channel


def recent_failures(conn: Connection, queue: str, limit: int) -> list[StoredJob]:
    """The jobs whose latest attempt failed, newest failure first, at most ``limit``:
    those waiting out a backoff (by their latest start), then the dead letters (by
    their end), each half read from an index rather than the whole table."""
    return [
        StoredJob(*row) for row in conn.execute(q.RECENT_FAILURES, {"queue": queue, "limit": limit})
    ]


# The table's own autovacuum trigger (``final/pg_schema.py``): a hundredth of the live
# rows dead, and at least this many.
_VACUUM_THRESHOLD = 1000
_VACUUM_SCALE = 0.01


def vacuum_due(conn: Connection) -> bool | None:
    """Whether the jobs table needs a vacuum that autovacuum will not run.

    None when autovacuum is on for the table (it is autovacuum's job); otherwise
    True once its dead rows pass the trigger the table sets for autovacuum (a
    thousand, plus a hundredth of its live rows), False before.
    """
    row = conn.execute(q.VACUUM_STATE).fetchone()
    if row is None or not row[0]:
        return None
    dead, live = int(row[1]), int(row[2])
    return dead > _VACUUM_THRESHOLD + _VACUUM_SCALE * live


def vacuum(conn: Connection) -> None:
    """Vacuum the jobs table, unless another vacuum holds it. ``conn`` must be in
    autocommit mode, outside any transaction."""
    conn.execute(q.VACUUM)
