"""Loads the tier plugin early, so that ``pytest --tier NAME`` is known at start-up."""

pytest_plugins = ["tests.tiers"]
