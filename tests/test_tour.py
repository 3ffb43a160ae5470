"""The tour (``make demo``) runs to its end and its table tells each tier's lesson.

It runs once, in its quick mode, with the pictures; the figures move from run to run,
so the assertions are about their shape, with margins a loaded machine keeps.
"""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from benchmarks import tour
from benchmarks.tour_table import Scenario

ROOT = Path(__file__).resolve().parents[1]
TIERS = ("naive", "improved", "final")


@dataclass(frozen=True)
class Tour:
    scenarios: dict[int, Scenario]
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
    assert sorted(scenarios) == [1, 2, 3, 4, 5, 6, 7, 8]
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
    # What waits is what memory holds: naive's peak follows its backlog, which the line
    # above puts at more than twice the lane improved holds at most (1.5 rather than 2
    # leaves room for the lanes' own overhead).
    # Final is not compared: most of its memory here is its history of settled jobs,
    # which grows at the workers' pace up to `history`, and on a loaded machine, where
    # naive's producer offers fewer jobs in its quick 0.3 s, it may pass naive's.
    peak = run.values(1, "peak memory (tracemalloc)")
    assert peak["naive"] > 1.5 * peak["improved"], peak


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


def test_flaky_handlers_retries_wait_out_a_doubling_backoff_with_jitter(run: Tour) -> None:
    delays = run.values(4, "retry delays in ms (#n: min-max)")
    assert delays["naive"] == {}
    for tier in ("improved", "final"):
        # The quick plan has jobs failing once, twice and for good: every retry is seen.
        assert sorted(delays[tier]) == list(range(1, tour.RETRIES + 1)), tier
        for n, waited in delays[tier].items():
            ceiling = min(tour.MAX_BACKOFF, tour.BACKOFF * 2 ** (n - 1))
            # A retry never runs before its delay, drawn from the ceiling's upper half;
            # it may run later than the ceiling by however long a loaded machine takes
            # to get the scheduler and a worker to it.
            assert min(waited) >= ceiling / 2, (tier, n, waited)
            assert max(waited) <= ceiling + 0.25, (tier, n, waited)
        # Doubling: the shortest second retry waited longer than the shortest first one.
        assert min(delays[tier][2]) > min(delays[tier][1]), (tier, delays[tier])
        # Jitter: the first retries of the jobs that failed together are spread out,
        # not in lockstep (over a tenth of the range they are drawn from, at the least).
        first = delays[tier][1]
        assert max(first) - min(first) > tour.BACKOFF / 2 / 10, (tier, first)


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


def test_final_starts_scheduled_jobs_at_their_time_and_runs_none_it_cancelled(run: Tour) -> None:
    late = run.values(7, "started after its run_at by (p50 / max)")
    called_off = run.values(7, f"{tour.TIMED_JOBS // 2} of them cancelled while they waited")
    assert late["naive"] is None and late["improved"] is None  # no run_at: the lesson
    assert len(late["final"]) == tour.TIMED_JOBS // 2  # the ones not called off ran
    assert min(late["final"]) >= 0  # none before its run_at
    assert called_off["final"] == {"cancelled": tour.TIMED_JOBS // 2, "ran": 0}
    assert (
        "no run_at"
        in run.scenarios[7].row("started after its run_at by (p50 / max)").cells["naive"]
    )


def test_worker_processes_on_postgresql_lose_nothing_or_the_tour_says_it_skipped(
    run: Tour,
) -> None:
    lost = run.scenarios[8].row("acknowledged jobs lost")
    assert lost.cells["naive"] == lost.cells["improved"] == "-"
    if tour._pg_unavailable() is not None:
        assert "skipped" in run.scenarios[8].row("worker processes started").cells["final"]
        return
    assert lost.values["final"]["lost"] == 0
    assert lost.values["final"]["acknowledged"] > 0
    assert run.values(8, "the job that kills its process")["final"] is True


def test_ctrl_c_stops_the_tour_with_the_table_of_what_was_complete() -> None:
    tour_run = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.tour", "--quick"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert tour_run.stderr is not None
        # Into a pipe, the progress is a line per step, printed before the step runs:
        # once the second scenario is under way, the first is complete.
        seen = []
        for line in tour_run.stderr:
            seen.append(line)
            if "2. mixed priorities" in line:
                break
        tour_run.send_signal(signal.SIGINT)
        out, err = tour_run.communicate(timeout=60)
    finally:
        if tour_run.poll() is None:  # the test failed before the tour ended
            tour_run.kill()
            tour_run.communicate()
    err = "".join(seen) + err
    assert tour_run.returncode == 130, err
    assert "stopped by Ctrl+C" in out
    assert out.splitlines()[0].split() == list(TIERS)
    assert "1. a fast producer" in out and "   peak memory (tracemalloc)" in out
    assert "6. a crash" not in out
    assert "Traceback" not in err


def test_the_pictures_are_written_one_per_scenario(run: Tour) -> None:
    plots = run.plots
    written = sorted(p.name for p in plots.glob("*.png"))
    assert written == [f"tour_{n}.png" for n in range(1, 9)]
    assert all((plots / name).stat().st_size > 1000 for name in written)
