"""The house rules that no linter checks: short functions in the tiers."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIERS = ("naive", "improved", "final")
# A function longer than this does more than one thing, or should be read in parts.
MAX_LINES = 60


def long_functions() -> list[str]:
    """Every function of the tiers over MAX_LINES lines, docstring and all, as
    ``path:line name (lines)``."""
    found = []
    for tier in TIERS:
        for path in sorted((ROOT / tier).glob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            for node in ast.walk(ast.parse(path.read_text(), name)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    assert node.end_lineno is not None
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_LINES:
                        found.append(f"{name}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_in_the_tiers_is_longer_than_sixty_lines() -> None:
    assert long_functions() == []
