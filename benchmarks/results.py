"""Reading what ``make bench`` wrote: the notebooks and ``benchmarks.report`` start here.

``make bench`` writes pytest-benchmark's JSON to ``benchmarks/results/quick.json``
(``make bench-full``: ``full.json``; ``crash.json`` beside them is ``make crash-test``'s
tally). Each benchmark's figures are in its ``extra_info``; ``Run.rows(group)``
returns them as plain dicts, one per benchmark, with the group, the benchmark's name
and the median time of its rounds added.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

# One colour per system in every plot; durable systems are the blues, purples and greys.
COLORS = {
    "ThreadPoolExecutor": "black",
    "naive": "tab:red",
    "improved": "tab:orange",
    "final": "tab:green",
    "final-sqlite": "tab:blue",
    "final-sqlite-process": "tab:cyan",
    "persistqueue": "tab:purple",
    "litequeue": "tab:brown",
    "huey-memory": "tab:pink",
    "huey-sqlite": "tab:gray",
}


@dataclass
class Run:
    path: Path
    mode: str  # "quick" or "full"
    when: str  # ISO time the run finished
    machine: dict[str, Any]  # scenarios.machine() at the start of the run
    commit: str | None
    benchmarks: list[dict[str, Any]]

    def rows(self, group: str) -> list[dict[str, Any]]:
        """The figures of every benchmark whose group starts with ``group``."""
        found = []
        for b in self.benchmarks:
            if (b.get("group") or "").startswith(group):
                row = dict(b.get("extra_info", {}))
                row["group"] = b["group"]
                row["name"] = b["name"]
                row["median_s"] = b["stats"]["median"]
                found.append(row)
        return found

    def describe(self) -> str:
        m = self.machine
        load = ", ".join(f"{x:.2f}" for x in m.get("load_average", ()))
        at = f" at commit {self.commit[:7]}" if self.commit else ""
        return (
            f"{self.mode} run of {self.when[:16].replace('T', ' ')} UTC{at}: "
            f"Python {m.get('python')}, {m.get('cpus')} CPUs ({m.get('processor')}), "
            f"load average {load} at the start"
        )


def latest(directory: Path = RESULTS) -> Path:
    """The suite's results file written last (quick or full), by the time inside it."""
    found = [directory / f"{mode}.json" for mode in ("quick", "full")]
    runs = sorted(
        (p for p in found if p.exists()), key=lambda p: json.loads(p.read_text())["datetime"]
    )
    if not runs:
        raise FileNotFoundError(f"no results in {directory}: run `make bench` first")
    return runs[-1]


def load(path: Path | None = None) -> Run:
    """Load one results file, by default the latest."""
    path = latest() if path is None else path
    data = json.loads(path.read_text())
    commit = (data.get("commit_info") or {}).get("id")
    return Run(
        path,
        data.get("mode", "quick"),
        data["datetime"],
        data["machine_info"].get("description", {}),
        commit,
        data["benchmarks"],
    )
