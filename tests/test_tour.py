"""The tour (``make demo``) runs to its end and its table tells each tier's lesson.

It runs once, in its quick mode, with the pictures; the figures move from run to run,
so the assertions are about their shape, with margins a loaded machine keeps.
"""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from benchmarks import tour

TIERS = ("naive", "improved", "final")


@dataclass(frozen=True)
class Tour:
    scenarios: dict[int, tour.Scenario]
    printed: str
    plots: Path

    def values(self, number: int, label: str) -> dict[str, Any]:
        return self.scenarios[number].row(label).values


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Tour:
    plots = tmp_path_factory.mktemp("plots")
    out = io.StringIO()
    with redirect_stdout(out):
        scenarios = tour.main(["--quick", "--plot", str(plots)])
    return Tour({s.number: s for s in scenarios}, out.getvalue(), plots)


def test_the_table_has_every_scenario_and_a_cell_for_every_tier(run: Tour) -> None:
    scenarios, printed = run.scenarios, run.printed
    assert sorted(scenarios) == [1, 2, 3, 4, 5, 6]
    header = printed.splitlines()[0].split()
    assert header == list(TIERS)
    for scenario in scenarios.values():
        assert f"{scenario.number}. {scenario.title}" in printed
        for row in scenario.rows:
            assert set(row.cells) == set(TIERS), row.label
            line = next(line for line in printed.splitlines() if line.startswith(f"   {row.label}"))
            for cell in row.cells.values():
                assert cell in line
    assert "the tour took" in printed


def test_a_fast_producer_grows_naive_and_is_pushed_back_by_the_others(run: Tour) -> None:
    waiting = run.values(1, "most jobs waiting at once")
    # A job per worker may be between its lane and its handler, and the two workers'
    # counts may land out of order: a margin of two per worker.
    assert waiting["improved"] <= tour.QUEUE_SIZE + 4
    assert waiting["final"] <= tour.QUEUE_SIZE + 4
    assert waiting["naive"] > 2 * tour.QUEUE_SIZE


def test_mixed_priorities_run_as_they_came_on_naive_and_by_lane_on_the_others(run: Tour) -> None:
    order = run.values(2, "arrived LMHLMHLMHLMH, ran")
    assert order == {"naive": "LMH" * 4, "improved": "HHHHMMMMLLLL", "final": "HHHHMMMMLLLL"}


def test_a_high_flood_starves_low_on_improved_only(run: Tour) -> None:
    scenario = run.scenarios[3]
    waits = run.values(scenario.number, f"longest wait of {tour.LOW_JOBS} LOW jobs")
    picks = run.values(scenario.number, "HIGH jobs run before the last LOW")
    assert waits["improved"] >= tour.QUICK.flood_for
    # Final: each LOW job within fairness + 1 picks of the one before it, plus the
    # attempts already running on the two workers when it arrived.
    assert picks["final"] <= tour.LOW_JOBS * 11 + 2
    assert picks["improved"] > picks["final"]
    assert picks["improved"] > picks["naive"]


def test_flaky_handlers_are_retried_and_dead_letters_replayed_on_final(run: Tour) -> None:
    scenario = run.scenarios[4]
    retries = run.values(scenario.number, "retries")
    succeeded = run.values(scenario.number, "jobs that succeeded")
    assert retries["naive"] == 0
    assert retries["improved"] == retries["final"] > 0  # the same plan of failures
    assert succeeded["naive"] < succeeded["improved"] == succeeded["final"]
    assert "replayed and ran" in scenario.row("jobs that failed for good").cells["final"]


def test_close_drops_on_naive_counts_on_improved_and_keeps_on_final(run: Tour) -> None:
    scenario = run.scenarios[5]
    n = tour.QUICK.close_jobs
    plain = run.values(scenario.number, f"close() with {n} queued")
    assert plain["naive"] < n
    assert plain["improved"] == plain["final"] == n
    timed = run.values(5, f"close(timeout={tour.CLOSE_AFTER}) with {n} queued")
    assert timed["naive"]["ran"] + timed["naive"]["dropped"] == n
    assert timed["improved"]["ran"] + timed["improved"]["lost"] == n
    assert timed["final"]["kept"] == timed["final"]["after"]


def test_a_crash_loses_the_in_memory_tiers_jobs_and_none_of_finals(run: Tour) -> None:
    lost = run.values(6, "acknowledged, never ran")
    assert lost["final"] == 0
    assert lost["naive"] > 0 and lost["improved"] > 0


def test_the_pictures_are_written_one_per_scenario(run: Tour) -> None:
    plots = run.plots
    written = sorted(p.name for p in plots.glob("*.png"))
    assert written == [f"tour_{n}.png" for n in range(1, 7)]
    assert all((plots / name).stat().st_size > 1000 for name in written)
