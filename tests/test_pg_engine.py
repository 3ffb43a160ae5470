"""The PostgreSQL engine against a real server: claims, fences, rescue, wake-ups, pruning.

Each test works in a schema of its own, created for it and dropped after it. The
server is ``JOBQ_TEST_DSN`` (default ``postgresql://postgres@127.0.0.1:5432/test``);
when it does not answer, the tests are skipped, except under ``CI``, where they fail.
"""

from __future__ import annotations

import datetime
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

try:
    import psycopg
except ImportError:  # pragma: no cover - only where psycopg is missing
    if os.environ.get("CI"):
        raise
    pytest.skip("psycopg is not installed: pip install 'psycopg[binary]'", allow_module_level=True)

from final import pg_engine as engine
from final import pg_queries
from final.jobs import Priority
from final.pg_schema import SCHEMA_VERSION, SchemaMismatch, ensure_schema
from tests.pg import Database
from tests.support import PATIENCE

QUEUE = "default"
HIGH, MEDIUM, LOW = Priority.HIGH, Priority.MEDIUM, Priority.LOW

Connection = psycopg.Connection[Any]


@pytest.fixture
def conn(db: Database) -> Iterator[Connection]:
    with db.connect() as connection:
        ensure_schema(connection)
        yield connection


def new(
    job_id: str,
    priority: int = MEDIUM,
    *,
    key: str | None = None,
    max_retries: int = 3,
    run_at: datetime.datetime | None = None,
) -> engine.NewJob:
    return engine.NewJob(job_id, job_id.encode(), priority, max_retries, key, run_at)


def rescue_until_some(conn: Connection, what: str) -> list[engine.Rescued]:
    """Run rescue rounds until one takes something back; fail after PATIENCE seconds."""
    deadline = time.monotonic() + PATIENCE
    while not (rescued := engine.rescue(conn, QUEUE)):
        if time.monotonic() > deadline:
            pytest.fail(f"waited {PATIENCE} s for {what}")
        time.sleep(0.01)  # the loop ends once the database's clock has passed the lease
    return rescued


def status(conn: Connection, job_id: str) -> str | None:
    stored = engine.find(conn, QUEUE, job_id)
    return None if stored is None else stored.status


# --- the tables ---------------------------------------------------------------------


def test_many_processes_starting_at_once_create_the_tables_once(db: Database) -> None:
    starters = 8
    barrier = threading.Barrier(starters)
    errors: list[BaseException] = []

    def start() -> None:
        with db.connect() as connection:
            barrier.wait(timeout=PATIENCE)
            try:
                ensure_schema(connection)
            except BaseException as error:
                errors.append(error)

    threads = [threading.Thread(target=start) for _ in range(starters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=PATIENCE)
    assert errors == []
    with db.connect() as connection:
        versions = connection.execute("SELECT version FROM jobq_version").fetchall()
        assert versions == [(SCHEMA_VERSION,)]
        assert engine.enqueue(connection, QUEUE, [new("a")]) is None


def test_tables_of_another_version_are_refused_with_what_to_do(conn: Connection) -> None:
    conn.execute("UPDATE jobq_version SET version = 99")
    with pytest.raises(SchemaMismatch, match=r"version 99.*search_path"):
        ensure_schema(conn)


def test_a_jobs_table_that_is_not_ours_is_refused(db: Database) -> None:
    with db.connect() as connection:
        connection.execute("CREATE TABLE jobq_jobs (id integer)")
        with pytest.raises(SchemaMismatch, match="not made by this queue"):
            ensure_schema(connection)


# --- enqueue ------------------------------------------------------------------------


def test_a_refused_job_names_its_holder_and_the_jobs_before_it_stay(conn: Connection) -> None:
    assert engine.enqueue(conn, QUEUE, [new("first", key="k1")]) is None
    batch = [new("a"), new("b", key="k2"), new("c", key="k2"), new("d")]
    assert engine.enqueue(conn, QUEUE, batch) == engine.Refused(2, "b", "key")
    assert [status(conn, i) for i in "abcd"] == ["queued", "queued", None, None]
    assert engine.enqueue(conn, QUEUE, [new("e", key="k1")]) == engine.Refused(0, "first", "key")
    assert engine.enqueue(conn, QUEUE, [new("a")]) == engine.Refused(0, "a", "id")
    # Ids and keys are unique within a queue, not across queues.
    assert engine.enqueue(conn, "other", [new("a", key="k1")]) is None


def test_jobs_enqueued_in_a_transaction_exist_only_once_it_commits(db: Database) -> None:
    with db.connect() as setup:
        ensure_schema(setup)
    with db.connect(autocommit=False) as app, db.connect() as other:
        with app.transaction():
            assert engine.enqueue(app, QUEUE, [new("a"), new("b")]) is None
            assert engine.enqueue(app, QUEUE, [new("c"), new("a")]) == engine.Refused(1, "a", "id")
            assert status(other, "a") is None
        assert [status(other, i) for i in "abc"] == ["queued", "queued", "queued"]
        with app.transaction() as tx:
            engine.enqueue(app, QUEUE, [new("d")])
            raise psycopg.Rollback(tx)
        assert status(other, "d") is None


def test_a_naive_run_at_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        new("a", run_at=datetime.datetime(2030, 1, 1))


# --- claims -------------------------------------------------------------------------


def test_claims_take_the_highest_priority_first_then_the_longest_waiting(conn: Connection) -> None:
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    engine.enqueue(conn, QUEUE, [new("low", LOW), new("high1", HIGH), new("medium")])
    engine.enqueue(conn, QUEUE, [new("high2", HIGH), new("later", HIGH, run_at=later)])
    engine.enqueue(conn, "other", [new("elsewhere", HIGH)])
    process = engine.register(conn, QUEUE, lease=30.0)

    assert [c.id for c in engine.claim(conn, QUEUE, process, limit=1)] == ["high1"]
    rest = engine.claim(conn, QUEUE, process, limit=10)
    assert [c.id for c in rest] == ["high2", "medium", "low"]
    assert all(c.attempts == 1 and c.payload == c.id.encode() for c in rest)
    assert status(conn, "later") == "scheduled"


def rows_read_from_jobs(conn: Connection, statement: str, params: dict[str, Any]) -> int:
    """The rows every scan of jobq_jobs in ``statement``'s plan read, kept or filtered
    out, as EXPLAIN ANALYZE counts them; the statement's changes are rolled back."""

    def walk(node: dict[str, Any]) -> int:
        here = 0
        if node.get("Relation Name") == "jobq_jobs" and "Scan" in node["Node Type"]:
            kept = node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
            here = kept * node["Actual Loops"]
        return here + sum(walk(child) for child in node.get("Plans", []))

    with conn.transaction(force_rollback=True):
        row = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, params
        ).fetchone()
    assert row is not None
    plan: dict[str, Any] = row[0][0]["Plan"]
    return walk(plan)


def test_claims_and_enqueues_never_read_the_jobs_not_due_yet(conn: Connection) -> None:
    future = 30_000
    conn.execute(
        "INSERT INTO jobq_jobs (queue, id, payload, priority, max_retries, status, ready_at,"
        " run_at) SELECT %(queue)s, 'later' || p || '-' || g, '', p, 0, 'scheduled',"
        " now() + interval '1 day', now() + interval '1 day'"
        " FROM generate_series(1, %(n)s) AS g, unnest(%(lanes)s::int[]) AS p",
        {"queue": QUEUE, "n": future // 3, "lanes": [int(p) for p in Priority]},
    )
    engine.enqueue(conn, QUEUE, [new("low1", LOW), new("low2", LOW), new("high", HIGH)])
    conn.execute("ANALYZE jobq_jobs")
    process = engine.register(conn, QUEUE, lease=30.0)
    lanes = [int(p) for p in Priority]
    claim = {"queue": QUEUE, "process": process, "limit": 10, "timeout": None, "lanes": lanes}
    enqueue = {
        "queue": QUEUE,
        "id": "new",
        "payload": b"",
        "priority": int(LOW),
        "key": None,
        "max_retries": 0,
        "cap": 1000,
    }
    # The three due jobs and each lane's counts read them again: a few rows, not 30,000.
    assert rows_read_from_jobs(conn, pg_queries.CLAIM_COUNTING, claim) <= 20
    assert rows_read_from_jobs(conn, pg_queries.CLAIM, claim) <= 20
    assert rows_read_from_jobs(conn, pg_queries.ENQUEUE_ONE, enqueue) <= 20
    claims, counts = engine.claim_counting(conn, QUEUE, process, 10, None, lanes)
    assert [c.id for c in claims] == ["high", "low1", "low2"]
    assert counts == {int(HIGH): 1, int(MEDIUM): 0, int(LOW): 2}


def test_a_lane_full_of_due_scheduled_jobs_refuses_a_single_enqueue(conn: Connection) -> None:
    # Two jobs whose time has come (as after a wait, or a backoff): due, in the line.
    conn.execute(
        "INSERT INTO jobq_jobs (queue, id, payload, priority, max_retries, status, ready_at)"
        " SELECT %(queue)s, id, '', %(p)s, 0, status, now() - interval '1 second'"
        " FROM unnest(ARRAY['a', 'b'], ARRAY['scheduled', 'retrying']) AS s (id, status)",
        {"queue": QUEUE, "p": int(MEDIUM)},
    )
    assert engine.waiting(conn, QUEUE, 10, [int(MEDIUM)]) == {int(MEDIUM): 2}
    assert not engine.enqueue_one(conn, QUEUE, new("c"), cap=2)  # the lane of 2 is full
    assert engine.enqueue_one(conn, QUEUE, new("c"), cap=3)


def test_racing_claimers_never_share_a_job(db: Database, conn: Connection) -> None:
    jobs = [new(f"job{i}", i % 3) for i in range(300)]
    engine.enqueue(conn, QUEUE, jobs)
    claimers = 8
    barrier = threading.Barrier(claimers)
    claimed: list[str] = []
    lock = threading.Lock()

    def drain() -> None:
        with db.connect() as connection:
            process = engine.register(connection, QUEUE, lease=30.0)
            barrier.wait(timeout=PATIENCE)
            while batch := engine.claim(connection, QUEUE, process, limit=3):
                with lock:
                    claimed.extend(c.id for c in batch)

    threads = [threading.Thread(target=drain) for _ in range(claimers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=PATIENCE)
    twice = [job_id for job_id, n in Counter(claimed).items() if n > 1]
    assert twice == []
    assert sorted(claimed) == sorted(job.id for job in jobs)
    attempts = conn.execute("SELECT DISTINCT attempts FROM jobq_jobs").fetchall()
    assert attempts == [(1,)]


def test_a_stale_claim_token_settles_nothing(conn: Connection) -> None:
    engine.enqueue(conn, QUEUE, [new("a")])
    first = engine.register(conn, QUEUE, lease=30.0)
    [stale] = engine.claim(conn, QUEUE, first, limit=1)
    engine.deregister(conn, first)  # as if its lease had passed
    assert [r.id for r in engine.rescue(conn, QUEUE)] == ["a"]
    second = engine.register(conn, QUEUE, lease=30.0)
    [fresh] = engine.claim(conn, QUEUE, second, limit=1)
    assert fresh.token != stale.token

    old = (stale.id, stale.token)
    assert engine.complete(conn, QUEUE, [old]) == set()
    assert not engine.retry(conn, QUEUE, "a", stale.token, "late", delay=0.0)
    assert not engine.fail(conn, QUEUE, "a", stale.token, "late")
    assert not engine.extend(conn, QUEUE, "a", stale.token, seconds=60.0)
    assert engine.give_back(conn, QUEUE, [old]) == set()
    row = engine.find(conn, QUEUE, "a")
    assert row is not None and (row.status, row.attempts) == ("processing", 2)

    assert engine.complete(conn, QUEUE, [(fresh.id, fresh.token)]) == {"a"}
    assert status(conn, "a") == "completed"
    assert engine.complete(conn, QUEUE, [(fresh.id, fresh.token)]) == set()


def test_retry_waits_out_its_delay_and_fail_dead_letters(conn: Connection) -> None:
    engine.enqueue(conn, QUEUE, [new("soon"), new("later"), new("dead")])
    process = engine.register(conn, QUEUE, lease=30.0)
    claims = {c.id: c for c in engine.claim(conn, QUEUE, process, limit=3)}
    assert engine.retry(conn, QUEUE, "soon", claims["soon"].token, "boom", delay=0.0)
    assert engine.retry(conn, QUEUE, "later", claims["later"].token, "boom", delay=3600.0)
    assert engine.fail(conn, QUEUE, "dead", claims["dead"].token, "boom")

    assert [c.id for c in engine.claim(conn, QUEUE, process, limit=3)] == ["soon"]
    assert status(conn, "later") == "retrying"
    [dead] = engine.dead_letters(conn, QUEUE)
    assert (dead.id, dead.last_error, dead.attempts) == ("dead", "boom", 1)
    assert engine.revive(conn, QUEUE, "dead")
    assert not engine.revive(conn, QUEUE, "dead")
    [again] = engine.claim(conn, QUEUE, process, limit=3)
    assert (again.id, again.attempts) == ("dead", 1)


def test_a_claim_given_back_is_not_counted_and_keeps_its_place(conn: Connection) -> None:
    engine.enqueue(conn, QUEUE, [new("a"), new("b")])
    process = engine.register(conn, QUEUE, lease=30.0)
    [first] = engine.claim(conn, QUEUE, process, limit=1)
    assert engine.give_back(conn, QUEUE, [(first.id, first.token)]) == {"a"}
    again = engine.claim(conn, QUEUE, process, limit=2)
    assert [(c.id, c.attempts) for c in again] == [("a", 1), ("b", 1)]


# --- rescue -------------------------------------------------------------------------


def test_a_silent_process_loses_its_claims_once_its_lease_passes(db: Database) -> None:
    with db.connect() as conn, db.connect() as rescuer:
        ensure_schema(conn)
        engine.enqueue(conn, QUEUE, [new("silent"), new("alive")])
        silent = engine.register(conn, QUEUE, lease=0.2)
        alive = engine.register(conn, QUEUE, lease=3600.0)
        assert [c.id for c in engine.claim(conn, QUEUE, silent, limit=1)] == ["silent"]
        assert [c.id for c in engine.claim(conn, QUEUE, alive, limit=1)] == ["alive"]

        rescued = rescue_until_some(rescuer, "the silent process's lease to pass")
        assert [(r.id, r.status, r.attempts) for r in rescued] == [("silent", "queued", 1)]
        assert "stopped heartbeating" in rescued[0].reason
        assert status(conn, "alive") == "processing"
        assert not engine.heartbeat(conn, silent)  # its row went with its claims
        assert engine.heartbeat(conn, alive)
        [again] = engine.claim(conn, QUEUE, alive, limit=1)
        assert (again.id, again.attempts) == ("silent", 2)


def test_a_long_attempt_of_a_live_process_is_never_rescued(conn: Connection) -> None:
    engine.enqueue(conn, QUEUE, [new("long")])
    process = engine.register(conn, QUEUE, lease=30.0)
    engine.claim(conn, QUEUE, process, limit=1)
    # Claimed a day ago, by the database's clock; its process still heartbeats.
    conn.execute("UPDATE jobq_jobs SET started_at = now() - interval '1 day'")
    conn.execute("UPDATE jobq_processes SET started_at = now() - interval '1 day'")
    assert engine.heartbeat(conn, process)
    assert engine.rescue(conn, QUEUE) == []
    assert status(conn, "long") == "processing"


def test_an_attempt_past_its_deadline_is_rescued_from_a_live_process(conn: Connection) -> None:
    engine.enqueue(conn, QUEUE, [new("slow"), new("extended")])
    process = engine.register(conn, QUEUE, lease=3600.0)
    claims = {c.id: c for c in engine.claim(conn, QUEUE, process, limit=2, timeout=0.1)}
    assert engine.extend(conn, QUEUE, "extended", claims["extended"].token, seconds=3600.0)

    rescued = rescue_until_some(conn, "the attempt's deadline to pass")
    assert [(r.id, r.status) for r in rescued] == [("slow", "queued")]
    assert "deadline" in rescued[0].reason
    assert status(conn, "extended") == "processing"
    assert engine.heartbeat(conn, process)


def test_a_job_whose_every_attempt_was_lost_ends_dead(conn: Connection) -> None:
    engine.enqueue(conn, QUEUE, [new("poison", max_retries=2)])
    outcomes: list[tuple[str, int]] = []
    for _ in range(3):  # max_retries + 1 claims, none settled
        process = engine.register(conn, QUEUE, lease=30.0)
        assert [c.id for c in engine.claim(conn, QUEUE, process, limit=1)] == ["poison"]
        engine.deregister(conn, process)  # the process died mid-attempt
        outcomes.extend((r.status, r.attempts) for r in engine.rescue(conn, QUEUE))
    assert outcomes == [("queued", 1), ("queued", 2), ("failed", 3)]
    assert [d.id for d in engine.dead_letters(conn, QUEUE)] == ["poison"]


def test_one_rescuer_at_a_time(db: Database, conn: Connection) -> None:
    with db.connect(autocommit=False) as holder:
        holder.execute(pg_queries.RESCUE_LOCK, {"queue": QUEUE})  # held until rollback
        engine.enqueue(conn, QUEUE, [new("a")])
        process = engine.register(conn, QUEUE, lease=30.0)
        engine.claim(conn, QUEUE, process, limit=1)
        engine.deregister(conn, process)
        assert engine.rescue(conn, QUEUE) == []
        holder.rollback()
    assert [r.id for r in engine.rescue(conn, QUEUE)] == ["a"]


# --- wake-ups -----------------------------------------------------------------------


def wake_ups(listener: Connection, conn: Connection, channel: str) -> int:
    """How many wake-ups arrived before a marker sent now (delivery is in commit order)."""
    conn.execute("SELECT pg_notify(%s, 'marker')", (channel,))
    for count, note in enumerate(listener.notifies(timeout=PATIENCE)):
        if note.payload == "marker":
            return count
    pytest.fail(f"no marker on {channel} within {PATIENCE} s")


def test_one_wake_up_per_transaction_that_enqueues(db: Database, conn: Connection) -> None:
    with db.connect() as listener, db.connect(autocommit=False) as app:
        channel = engine.listen(listener, QUEUE)
        engine.enqueue(conn, QUEUE, [new("a")])
        assert wake_ups(listener, conn, channel) == 1
        engine.enqueue(conn, QUEUE, [new(f"b{i}") for i in range(5)])
        assert wake_ups(listener, conn, channel) == 1
        engine.enqueue(conn, QUEUE, [new("a")])  # refused: nothing to wake for
        engine.enqueue(conn, "other", [new("c")])  # another queue's channel
        assert wake_ups(listener, conn, channel) == 0

        with app.transaction():
            engine.enqueue(app, QUEUE, [new("d")])
            engine.enqueue(app, QUEUE, [new("e"), new("f")])
            assert wake_ups(listener, conn, channel) == 0  # not before the commit
        assert wake_ups(listener, conn, channel) == 1


def payloads(listener: Connection, conn: Connection, channel: str) -> list[str]:
    """The payloads of the wake-ups that arrived before a marker sent now."""
    conn.execute("SELECT pg_notify(%s, 'marker')", (channel,))
    found: list[str] = []
    for note in listener.notifies(timeout=PATIENCE):
        if note.payload == "marker":
            return found
        found.append(note.payload)
    pytest.fail(f"no marker on {channel} within {PATIENCE} s")


def test_an_enqueue_of_jobs_not_due_yet_says_when_the_first_is_due(
    db: Database, conn: Connection
) -> None:
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=30)
    with db.connect() as listener:
        channel = engine.listen(listener, QUEUE)
        engine.enqueue(conn, QUEUE, [new("a", run_at=soon + datetime.timedelta(seconds=60))])
        first = payloads(listener, conn, channel)
        engine.enqueue(conn, QUEUE, [new("b", run_at=soon + datetime.timedelta(seconds=9))])
        second = payloads(listener, conn, channel)
        engine.enqueue(conn, QUEUE, [new("c"), new("d", run_at=soon)])
        both = payloads(listener, conn, channel)
    assert 80 < float(*first) <= 90 and 30 < float(*second) <= 39
    assert sorted(both)[0] == "" and 20 < float(sorted(both)[1]) <= 30  # now, and in 30 s


def test_next_due_is_when_the_first_job_waiting_for_a_time_is_due(conn: Connection) -> None:
    now = datetime.datetime.now(datetime.UTC)
    assert engine.next_due(conn, QUEUE, [2, 1, 0]) is None
    engine.enqueue(conn, QUEUE, [new("now"), new("past", run_at=now - datetime.timedelta(hours=1))])
    engine.enqueue(conn, QUEUE, [new("m", MEDIUM, run_at=now + datetime.timedelta(seconds=50))])
    engine.enqueue(conn, QUEUE, [new("l", LOW, run_at=now + datetime.timedelta(seconds=20))])
    due = engine.next_due(conn, QUEUE, [2, 1, 0])
    assert due is not None and 10 < due <= 20
    assert engine.next_due(conn, QUEUE, [int(MEDIUM)]) == pytest.approx(50, abs=10)
    assert status(conn, "past") == "queued"


def test_both_claims_carry_the_jobs_run_at(conn: Connection) -> None:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    engine.enqueue(conn, QUEUE, [new("a", run_at=past), new("b", run_at=past)])
    process = engine.register(conn, QUEUE, lease=30.0)
    [first] = engine.claim(conn, QUEUE, process, 1)
    [second], _ = engine.claim_counting(conn, QUEUE, process, 1, None, [int(p) for p in Priority])
    assert first.run_at == second.run_at == past


# --- retention ----------------------------------------------------------------------


def test_prune_deletes_only_completed_and_cancelled_jobs_past_retention_in_batches(
    conn: Connection,
) -> None:
    jobs = [new(f"old{i}", key=f"k{i}") for i in range(5)]
    jobs += [new("recent"), new("dead"), new("waiting")]
    engine.enqueue(conn, QUEUE, jobs)
    process = engine.register(conn, QUEUE, lease=30.0)
    claims = {c.id: c for c in engine.claim(conn, QUEUE, process, limit=7)}
    done = [(c.id, c.token) for c in claims.values() if c.id != "dead"]
    assert len(engine.complete(conn, QUEUE, done)) == 6
    engine.fail(conn, QUEUE, "dead", claims["dead"].token, "boom")
    engine.enqueue(conn, QUEUE, [new("called-off", key="kc"), new("called-off-now")])
    assert engine.cancel(conn, QUEUE, "called-off") and engine.cancel(conn, QUEUE, "called-off-now")
    conn.execute(
        "UPDATE jobq_jobs SET finished_at = now() - interval '2 hours'"
        " WHERE id LIKE 'old%%' OR id IN ('dead', 'called-off')"
    )

    params = {"queue": QUEUE, "status": "completed", "retention": 3600.0, "batch": 3}
    assert conn.execute(pg_queries.PRUNE, params).rowcount == 3  # one batch, no more
    assert engine.prune(conn, QUEUE, retention=3600.0, batch=1) == 3
    left = {row[0] for row in conn.execute("SELECT id FROM jobq_jobs")}
    assert left == {"recent", "dead", "waiting", "called-off-now"}
    # A pruned job's idempotency key may be used again; a cancelled one's too.
    assert engine.enqueue(conn, QUEUE, [new("new0", key="k0"), new("new1", key="kc")]) is None


# --- what a handle asks of every job ------------------------------------------------


def test_only_a_job_that_has_not_started_can_be_cancelled(conn: Connection) -> None:
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    engine.enqueue(conn, QUEUE, [new("running"), new("waiting"), new("later", run_at=later)])
    process = engine.register(conn, QUEUE, lease=30.0)
    engine.claim(conn, QUEUE, process, limit=1)

    assert engine.cancel(conn, QUEUE, "waiting") is True
    assert engine.cancel(conn, QUEUE, "later") is True
    assert engine.cancel(conn, QUEUE, "running") is False
    assert engine.cancel(conn, QUEUE, "waiting") is False  # settled now
    assert engine.cancel(conn, QUEUE, "unknown") is None
    assert [status(conn, i) for i in ("waiting", "later", "running")] == [
        "cancelled",
        "cancelled",
        "processing",
    ]
    assert engine.claim(conn, QUEUE, process, limit=10) == []


def test_a_cancel_never_waits_for_a_row_another_transaction_holds(
    db: Database, conn: Connection
) -> None:
    engine.enqueue(conn, QUEUE, [new("a")])
    with db.connect(autocommit=False) as claimer:  # a claim (or a completion) under way
        claimer.execute("SELECT 1 FROM jobq_jobs WHERE id = 'a' FOR UPDATE")
        conn.execute("SET lock_timeout = '60s'")  # a wait would show as a hang, not an error
        assert engine.cancel(conn, QUEUE, "a") is False  # the holder wins, at once
        claimer.rollback()  # the claim did not happen after all
    assert engine.cancel(conn, QUEUE, "a") is True
    assert status(conn, "a") == "cancelled"


def test_a_failed_attempt_whose_row_is_locked_is_refused_at_once_not_waited_for(
    db: Database, conn: Connection
) -> None:
    engine.enqueue(conn, QUEUE, [new("a")])
    process = engine.register(conn, QUEUE, lease=30.0)
    [a] = engine.claim(conn, QUEUE, process, limit=1)
    conn.execute("SET lock_timeout = '60s'")  # a wait would show as a hang, not an error
    with db.connect(autocommit=False) as handler:  # complete() left open by a handler
        handler.execute("SELECT 1 FROM jobq_jobs WHERE id = 'a' FOR UPDATE")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            engine.retry(conn, QUEUE, "a", a.token, "boom", 0.0)
        with pytest.raises(psycopg.errors.LockNotAvailable):
            engine.fail(conn, QUEUE, "a", a.token, "boom")
        handler.rollback()
    assert engine.retry(conn, QUEUE, "a", a.token, "boom", 0.0) is True  # tried again
    assert engine.retry(conn, QUEUE, "a", a.token, "boom", 0.0) is False  # fenced
    assert status(conn, "a") == "queued"


def test_unsettled_and_counts_answer_for_jobs_run_anywhere(conn: Connection) -> None:
    engine.enqueue(conn, QUEUE, [new("a", HIGH), new("b", HIGH), new("c", LOW), new("d")])
    process = engine.register(conn, QUEUE, lease=30.0)
    [a, _] = engine.claim(conn, QUEUE, process, limit=2)
    engine.complete(conn, QUEUE, [(a.id, a.token)])
    assert engine.counts(conn, QUEUE) == {
        (HIGH, "processing"): 1,
        (MEDIUM, "queued"): 1,
        (LOW, "queued"): 1,
    }
    assert engine.unsettled(conn, QUEUE, ["a", "b", "c", "gone"]) == {"b", "c"}
    assert engine.unsettled(conn, QUEUE, []) == set()


def test_a_completion_in_the_callers_transaction_commits_with_its_effects(
    db: Database, conn: Connection
) -> None:
    conn.execute("CREATE TABLE effects (job text PRIMARY KEY)")
    engine.enqueue(conn, QUEUE, [new("kept"), new("undone")])
    process = engine.register(conn, QUEUE, lease=30.0)
    claims = {c.id: c for c in engine.claim(conn, QUEUE, process, limit=2)}
    engine.deregister(conn, process)  # its lease has passed: a rescuer may come by

    with db.connect(autocommit=False) as kept, db.connect(autocommit=False) as undone:
        for app, job_id in ((kept, "kept"), (undone, "undone")):
            app.execute("INSERT INTO effects VALUES (%s)", (job_id,))
            token = claims[job_id].token
            assert engine.complete(app, QUEUE, [(job_id, token)]) == {job_id}
        # Both rows are locked by their callers' transactions: the rescuer passes them by.
        assert engine.rescue(conn, QUEUE) == []
        assert [status(conn, i) for i in ("kept", "undone")] == ["processing", "processing"]
        kept.commit()
        undone.rollback()

    effects = {row[0] for row in conn.execute("SELECT job FROM effects")}
    assert (effects, status(conn, "kept")) == ({"kept"}, "completed")
    assert [(r.id, r.status) for r in engine.rescue(conn, QUEUE)] == [("undone", "queued")]
