"""Loads the tier plugin early, so that ``pytest --tier NAME`` is known at start-up,
and the PostgreSQL fixtures (``tests/pg.py``), which any test module may use."""

pytest_plugins = ["tests.tiers", "tests.pg"]
