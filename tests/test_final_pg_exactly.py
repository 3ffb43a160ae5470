"""final on PostgreSQL: jobs enqueued, and completed, in the application's own transaction.

Each test has a schema of its own (``tests/pg.py``). The application's connection is a
plain psycopg connection on that schema, not in autocommit mode, as a web request's
or a handler's would be. The kill -9 proof with worker processes is in
``tests/test_final_pg_exactly_processes.py``.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from final import ClaimLost, DuplicateJob, Job, JobQueue, Status, current_attempt
from tests.pg import Database
from tests.support import PATIENCE, Recorder
from tests.tcp_proxy import TcpProxy

pytest.importorskip("psycopg")

import psycopg  # after the skip

pytestmark = pytest.mark.tiers("final-pg")


@pytest.fixture
def app(db: Database) -> Iterator[psycopg.Connection[Any]]:
    """The application's connection, with an effects table of its own."""
    with db.connect() as setup:
        setup.execute("CREATE TABLE effects (job text, attempt int)")
    with db.connect(autocommit=False) as conn:
        yield conn


def effects(db: Database) -> list[tuple[str, int]]:
    with db.connect() as conn:
        return [tuple(r) for r in conn.execute("SELECT job, attempt FROM effects ORDER BY 2")]


# --- enqueue in the caller's transaction ---------------------------------------------


def test_a_job_enqueued_in_a_transaction_is_never_claimed_before_the_commit(
    pg_queues: Any, app: psycopg.Connection[Any]
) -> None:
    recorder = Recorder()
    producer = pg_queues(workers=0)
    pg_queues(recorder, workers=4)
    app.execute("INSERT INTO effects VALUES ('order', 0)")  # the order that causes the job
    producer.enqueue(Job(id="mine"), connection=app)
    # Load: 200 other jobs claimed and run while the transaction stays open.
    producer.enqueue_many([Job(id=f"other-{n}") for n in range(200)])
    recorder.wait_until(lambda r: len(r.succeeded) >= 200, "the other jobs to run")
    assert "mine" not in recorder.attempts
    assert producer.status("mine") is None  # from every other connection
    app.commit()
    recorder.wait_until(lambda r: "mine" in r.succeeded, "the committed job to run")
    assert recorder.attempts["mine"] == 1


def test_a_rollback_leaves_no_job_and_join_does_not_wait_for_it(
    pg_queues: Any, app: psycopg.Connection[Any]
) -> None:
    recorder = Recorder()
    q = pg_queues(recorder, workers=2)
    q.enqueue_many([Job(id="a"), Job(id="b")], connection=app)  # the transaction opens here
    app.rollback()
    assert q.join(timeout=PATIENCE)  # a job that will never exist is not waited for
    assert q.status("a") is None and q.status("b") is None
    q.enqueue(Job(id="c"), connection=app)
    app.commit()
    assert q.join(timeout=PATIENCE)  # a committed one is
    assert q.status("c") is Status.COMPLETED
    assert set(recorder.attempts) == {"c"}


def test_a_duplicate_in_the_transaction_leaves_it_usable(
    pg_queues: Any, app: psycopg.Connection[Any], db: Database
) -> None:
    q = pg_queues(workers=0)
    q.enqueue(Job(id="taken", idempotency_key="paid"))
    with app.transaction():
        app.execute("INSERT INTO effects VALUES ('order', 1)")
        with pytest.raises(DuplicateJob) as raised:
            q.enqueue(Job(id="again", idempotency_key="paid"), connection=app)
        assert raised.value.job_id == "taken"
        batch = [Job(id="x"), Job(id="y", idempotency_key="paid"), Job(id="z")]
        with pytest.raises(DuplicateJob) as refused:
            q.enqueue_many(batch, connection=app)
        assert refused.value.accepted == 1
        app.execute("INSERT INTO effects VALUES ('order', 2)")  # still a working transaction
        assert q.status("x") is None  # not committed yet
    assert effects(db) == [("order", 1), ("order", 2)]
    assert [q.status(i) for i in ("x", "z", "again")] == [Status.QUEUED, None, None]


def test_a_connection_that_cannot_share_its_transaction_is_refused(
    pg_queues: Any, db: Database, server: str
) -> None:
    q = pg_queues(workers=0)
    with db.connect() as autocommit, pytest.raises(ValueError, match="autocommit"):
        q.enqueue(Job(id="a"), connection=autocommit)
    # A connection on the same server whose search_path holds no queue tables.
    with psycopg.connect(server) as elsewhere, pytest.raises(ValueError, match="search_path"):
        q.enqueue(Job(id="a"), connection=elsewhere)
    closed = db.connect(autocommit=False)
    closed.close()
    with pytest.raises(ValueError, match="closed"):
        q.enqueue_many([Job(id="a")], connection=closed)
    assert q.status("a") is None


def test_an_autocommit_connection_inside_a_transaction_block_shares_it(
    pg_queues: Any, db: Database
) -> None:
    q = pg_queues(workers=0)
    with db.connect() as conn:  # autocommit, as many applications keep theirs
        with conn.transaction():
            q.enqueue(Job(id="kept"), connection=conn)
            assert q.status("kept") is None  # not committed yet
        with conn.transaction() as block:
            q.enqueue(Job(id="rolled-back"), connection=conn)
            raise psycopg.Rollback(block)  # leaves the block, rolled back
    assert q.status("kept") is Status.QUEUED and q.status("rolled-back") is None


def test_without_dsn_a_connection_is_a_value_error() -> None:
    q = JobQueue(lambda job: None, workers=1)
    try:
        with pytest.raises(ValueError, match="connection needs dsn"):
            q.enqueue(Job(id="a"), connection=object())
        with pytest.raises(ValueError, match="connection needs dsn"):
            q.enqueue_many([Job(id="a")], connection=object())
        errors: list[BaseException] = []

        def handler(job: Job) -> None:
            try:
                current_attempt().complete(object())
            except ValueError as error:
                errors.append(error)

        q2 = JobQueue(handler, workers=1)
        q2.enqueue(Job(id="b"))
        assert q2.join(timeout=PATIENCE)
        q2.close()
        assert "needs a queue with dsn" in str(errors[0])
    finally:
        q.close()


# --- complete in the handler's transaction -------------------------------------------


def effect_handler(
    db: Database,
    *,
    roll_back_first: bool = False,
    raise_after: bool = False,
    then: Callable[[], object] = lambda: None,
) -> Callable[[Job], None]:
    """Insert one effect row and complete the job in the same transaction."""

    def handler(job: Job) -> None:
        attempt = current_attempt()
        with db.connect(autocommit=False) as conn:
            conn.execute("INSERT INTO effects VALUES (%s, %s)", (job.id, attempt.number))
            attempt.complete(conn)
            if roll_back_first and attempt.number == 1:
                conn.rollback()
                return
            conn.commit()
        then()
        if raise_after:
            raise RuntimeError("after the commit")

    return handler


def test_a_completion_commits_with_the_effect_and_a_later_exception_changes_nothing(
    pg_queues: Any, app: psycopg.Connection[Any], db: Database
) -> None:
    q = pg_queues(effect_handler(db, raise_after=True), workers=2, max_retries=3)
    q.enqueue(Job(id="a"))
    assert q.join(timeout=PATIENCE)
    info = q.info("a")
    assert info is not None
    assert (info.status, info.attempts, info.last_error) == (Status.COMPLETED, 1, None)
    assert effects(db) == [("a", 1)]


def test_a_rolled_back_completion_is_a_failed_attempt_and_the_job_is_retried(
    pg_queues: Any, app: psycopg.Connection[Any], db: Database
) -> None:
    q = pg_queues(effect_handler(db, roll_back_first=True), workers=2, backoff=0.01)
    q.enqueue(Job(id="a"))
    assert q.join(timeout=PATIENCE)
    info = q.info("a")
    assert info is not None
    assert (info.status, info.attempts) == (Status.COMPLETED, 2)
    assert info.last_error == "the transaction of complete() did not commit"
    assert effects(db) == [("a", 2)]


def test_a_completion_left_open_holds_up_neither_cancel_nor_lookups(
    pg_queues: Any, app: psycopg.Connection[Any], db: Database
) -> None:
    completed, commit = threading.Event(), threading.Event()

    def handler(job: Job) -> None:
        with db.connect(autocommit=False) as conn:
            conn.execute("INSERT INTO effects VALUES (%s, %s)", (job.id, 1))
            current_attempt().complete(conn)
            completed.set()
            assert commit.wait(PATIENCE)
            conn.commit()

    q = pg_queues(handler, workers=1)
    q.enqueue(Job(id="a"))
    assert completed.wait(PATIENCE)
    answers: list[object] = []
    asker = threading.Thread(target=lambda: answers.extend([q.cancel("a"), q.info("a")]))
    asker.start()
    asker.join(PATIENCE)  # a cancel that waited for the row would still be waiting
    alive = asker.is_alive()
    commit.set()
    assert not alive
    assert answers[0] is False  # running: its completion is under way
    assert q.join(timeout=PATIENCE)
    info = q.info("a")
    assert info is not None and info.status is Status.COMPLETED
    assert effects(db) == [("a", 1)]


def test_an_attempt_cut_off_past_its_lease_cannot_commit_its_effect(
    pg_queues: Any, app: psycopg.Connection[Any], db: Database
) -> None:
    """The queue's own connections go through a proxy that is cut; the handler's do
    not, so that nothing but the claim's fence stands between its effect and a commit."""
    address = urllib.parse.urlsplit(db.dsn)
    proxy = TcpProxy((address.hostname or "127.0.0.1", address.port or 5432))
    user = f"{address.username}@" if address.username else ""
    through_proxy = db.queue_dsn.replace(address.netloc, f"{user}127.0.0.1:{proxy.port}", 1)
    started, rescued = threading.Event(), threading.Event()
    outcomes: list[str] = []

    def slow(job: Job) -> None:
        attempt = current_attempt()
        started.set()
        assert rescued.wait(PATIENCE)
        with db.connect(autocommit=False) as conn:
            conn.execute("INSERT INTO effects VALUES (%s, %s)", (job.id, attempt.number))
            try:
                attempt.complete(conn)
            except ClaimLost:
                conn.rollback()
                outcomes.append("claim lost")
                return
            conn.commit()

    try:
        first = pg_queues(slow, dsn=through_proxy, workers=1, lease=1.0)
        pg_queues(workers=0).enqueue(Job(id="a"))
        assert started.wait(PATIENCE)
        proxy.cut()  # its heartbeats stop: after the lease, the job is anyone's
        committed = threading.Event()
        pg_queues(effect_handler(db, then=committed.set), workers=1, lease=1.0)
        assert committed.wait(PATIENCE)  # the second attempt, after the rescue
        rescued.set()  # now the first attempt tries to commit its effect
        proxy.resume()
        first.close(timeout=PATIENCE)
        assert outcomes == ["claim lost"]
        assert effects(db) == [("a", 2)]
    finally:
        proxy.close()


def test_complete_on_a_connection_that_cannot_hold_the_effect_is_refused(
    pg_queues: Any, app: psycopg.Connection[Any], db: Database
) -> None:
    refusals: list[str] = []

    def handler(job: Job) -> None:
        with db.connect() as autocommit:  # each statement would commit on its own
            try:
                current_attempt().complete(autocommit)
            except ValueError as error:
                refusals.append(str(error))
        with db.connect(autocommit=False) as conn:  # then the right way
            conn.execute("INSERT INTO effects VALUES (%s, %s)", (job.id, 1))
            current_attempt().complete(conn)

    q = pg_queues(handler, workers=1)
    q.enqueue(Job(id="a"))
    assert q.join(timeout=PATIENCE)
    assert len(refusals) == 1 and "autocommit" in refusals[0]
    assert q.status("a") is Status.COMPLETED and effects(db) == [("a", 1)]


def test_complete_twice_in_one_transaction_completes_once(
    pg_queues: Any, app: psycopg.Connection[Any], db: Database
) -> None:
    def handler(job: Job) -> None:
        with db.connect(autocommit=False) as conn:
            conn.execute("INSERT INTO effects VALUES (%s, %s)", (job.id, current_attempt().number))
            current_attempt().complete(conn)
            current_attempt().complete(conn)  # a helper that completes too: no harm

    q = pg_queues(handler, workers=1, max_retries=0)
    q.enqueue(Job(id="a"))
    assert q.join(timeout=PATIENCE)
    assert q.status("a") is Status.COMPLETED and effects(db) == [("a", 1)]


def test_complete_on_a_second_connection_while_the_first_is_open_is_refused_not_hung(
    pg_queues: Any, app: psycopg.Connection[Any], db: Database
) -> None:
    refusals: list[str] = []

    def handler(job: Job) -> None:
        with db.connect(autocommit=False) as first, db.connect(autocommit=False) as second:
            current_attempt().complete(first)  # the job's row is locked until first ends
            # Only the unfixed code waits here; the bound makes it fail instead of hang.
            second.execute("SET lock_timeout = '10s'")
            try:
                current_attempt().complete(second)
            except RuntimeError as error:
                refusals.append(str(error))
            first.execute("INSERT INTO effects VALUES (%s, %s)", (job.id, 1))

    q = pg_queues(handler, workers=1, max_retries=0)
    q.enqueue(Job(id="a"))
    assert q.join(timeout=PATIENCE)
    assert len(refusals) == 1 and "another connection" in refusals[0]
    assert q.status("a") is Status.COMPLETED and effects(db) == [("a", 1)]
