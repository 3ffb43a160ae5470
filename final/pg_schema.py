"""The tables a queue on PostgreSQL keeps, and how they come to exist.

Three tables, in the first schema of the connection's ``search_path`` (so that a DSN
with ``options=-csearch_path=NAME`` puts a queue in a schema of its own):

- ``jobq_jobs``: every job of every queue in the database, one row each, keyed by
  ``(queue, id)``; an idempotency key is unique within its queue.
- ``jobq_processes``: one row for each start of a process that claims jobs, with a
  fresh id each start, the ``lease`` it promised and the last time it proved it was
  alive. A job that is running names the process that claimed it.
- ``jobq_version``: one row, the version of these tables.

``ensure_schema`` creates them on first use. Several processes may start at once,
and two concurrent ``CREATE TABLE IF NOT EXISTS`` of one name can still fail on the
catalog's own unique index, so the creation runs under a transaction-level advisory
lock: the first process creates, the others wait and then find the tables made.
Tables of version 1 are upgraded in place under the same lock (version 2 only adds
the nullable column ``run_at``); tables of any other version are refused, never
altered.
"""

from __future__ import annotations

from typing import Any

import psycopg

from final.store import StoreError

__all__ = ["SCHEMA_VERSION", "SchemaMismatch", "ensure_schema"]

SCHEMA_VERSION = 2  # 2: run_at, the time a job was asked to wait for

# The states a row can be in. Waiting: 'queued' (due now, or since), 'scheduled' (not
# before its ready_at), 'retrying' (waiting out a backoff). Running: 'processing'.
# Settled: 'completed', 'failed' (a dead letter), 'cancelled'. ready_at is where a
# waiting job stands in its line; run_at is the time it was enqueued to wait for, kept
# for info() after a retry has moved ready_at.
_TABLES = """
CREATE TABLE IF NOT EXISTS jobq_version (
    version integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS jobq_processes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue text NOT NULL,
    host text NOT NULL,
    pid integer NOT NULL,
    lease interval NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 50);

CREATE TABLE IF NOT EXISTS jobq_jobs (
    queue text NOT NULL,
    id text NOT NULL,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    payload bytea NOT NULL,
    priority smallint NOT NULL,
    idempotency_key text,
    max_retries integer NOT NULL CHECK (max_retries >= 0),
    status text NOT NULL CHECK (status IN (
        'queued', 'scheduled', 'retrying', 'processing', 'completed', 'failed', 'cancelled'
    )),
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    ready_at timestamptz NOT NULL DEFAULT now(),
    run_at timestamptz,
    started_at timestamptz,
    finished_at timestamptz,
    process_id bigint,
    claim bigint,
    deadline timestamptz,
    PRIMARY KEY (queue, id)
) WITH (
    fillfactor = 70,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

-- One row per rate-limited queue: its shared token bucket.
CREATE TABLE IF NOT EXISTS jobq_rates (
    queue text PRIMARY KEY,
    tokens float8 NOT NULL,
    refilled_at timestamptz NOT NULL DEFAULT now()
);

CREATE SEQUENCE IF NOT EXISTS jobq_claims AS bigint CACHE 100;

CREATE UNIQUE INDEX IF NOT EXISTS jobq_jobs_key
    ON jobq_jobs (queue, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobq_jobs_waiting
    ON jobq_jobs (queue, priority DESC, ready_at, seq)
    WHERE status IN ('queued', 'scheduled', 'retrying');
CREATE INDEX IF NOT EXISTS jobq_jobs_running
    ON jobq_jobs (queue, process_id) WHERE status = 'processing';
CREATE INDEX IF NOT EXISTS jobq_jobs_settled
    ON jobq_jobs (queue, status, finished_at)
    WHERE status IN ('completed', 'failed', 'cancelled');
"""
# Why these settings:
# - Every job is inserted, updated two or three times and deleted: the jobs table is
#   mostly dead rows unless vacuum keeps up. The default trigger (a fifth of the table
#   dead) lets a table of a million rows carry 200,000 dead ones that every claim's
#   index scan walks over; one hundredth, with no cost delay, keeps vacuum close behind.
# - fillfactor leaves room in each page, so that the updates that touch no indexed
#   column (extending a deadline) stay on their page as HOT updates, and a heartbeat,
#   which touches none, always does.
# - A partial index per question the queue asks often: what is waiting, in the order
#   of claiming (jobq_jobs_waiting); what is running (rescue); what has settled, and
#   since when (pruning, dead letters). Each row sits in at most one of the three.
# - The claim token comes from a sequence: unique across every process, and never
#   reused, unlike an attempt count, which a replay from the dead letters resets.


# Version 1 to 2: run_at, a nullable column, so the ALTER rewrites no row (it holds
# the table's lock only for a moment). A job still waiting for its time in version 1
# waited for its ready_at; a retry's or a settled job's run_at is not known, and stays
# NULL, as a job enqueued with no run_at. _TABLES after it makes anything else missing.
_UPGRADE_1 = """
ALTER TABLE jobq_jobs ADD COLUMN IF NOT EXISTS run_at timestamptz;
UPDATE jobq_jobs SET run_at = ready_at WHERE status = 'scheduled' AND run_at IS NULL;
"""


class SchemaMismatch(StoreError):
    """The database holds tables this code cannot use: another version, or not ours."""


def ensure_schema(conn: psycopg.Connection[Any]) -> None:
    """Create the queue's tables in the connection's current schema, unless they exist.

    Safe to call from many processes at once. Commits its own transaction, so
    ``conn`` must not be in one. Tables of version 1 are upgraded to this version in
    that transaction (processes still running version 1's code keep working: they
    name their columns). Raises ``SchemaMismatch`` when the tables are of
    another version, when a table of ours is there without its version, or when
    the ``search_path`` names no schema that exists.
    """
    with conn.transaction():
        schema = conn.execute("SELECT current_schema()").fetchone()
        if schema is None or schema[0] is None:
            raise SchemaMismatch(
                "the connection's search_path names no schema that exists:"
                " create the schema, or fix search_path in the DSN"
            )
        name = schema[0]
        # One creator at a time per schema; the others wait here, then find the tables.
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('jobq.schema'), hashtext(current_schema()))"
        )
        found = conn.execute(
            "SELECT to_regclass('jobq_version') IS NOT NULL, to_regclass('jobq_jobs') IS NOT NULL"
        ).fetchone()
        assert found is not None
        has_version, has_jobs = found
        if not has_version:
            if has_jobs:
                raise SchemaMismatch(
                    f"schema {name!r} has a table jobq_jobs but no jobq_version: it was"
                    " not made by this queue, or its creation was cut short; use another"
                    " schema or database, or drop the jobq_* tables if they hold nothing"
                    " you need"
                )
            conn.execute(_TABLES)
            conn.execute("INSERT INTO jobq_version (version) VALUES (%s)", (SCHEMA_VERSION,))
            return
        versions = [row[0] for row in conn.execute("SELECT version FROM jobq_version")]
        if versions == [1]:
            conn.execute(_UPGRADE_1)
            conn.execute(_TABLES)
            conn.execute("UPDATE jobq_version SET version = %s", (SCHEMA_VERSION,))
            return
        if versions != [SCHEMA_VERSION]:
            found_text = ", ".join(map(str, versions)) or "none"
            raise SchemaMismatch(
                f"the queue's tables in schema {name!r} are of version {found_text}, and"
                f" this code uses version {SCHEMA_VERSION}: run the code that matches"
                " them, or point the DSN at another schema or database (search_path)"
                " and let this code create its own tables there"
            )
