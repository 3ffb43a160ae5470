"""What the tour measures, as data: a row per figure, a scenario per picture.

A leaf: ``benchmarks/tour.py`` fills these in and ``benchmarks/tour_plots.py`` draws
them, and neither has to import the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TIERS = ("naive", "improved", "final")


@dataclass(slots=True)
class Row:
    """One line of the table: a label and a cell per tier, with the figures behind it."""

    label: str
    cells: dict[str, str] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)

    def put(self, tier: str, cell: str, value: Any = None) -> None:
        self.cells[tier] = cell
        self.values[tier] = value


@dataclass(slots=True)
class Scenario:
    """One scenario: its title, its rows, and what its picture plots, per tier."""

    number: int
    title: str
    rows: list[Row]
    plot: dict[str, Any] = field(default_factory=dict)

    def row(self, label: str) -> Row:
        return next(r for r in self.rows if r.label == label)


__all__ = ["TIERS", "Row", "Scenario"]
