"""Execute the notebooks headlessly: ``python -m benchmarks.run_notebooks`` (``make notebooks``).

By default every notebook in ``notebooks/`` runs on the latest results and is saved in
place with its outputs, and the notebooks save the figures the README shows. With
``--quick`` (what the test suite does) each notebook runs its own measurement at a
small size, writes nothing, and the run only proves that it still executes.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
QUICK_ENV = "JOBQ_NOTEBOOK_QUICK"  # "1": small live measurements, no files written

logger = logging.getLogger(__name__)


def notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def execute(path: Path, *, quick: bool, timeout: float = 600) -> nbformat.NotebookNode:
    """Run every cell of ``path`` in a fresh kernel; save it in place unless ``quick``.

    A cell that raises fails the run with nbclient's ``CellExecutionError``, which
    names the cell and the error.
    """
    nb: nbformat.NotebookNode = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]
    # The kernel inherits this process's environment: that is how it learns the mode.
    saved = os.environ.get(QUICK_ENV)
    os.environ[QUICK_ENV] = "1" if quick else "0"
    try:
        client = NotebookClient(
            nb,
            timeout=int(timeout),
            kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
        )
        client.execute()
    finally:
        if saved is None:
            del os.environ[QUICK_ENV]
        else:
            os.environ[QUICK_ENV] = saved
    if not quick:
        nbformat.write(nb, path)  # type: ignore[no-untyped-call]
    return nb


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, nothing saved")
    parser.add_argument("names", nargs="*", help="notebooks to run (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    chosen = [NOTEBOOKS / n for n in args.names] if args.names else notebooks()
    for path in chosen:
        logger.info("executing %s", path.relative_to(NOTEBOOKS.parent))
        execute(path, quick=args.quick)


if __name__ == "__main__":
    main()
