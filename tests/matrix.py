"""The tier matrix: which guarantee of the contract suite holds on which tier.

``python -m tests.matrix README.md`` (``make matrix``) writes it into the README between
the markers below; ``--check`` only says whether the README's copy is current, and
``tests/test_readme.py`` fails when it is not.

Where the outcomes come from: the ``lacks`` markers of the contract tests, read
without running anything. That is honest because of how ``tests/tiers.py`` turns a
marker into a test: on the tiers it names, the test is a *strict* expected failure
that must fail with an assertion, and everywhere else it must pass. So in a green
suite each marker is exactly an outcome, and the suite that checks the outcomes is
the same ``make test`` that checks this matrix. A recorded run of the suite would say
the same thing, but it would be one more file to regenerate with a full run, and it
could go stale in ways only that run would notice.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FunctionType

# Every tier of the suite, final on PostgreSQL ("final-pg") included: its column is read
# from the same markers, and its tests run wherever a server answers (tests/pg.py).
from tests.support import TIERS

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = ROOT / "tests" / "contract"
BEGIN = "<!-- tier-matrix:begin: written by `make matrix` from the contract suite -->"
END = "<!-- tier-matrix:end -->"

# The order the course tells the story in; a contract module not named here comes last.
MODULE_ORDER = (
    "test_delivery",
    "test_backpressure",
    "test_priority",
    "test_retries",
    "test_shutdown",
    "test_metrics",
    "test_status",
    "test_time",
    "test_crash",
    "test_api",
)


@dataclass(frozen=True, slots=True)
class Guarantee:
    """One contract test: what it states, where it lives, and the lesson of each tier."""

    sentence: str
    module: str
    lessons: dict[str, str]  # tier -> lesson, for the tiers that lack it
    tiers: tuple[str, ...]  # the tiers it runs on


def guarantees() -> Iterator[Guarantee]:
    names = sorted(p.stem for p in CONTRACT.glob("test_*.py"))
    ordered = [m for m in MODULE_ORDER if m in names] + [m for m in names if m not in MODULE_ORDER]
    for name in ordered:
        module = importlib.import_module(f"tests.contract.{name}")
        module_marks = list(getattr(module, "pytestmark", []))
        for attr, func in vars(module).items():
            if not (attr.startswith("test_") and isinstance(func, FunctionType)):
                continue
            # Closest first, as pytest's get_closest_marker reads them.
            marks = list(getattr(func, "pytestmark", [])) + module_marks
            lacks = next((m for m in marks if m.name == "lacks"), None)
            only = next((m for m in marks if m.name == "tiers"), None)
            yield Guarantee(
                sentence=attr.removeprefix("test_").replace("_", " "),
                module=name,
                lessons=dict(lacks.kwargs) if lacks else {},
                tiers=tuple(t for t in TIERS if only is None or t in only.args),
            )


def render() -> str:
    """The matrix as Markdown: a table, then the lessons its crosses point to."""
    lessons: list[str] = []
    lines = [
        BEGIN,
        "",
        "| guarantee (the contract test, in its own words) | "
        + " | ".join(TIERS)
        + " | shown by |",
        "|---|" + ":-:|" * len(TIERS) + "---|",
    ]
    for g in guarantees():
        cells = []
        for tier in TIERS:
            if tier not in g.tiers:
                cells.append("")
            elif tier in g.lessons:
                if g.lessons[tier] not in lessons:
                    lessons.append(g.lessons[tier])
                cells.append(f"✗ {lessons.index(g.lessons[tier]) + 1}")
            else:
                cells.append("✓")
        link = f"[{g.module}.py](tests/contract/{g.module}.py)"
        lines.append(f"| {g.sentence} | " + " | ".join(cells) + f" | {link} |")
    lines += ["", "What each cross teaches (the reason its expected failure prints):", ""]
    lines += [f"{n}. {lesson}" for n, lesson in enumerate(lessons, start=1)]
    lines += ["", END]
    return "\n".join(lines)


def rewrite(text: str) -> str:
    """``text`` with everything from the begin marker to the end marker replaced."""
    start = text.find(BEGIN)
    stop = text.find(END)
    if start < 0 or stop < start:
        raise ValueError(f"the markers are missing: put {BEGIN!r} and {END!r} where it goes")
    return text[:start] + render() + text[stop + len(END) :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the tier matrix into a Markdown file.")
    parser.add_argument("path", type=Path, help="the file with the markers, e.g. README.md")
    parser.add_argument("--check", action="store_true", help="only say whether it is current")
    args = parser.parse_args(argv)
    text = args.path.read_text(encoding="utf-8")
    new = rewrite(text)
    if args.check:
        if new != text:
            print(f"{args.path}: the tier matrix is stale; run `make matrix`", file=sys.stderr)
            return 1
        return 0
    if new != text:
        args.path.write_text(new, encoding="utf-8")
        print(f"{args.path}: tier matrix written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
