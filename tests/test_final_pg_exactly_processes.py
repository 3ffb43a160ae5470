"""final on PostgreSQL: exactly-once effects across worker processes killed with SIGKILL.

``benchmarks/exactly_pg.py`` runs ``python -m final worker`` processes whose handler
(``benchmarks.pg_effects:exactly``) inserts one row into an application table and
completes its job in the same transaction. It kills them 100 times at random moments
and cuts one off from the database past its lease, then counts each job's rows. The
same run with the row committed apart from the completion (``make exactly-test-pg``,
and the tour) shows what at-least-once does instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.exactly_pg import kill_and_count
from tests.pg import Database

pytest.importorskip("psycopg")

pytestmark = [pytest.mark.tiers("final-pg"), pytest.mark.slow]


def test_100_kills_and_a_lost_lease_leave_every_job_exactly_one_effect(
    db: Database, tmp_path: Path
) -> None:
    tally = kill_and_count(db.queue_dsn, "exactly", kills=100, workdir=tmp_path, seed=19)
    assert tally.kills == 100 and tally.cut_off == 1
    assert tally.jobs > 0 and tally.lost == 0
    assert tally.one_effect == tally.jobs  # every job, exactly one row
    assert tally.two_or_more == 0 and tally.no_effect == 0
    assert tally.retried > 0  # the kills did cut attempts short, and those ran again
