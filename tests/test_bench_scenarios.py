"""The benchmark scenario whose logic is subtle enough to need a test of its own.

``make bench`` measures the rest; a mistake in ``commit_together`` would not fail
there, it would just report a ceiling that is not one.
"""

from __future__ import annotations

import sqlite3

import pytest

from benchmarks.scenarios import commit_together


@pytest.mark.parametrize(("producers", "n"), [(1, 5), (8, 64), (3, 10), (8, 5)])
def test_every_commit_carries_every_producer_still_at_work(producers: int, n: int) -> None:
    db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    db.execute("CREATE TABLE t (id TEXT PRIMARY KEY, payload BLOB)")
    commits = commit_together(db, producers, n)
    assert sorted(int(i) for (i,) in db.execute("SELECT id FROM t")) == list(range(n))
    # Producer p inserts rows p, p + producers, ...: the busiest has ceil(n / producers),
    # and a commit that carried fewer than all producers at work would make more.
    assert commits == -(-n // producers)
