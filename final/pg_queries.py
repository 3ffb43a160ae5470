"""Every SQL statement the queue sends to PostgreSQL, named, in one place.

Nothing else in the tier writes SQL: ``final/pg_engine.py`` runs these by name, with
named parameters, so that a reader can see every question the queue asks the database
on one page, and each statement is prepared once per connection and reused.

Rules every statement here keeps:

- Time is the database's: ``now()`` (the start of the statement's transaction), never
  a time sent by a client, whose clock may be minutes off another machine's.
- A claim is fenced: a statement that ends or changes an attempt matches the row by
  ``(queue, id, claim)``, and changes nothing when the claim has moved on (rescued by
  another process, or given back). Every way out of ``'processing'`` clears ``claim``.
- ``FOR UPDATE SKIP LOCKED`` sits in a ``MATERIALIZED`` CTE: the planner must run the
  ``LIMIT`` subquery once, not again for each row of a join, which could lock and
  return more rows than asked for. The outer statement then finds those rows by
  ``id = ANY (ARRAY(SELECT id FROM cte))``, a primary-key lookup whatever the planner
  guesses of the CTE's size (a join on the CTE turned into a scan of the whole table
  once the guess was large).
- A statement that makes jobs claimable notifies the queue's channel with an empty
  payload; PostgreSQL folds identical notifications of one transaction into one, so a
  transaction wakes the listeners once however many statements it ran. An enqueue of
  jobs not due yet notifies the seconds until the first of them is due, by the
  server's clock, so that a claimer can wake then without asking.
"""

from __future__ import annotations

__all__ = [
    "CANCEL",
    "CHANNEL",
    "CLAIM",
    "CLAIM_COUNTING",
    "COMPLETE",
    "COMPLETED_HERE",
    "COUNTS",
    "DEAD_COUNT",
    "DEAD_LETTERS",
    "DEREGISTER",
    "ENQUEUE",
    "ENQUEUE_ONE",
    "EXTEND",
    "FAIL",
    "FIND",
    "FIRST_STATEMENT",
    "GIVE_BACK",
    "HEARTBEAT",
    "HELD",
    "HOLDER",
    "NEXT_DUE",
    "NOTIFY",
    "OLDEST_WAITING",
    "PRUNE",
    "RATE_ROW",
    "REFUND_TOKENS",
    "REGISTER",
    "RESCUE",
    "RESCUE_LOCK",
    "RETRY",
    "REVIVE",
    "SET_CONFIG",
    "STATUS_COUNTS",
    "SWEEP_PROCESSES",
    "TABLES_PRESENT",
    "TAKE_TOKENS",
    "UNSETTLED",
    "VACUUM",
    "VACUUM_STATE",
    "WAITING",
    "WHERE_AM_I",
]

# The queue's notification channel: one per schema and queue name, short enough for
# an identifier (63 bytes) whatever the queue's name.
_CHANNEL = "'jobq_' || left(md5(current_schema() || '/' || %(queue)s), 24)"
CHANNEL = f"SELECT {_CHANNEL}"
NOTIFY = f"SELECT pg_notify({_CHANNEL}, '')"

# A process's start: a fresh id, and the lease it promises to heartbeat within.
REGISTER = """
INSERT INTO jobq_processes (queue, host, pid, lease)
VALUES (%(queue)s, %(host)s, %(pid)s, make_interval(secs => %(lease)s::float8))
RETURNING id
"""

# No row: the process was declared dead (its lease passed) and its claims are gone.
HEARTBEAT = "UPDATE jobq_processes SET heartbeat_at = now() WHERE id = %(process)s"

DEREGISTER = "DELETE FROM jobq_processes WHERE id = %(process)s"

# The jobs of one batch, in order. ON CONFLICT DO NOTHING, with no target, skips a row
# whose id or idempotency key is taken (by an earlier row of the batch too), and waits
# for an uncommitted row that holds one. The caller compares the ids returned with
# the batch to find the first refused. A job not due yet is 'scheduled'; a job enters
# its line when it is due, so ready_at is its place in the line (a run_at already
# past joins the back of the line, as a job enqueued now). The wake-ups: an empty
# one when some job is due now, the seconds until the first is due when some is not.
ENQUEUE = f"""
WITH inserted AS (
    INSERT INTO jobq_jobs (
        queue, id, payload, priority, idempotency_key, max_retries, status, ready_at, run_at
    )
    SELECT %(queue)s, j.id, j.payload, j.priority, j.idempotency_key, j.max_retries,
           CASE WHEN j.run_at > now() THEN 'scheduled' ELSE 'queued' END,
           greatest(j.run_at, now()), j.run_at
    FROM unnest(
        %(ids)s::text[], %(payloads)s::bytea[], %(priorities)s::smallint[],
        %(keys)s::text[], %(max_retries)s::integer[], %(run_at)s::timestamptz[]
    ) AS j (id, payload, priority, idempotency_key, max_retries, run_at)
    ON CONFLICT DO NOTHING
    RETURNING id, status, ready_at
)
SELECT array_agg(id),
       CASE WHEN bool_or(status = 'queued') THEN pg_notify({_CHANNEL}, '') END,
       CASE WHEN bool_or(status = 'scheduled') THEN pg_notify({_CHANNEL}, extract(
           epoch FROM min(ready_at) FILTER (WHERE status = 'scheduled') - now()
       )::float8::text) END
FROM inserted HAVING count(*) > 0
"""

# One job due now, inserted only while its lane holds fewer than %(cap)s due jobs
# (counted no further, as WAITING counts them: a job not due yet holds no room, and
# is not read): queue_size's count and the insert in one round trip. No row back:
# the lane is full, or the id or key is taken; the caller asks which.
ENQUEUE_ONE = f"""
WITH inserted AS (
    INSERT INTO jobq_jobs (
        queue, id, payload, priority, idempotency_key, max_retries, status, ready_at
    )
    SELECT %(queue)s, %(id)s, %(payload)s, %(priority)s, %(key)s, %(max_retries)s,
           'queued', now()
    WHERE (
        SELECT count(*) FROM (
            SELECT 1 FROM jobq_jobs
            WHERE queue = %(queue)s AND status IN ('queued', 'scheduled', 'retrying')
              AND priority = %(priority)s AND ready_at <= now()
            LIMIT %(cap)s
        ) AS lane
    ) < %(cap)s
    ON CONFLICT DO NOTHING
    RETURNING id
)
SELECT id, pg_notify({_CHANNEL}, '') FROM inserted
"""

# The job that holds a refused job's id, or else its idempotency key.
HOLDER = """
SELECT id, id = %(id)s FROM jobq_jobs
WHERE queue = %(queue)s AND (id = %(id)s OR idempotency_key = %(key)s)
ORDER BY id = %(id)s DESC
LIMIT 1
"""

# Up to `limit` due jobs, highest priority first, then by their place in the line.
# The attempt is counted here, at the claim, so that an attempt that kills its
# process still counts. The rows come back in no order: the caller sorts them.
# Lane by lane (%(lanes)s, highest first), each a range of the waiting index that
# ends at now(): one index scan over every lane would step over each job of a higher
# lane that is not due yet, and jobs may wait for their time by the hundred thousand.
# The outer LIMIT pulls rows as it needs them, so a lower lane is read, and its rows
# locked, only when the lanes above it had too few.
_PICKED = """
picked AS MATERIALIZED (
    SELECT lane.id
    FROM unnest(%(lanes)s::int[]) AS p (priority), LATERAL (
        SELECT id FROM jobq_jobs
        WHERE queue = %(queue)s
          AND status IN ('queued', 'scheduled', 'retrying')
          AND priority = p.priority
          AND ready_at <= now()
        ORDER BY ready_at, seq
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS lane
    LIMIT %(limit)s
)"""
# What a claim does to each picked row, and the columns of a pg_engine.Claim.
_TAKE = """
UPDATE jobq_jobs AS j
SET status = 'processing',
    attempts = j.attempts + 1,
    started_at = now(),
    process_id = %(process)s,
    claim = nextval('jobq_claims'),
    deadline = now() + make_interval(secs => %(timeout)s::float8)"""
_CLAIMED = """
RETURNING j.id, j.claim, j.payload, j.priority, j.idempotency_key, j.max_retries,
          j.attempts, j.enqueued_at, j.ready_at, j.seq, j.deadline, j.run_at"""
CLAIM = f"""
WITH {_PICKED}{_TAKE}
WHERE j.queue = %(queue)s AND j.id = ANY (ARRAY(SELECT id FROM picked)){_CLAIMED}
"""

# Seconds from now until the first waiting job that is not due yet (scheduled, or
# waiting out a backoff) is due, or NULL: when a claimer with nothing to do should
# look again. One step down the waiting index per lane: what is due sorts before.
NEXT_DUE = """
SELECT extract(epoch FROM min(n.ready_at) - now())::float8
FROM unnest(%(lanes)s::int[]) AS p (priority), LATERAL (
    SELECT ready_at FROM jobq_jobs
    WHERE queue = %(queue)s AND status IN ('queued', 'scheduled', 'retrying')
      AND priority = p.priority AND ready_at > now()
    ORDER BY ready_at
    LIMIT 1
) AS n
"""

# CLAIM, and in the same statement (so in the same snapshot, taken before the claim
# changed anything) each lane's due jobs counted no further than the claim's limit,
# as WAITING counts them: fairness's counts without a round trip of their own. Each
# row carries the counts of every lane in %(lanes)s, in that order. The rows are
# picked lane by lane, as CLAIM picks them, and every read ends at now(), so that
# jobs not due yet, however many, are never read.
CLAIM_COUNTING = f"""
WITH {_PICKED}, waiting AS MATERIALIZED (
    SELECT array_agg((
        SELECT count(*) FROM (
            SELECT 1 FROM jobq_jobs
            WHERE queue = %(queue)s AND status IN ('queued', 'scheduled', 'retrying')
              AND priority = p.priority AND ready_at <= now()
            LIMIT %(limit)s
        ) AS lane
    ) ORDER BY p.n) AS counts
    FROM unnest(%(lanes)s::int[]) WITH ORDINALITY AS p (priority, n)
){_TAKE}
FROM waiting AS w
WHERE j.queue = %(queue)s AND j.id = ANY (ARRAY(SELECT id FROM picked)){_CLAIMED}, w.counts
"""

# A queue's shared token bucket (rate_limit across processes): its row is made once,
# full; a take refills it from the server's clock and debits what it grants, under
# the row's lock, so that simultaneous takes by many processes add up.
RATE_ROW = """
INSERT INTO jobq_rates (queue, tokens) VALUES (%(queue)s, %(burst)s)
ON CONFLICT (queue) DO NOTHING
"""
TAKE_TOKENS = """
WITH cur AS (
    SELECT least(%(burst)s::float8, tokens
                 + extract(epoch FROM now() - refilled_at)::float8 * %(rate)s) AS avail
    FROM jobq_rates WHERE queue = %(queue)s FOR UPDATE
), granted AS (
    SELECT avail, greatest(0, least(%(want)s, floor(avail)))::int AS n FROM cur
)
UPDATE jobq_rates AS r SET tokens = g.avail - g.n, refilled_at = now()
FROM granted AS g WHERE r.queue = %(queue)s
RETURNING g.n, g.avail
"""
REFUND_TOKENS = """
UPDATE jobq_rates SET tokens = least(%(burst)s::float8, tokens + %(n)s)
WHERE queue = %(queue)s
"""

# Many attempts' successes in one statement: the ids whose claim still held.
COMPLETE = """
UPDATE jobq_jobs AS j
SET status = 'completed', finished_at = now(), process_id = NULL, claim = NULL,
    deadline = NULL
FROM unnest(%(ids)s::text[], %(claims)s::bigint[]) AS s (id, claim)
WHERE j.queue = %(queue)s AND j.id = s.id AND j.claim = s.claim
  AND j.status = 'processing'
RETURNING j.id
"""

# Whether an attempt still holds its claim: read after a handler that completed in
# its own transaction, to learn whether that transaction committed. A read, so it
# never waits for the row's lock.
HELD = """
SELECT EXISTS (
    SELECT FROM jobq_jobs
    WHERE queue = %(queue)s AND id = %(id)s AND claim = %(claim)s AND status = 'processing'
)
"""

# Whether the transaction open on the caller's connection is the one that completed the
# job: its row's version was written by this very transaction (xmin is the 32 bits of
# the 64-bit transaction id). A second complete() in one transaction is then a no-op.
COMPLETED_HERE = """
SELECT EXISTS (
    SELECT FROM jobq_jobs
    WHERE queue = %(queue)s AND id = %(id)s AND status = 'completed'
      AND xmin::text::bigint = pg_current_xact_id_if_assigned()::text::bigint %% 4294967296
)
"""

# The row of an attempt that failed, locked NOWAIT: a lock held on it is most likely
# the handler's own complete() transaction, still open after a timeout or after the
# handler returned, and it may stay open for long. Waiting for it would hold the claim
# connection, which every worker of the process shares; the error (lock_not_available)
# comes back at once instead, and the caller tries again later, the connection free
# in between.
_FAILED_ROW = """
WITH mine AS MATERIALIZED (
    SELECT id FROM jobq_jobs
    WHERE queue = %(queue)s AND id = %(id)s AND claim = %(claim)s AND status = 'processing'
    FOR UPDATE NOWAIT
)
"""
_FENCED = """
WHERE queue = %(queue)s AND id = %(id)s AND claim = %(claim)s AND status = 'processing'
  AND id = ANY (ARRAY(SELECT id FROM mine))
"""

# A failed attempt with retries left: back in its line once the backoff has passed.
RETRY = f"""{_FAILED_ROW}
UPDATE jobq_jobs
SET status = CASE WHEN %(delay)s::float8 > 0 THEN 'retrying' ELSE 'queued' END,
    ready_at = now() + make_interval(secs => %(delay)s::float8),
    last_error = %(error)s, process_id = NULL, claim = NULL, deadline = NULL
{_FENCED}"""

# A failed attempt with no retries left: into the dead letters.
FAIL = f"""{_FAILED_ROW}
UPDATE jobq_jobs
SET status = 'failed', finished_at = now(), last_error = %(error)s,
    process_id = NULL, claim = NULL, deadline = NULL
{_FENCED}"""

# Claimed but never started (the process is closing): the attempt is taken back, and
# the job keeps its place in the line, since ready_at does not change.
GIVE_BACK = f"""
WITH given AS (
    UPDATE jobq_jobs AS j
    SET status = 'queued', attempts = j.attempts - 1,
        started_at = CASE WHEN j.attempts > 1 THEN j.started_at END,
        process_id = NULL, claim = NULL, deadline = NULL
    FROM unnest(%(ids)s::text[], %(claims)s::bigint[]) AS s (id, claim)
    WHERE j.queue = %(queue)s AND j.id = s.id AND j.claim = s.claim
      AND j.status = 'processing'
    RETURNING j.id
)
SELECT array_agg(id), pg_notify({_CHANNEL}, '') FROM given HAVING count(*) > 0
"""

# More time for a running attempt, from now.
EXTEND = """
UPDATE jobq_jobs SET deadline = now() + make_interval(secs => %(seconds)s::float8)
WHERE queue = %(queue)s AND id = %(id)s AND claim = %(claim)s AND status = 'processing'
"""

# One rescuer per queue at a time; the others skip the round instead of queueing up.
RESCUE_LOCK = """
SELECT pg_try_advisory_xact_lock(
    hashtext('jobq.rescue'), hashtext(current_schema() || '/' || %(queue)s)
)
"""

# Running jobs whose process has not heartbeated within its own lease (or whose row
# is gone), or whose attempt passed its deadline. The attempt was counted at the
# claim: a job with no retries left becomes a dead letter, the others go back to
# the front of their line at once. SKIP LOCKED: a row being settled right now is
# not stuck, and the next round looks again.
RESCUE = """
WITH lost AS MATERIALIZED (
    SELECT j.id FROM jobq_jobs AS j
    LEFT JOIN jobq_processes AS p ON p.id = j.process_id
    WHERE j.queue = %(queue)s AND j.status = 'processing'
      AND (p.id IS NULL OR p.heartbeat_at < now() - p.lease OR j.deadline < now())
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE jobq_jobs AS j
SET status = CASE WHEN j.attempts > j.max_retries THEN 'failed' ELSE 'queued' END,
    finished_at = CASE WHEN j.attempts > j.max_retries THEN now() END,
    last_error = CASE
        WHEN EXISTS (
            SELECT FROM jobq_processes AS p
            WHERE p.id = j.process_id AND p.heartbeat_at >= now() - p.lease
        ) THEN 'lost: the attempt passed its deadline'
        ELSE 'lost: the process running it stopped heartbeating'
    END,
    process_id = NULL, claim = NULL, deadline = NULL
WHERE j.queue = %(queue)s AND j.id = ANY (ARRAY(SELECT id FROM lost))
RETURNING j.id, j.status, j.attempts, j.last_error
"""

# After a rescue, in its transaction: the rows of processes past their lease. A
# process that was only slow finds its row gone at its next heartbeat.
SWEEP_PROCESSES = """
DELETE FROM jobq_processes WHERE queue = %(queue)s AND heartbeat_at < now() - lease
"""

# One batch of completed (or cancelled) jobs past retention, oldest first. Batches
# keep each transaction short: a long one holds back vacuum on every table of the
# database. One status at a time, so that the settled index gives them in order.
PRUNE = """
WITH old AS MATERIALIZED (
    SELECT id FROM jobq_jobs
    WHERE queue = %(queue)s AND status = %(status)s
      AND finished_at < now() - make_interval(secs => %(retention)s::float8)
    ORDER BY finished_at
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM jobq_jobs WHERE queue = %(queue)s AND id = ANY (ARRAY(SELECT id FROM old))
"""

# A job waiting for a time that has come is in its line: it shows as 'queued'.
_SHOWN = """
CASE WHEN status IN ('scheduled', 'retrying') AND ready_at <= now() THEN 'queued'
     ELSE status END
"""

# What status(), info() and dead_letters() read.
_STORED = f"""
SELECT id, payload, priority, idempotency_key, max_retries, {_SHOWN},
       attempts, last_error, enqueued_at, ready_at, started_at, finished_at, run_at
FROM jobq_jobs
"""
FIND = _STORED + "WHERE queue = %(queue)s AND id = %(id)s"
DEAD_LETTERS = _STORED + "WHERE queue = %(queue)s AND status = 'failed' ORDER BY finished_at, seq"
# How many: an index-only count on the settled index, not every row and its payload.
DEAD_COUNT = "SELECT count(*) FROM jobq_jobs WHERE queue = %(queue)s AND status = 'failed'"

# A dead letter replayed with a fresh budget, at the back of its line.
REVIVE = f"""
WITH revived AS (
    UPDATE jobq_jobs
    SET status = 'queued', attempts = 0, ready_at = now(), finished_at = NULL
    WHERE queue = %(queue)s AND id = %(id)s AND status = 'failed'
    RETURNING id
)
SELECT id, pg_notify({_CHANNEL}, '') FROM revived
"""

# A job that has not started never will: (cancelled, known, its priority if
# cancelled). The row is taken FOR
# UPDATE SKIP LOCKED: a waiting row locked by another transaction is being claimed
# right now (the claim wins: it is running), and a running row locked by a handler's
# own transaction (complete(connection)) is running anyway; either way the answer is
# "not cancelled" at once, where a plain UPDATE would wait for that transaction to end
# with the API connection, and every lookup behind it, stuck. Whoever holds the lock
# first wins, so a claim and a cancel at the same instant still end with one winner.
# The EXISTS reads the statement's snapshot, from before the update, so it sees the
# row either way.
CANCEL = """
WITH target AS MATERIALIZED (
    SELECT id FROM jobq_jobs
    WHERE queue = %(queue)s AND id = %(id)s AND status IN ('queued', 'scheduled', 'retrying')
    FOR UPDATE SKIP LOCKED
), cancelled AS (
    UPDATE jobq_jobs SET status = 'cancelled', finished_at = now()
    WHERE queue = %(queue)s AND id = ANY (ARRAY(SELECT id FROM target))
    RETURNING id, priority
)
SELECT EXISTS (SELECT FROM cancelled),
       EXISTS (SELECT FROM jobq_jobs WHERE queue = %(queue)s AND id = %(id)s),
       (SELECT priority FROM cancelled)
"""

# Of these ids, the ones not settled yet: what join() waits for. An id that is gone
# was pruned, so it had settled. Without %(scheduled)s, a job whose run_at has not
# come does not count: what close() waits for.
UNSETTLED = """
SELECT id FROM jobq_jobs
WHERE queue = %(queue)s AND id = ANY (%(ids)s::text[])
  AND status NOT IN ('completed', 'failed', 'cancelled')
  AND (%(scheduled)s OR status <> 'scheduled' OR ready_at <= now())
"""

# The jobs waiting and running, by priority and state as status() shows it: the
# gauges. The partial indexes answer it.
COUNTS = f"""
SELECT priority, {_SHOWN}, count(*) FROM jobq_jobs
WHERE queue = %(queue)s
  AND status IN ('queued', 'scheduled', 'retrying', 'processing')
GROUP BY 1, 2
"""

# Each lane's jobs due (queued, or scheduled or retrying whose time has come), counted
# no further than %(cap)s: what the claim's fairness and enqueue's bound need to know,
# read from the waiting index in O(cap), where a full count would read the whole
# backlog before every claim and every enqueue. A job not due yet holds no room.
WAITING = """
SELECT p.priority, (
    SELECT count(*) FROM (
        SELECT 1 FROM jobq_jobs
        WHERE queue = %(queue)s AND status IN ('queued', 'scheduled', 'retrying')
          AND priority = p.priority AND ready_at <= now()
        LIMIT %(cap)s
    ) AS lane
)
FROM unnest(%(lanes)s::int[]) AS p (priority)
"""

# python -m final inspect --dsn: every job of the queue by status (as status() shows
# it) and priority, and when the oldest waiting job was enqueued (seconds since the
# epoch), in one read.
STATUS_COUNTS = f"""
SELECT {_SHOWN}, priority, count(*) FROM jobq_jobs WHERE queue = %(queue)s
GROUP BY 1, 2
"""
OLDEST_WAITING = """
SELECT extract(epoch FROM min(enqueued_at))::float8 FROM jobq_jobs
WHERE queue = %(queue)s AND status IN ('queued', 'scheduled', 'retrying')
  AND ready_at <= now()
"""

# A session setting of one connection (the claim connection's asynchronous commit),
# set after connecting so that the dsn's own options (its search_path) stay in force.
SET_CONFIG = "SELECT set_config(%(name)s, %(value)s, false)"

# Whether the queue's tables exist, without creating them (inspect is read-only).
TABLES_PRESENT = "SELECT to_regclass('jobq_version') IS NOT NULL"

# The dashboard's recent failures: the retries (from the waiting index) and the newest
# dead letters (the settled index, read backwards), merged by when each failed.
RECENT_FAILURES = f"""
SELECT * FROM (
    ({_STORED} WHERE queue = %(queue)s AND status = 'retrying'
     ORDER BY started_at DESC LIMIT %(limit)s)
    UNION ALL
    ({_STORED} WHERE queue = %(queue)s AND status = 'failed'
     ORDER BY finished_at DESC LIMIT %(limit)s)
) AS failures
ORDER BY coalesce(finished_at, started_at) DESC
LIMIT %(limit)s
"""


# Whether this server's autovacuum is off for the jobs table (the setting, or the
# table's own reloption), and the table's dead and live rows as the statistics last
# counted them: what the upkeep reads to vacuum the table itself when nobody else will.
VACUUM_STATE = """
SELECT NOT (current_setting('autovacuum')::bool
            AND coalesce((SELECT option_value::bool FROM pg_options_to_table(c.reloptions)
                          WHERE option_name = 'autovacuum_enabled'), true)),
       coalesce(s.n_dead_tup, 0), coalesce(s.n_live_tup, 0)
FROM pg_class AS c LEFT JOIN pg_stat_user_tables AS s ON s.relid = c.oid
WHERE c.oid = 'jobq_jobs'::regclass
"""

# One pass over the jobs table, skipped when another vacuum already holds it. Not
# in a transaction: VACUUM refuses to run inside one.
VACUUM = "VACUUM (SKIP_LOCKED) jobq_jobs"

# The first statement of a caller's transaction, sent before a savepoint: psycopg opens
# the transaction at a connection's first statement, and a savepoint asked for on an
# idle connection would be a transaction of its own instead, committed at its end.
FIRST_STATEMENT = "SELECT 1"

# Which server, database and jobs table a connection sees: an application's connection
# must see the same as the queue's own, or its jobs would land in another queue.
WHERE_AM_I = """
SELECT to_regclass('jobq_jobs')::oid::bigint, current_database(),
       pg_postmaster_start_time(), inet_server_port()
"""
