"""The notebooks still execute, each once (they compare the tiers, so no tier fixture).

Each runs in quick mode: its live measurement at a small size, its plots drawn from
the committed results, nothing written back. A notebook whose cell raises fails here
with the cell and the error.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.run_notebooks import execute, notebooks

pytestmark = pytest.mark.slow


def test_there_is_a_notebook_per_question() -> None:
    assert len(notebooks()) == 7


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.stem)
def test_notebook_executes_and_plots(path: Path) -> None:
    nb = execute(path, quick=True, timeout=120)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the notebook drew no plot"
