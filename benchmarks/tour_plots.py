"""The tour's pictures, one PNG per scenario: ``python -m benchmarks.tour --plot DIR``.

Kept apart from ``benchmarks/tour.py`` so that the tour itself runs without matplotlib
(it comes with the ``tour`` extra). Each function draws what one scenario measured.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from benchmarks.tour_table import TIERS, Scenario

COLOURS = {"naive": "tab:red", "improved": "tab:blue", "final": "tab:green"}
ROW_OF = {"H": 2, "M": 1, "L": 0}


def _fast_producer(ax: Axes, data: dict[str, Any]) -> None:
    for tier in TIERS:
        if tier in data:
            samples = data[tier]
            ax.plot(
                [s[0] for s in samples],
                [max(1, s[1]) for s in samples],
                label=tier,
                color=COLOURS[tier],
                linestyle="--" if tier == "final" else "-",  # improved's line lies beneath
            )
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the producer began")
    ax.set_ylabel("jobs waiting (log)")
    ax.legend()


def _mixed_priorities(ax: Axes, data: dict[str, Any]) -> None:
    for offset, tier in enumerate(t for t in TIERS if t in data):
        order: str = data[tier]
        ys = [ROW_OF[letter] + (offset - 1) * 0.2 for letter in order]
        ax.plot(range(1, len(order) + 1), ys, "o-", label=tier, color=COLOURS[tier])
    ax.set_yticks([0, 1, 2], ["LOW", "MEDIUM", "HIGH"])
    ax.set_xlabel("pick (jobs arrived LOW, MEDIUM, HIGH, LOW, ...)")
    ax.legend()


def _high_flood(ax: Axes, data: dict[str, Any]) -> None:
    tiers = [t for t in TIERS if t in data]
    ax.bar(tiers, [max(data[t]["waits"]) * 1000 for t in tiers], color=[COLOURS[t] for t in tiers])
    ax.set_yscale("log")
    ax.set_ylabel("longest LOW wait, ms (log)")


def _flaky(ax: Axes, data: dict[str, Any]) -> None:
    tiers = [t for t in TIERS if t in data]
    ok = [data[t]["succeeded"] for t in tiers]
    gone = [data[t]["gone"] for t in tiers]
    ax.bar(tiers, ok, label="succeeded", color="tab:green")
    ax.bar(tiers, gone, bottom=ok, label="failed for good", color="tab:red")
    ax.set_ylabel("jobs")
    ax.legend()


def _close(ax: Axes, data: dict[str, Any]) -> None:
    tiers = [t for t in TIERS if t in data]
    parts = [
        ("ran", "tab:green"),
        ("after", "tab:olive"),
        ("lost", "tab:orange"),
        ("dropped", "tab:red"),
    ]
    bottom = [0] * len(tiers)
    for key, colour in parts:
        heights = [data[t].get(key, 0) for t in tiers]
        label = "ran after a restart" if key == "after" else key
        ax.bar(tiers, heights, bottom=bottom, label=label, color=colour)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_ylabel("jobs queued at close(timeout)")
    ax.legend()


def _crash(ax: Axes, data: dict[str, Any]) -> None:
    tiers = [t for t in TIERS if t in data]
    width = 0.25
    for i, (key, colour) in enumerate(
        [("acknowledged", "tab:blue"), ("lost", "tab:red"), ("duplicates", "tab:orange")]
    ):
        xs = [n + (i - 1) * width for n in range(len(tiers))]
        ax.bar(xs, [data[t][key] for t in tiers], width, label=key, color=colour)
    ax.set_xticks(range(len(tiers)), tiers)
    ax.set_ylabel("jobs")
    ax.legend()


def _in_time(ax: Axes, data: dict[str, Any]) -> None:
    for n, tier in enumerate(TIERS):
        late = data.get(tier)
        if late is None:
            # x in data, y in the axes' height: the text stays inside whatever the scale
            ax.text(
                n,
                0.05,
                "no run_at",
                ha="center",
                va="bottom",
                color=COLOURS[tier],
                transform=ax.get_xaxis_transform(),
            )
            continue
        ms = [x * 1000 for x in late]
        ax.plot([n] * len(ms), ms, "o", alpha=0.6, color=COLOURS[tier])
    ax.set_xticks(range(len(TIERS)), TIERS)
    ax.set_ylabel("ms from run_at to start")


def _postgres(ax: Axes, data: dict[str, Any]) -> None:
    found = data.get("final")
    if found is None:  # no server answered: the picture says so
        ax.text(0.5, 0.5, "skipped: no PostgreSQL server", ha="center", va="center")
        ax.set_axis_off()
        return
    keys = ["acknowledged", "lost", "repeats"]
    ax.bar(keys, [found[k] for k in keys], color=["tab:blue", "tab:red", "tab:orange"])
    ax.set_ylabel("jobs (final, three worker processes)")


DRAW: dict[int, Callable[[Axes, dict[str, Any]], None]] = {
    1: _fast_producer,
    2: _mixed_priorities,
    3: _high_flood,
    4: _flaky,
    5: _close,
    6: _crash,
    7: _in_time,
    8: _postgres,
}


def draw(scenarios: Sequence[Scenario], directory: Path) -> list[Path]:
    """Write one PNG per scenario into ``directory``; return their paths."""
    matplotlib.use("Agg")  # files only: no window, no display needed
    written = []
    for scenario in scenarios:
        fig, ax = plt.subplots(figsize=(7, 4))
        DRAW[scenario.number](ax, scenario.plot)
        ax.set_title(f"{scenario.number}. {scenario.title}")
        fig.tight_layout()
        path = directory / f"tour_{scenario.number}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
