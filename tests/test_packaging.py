"""What ``pip install .`` puts in site-packages: the three tiers, and nothing else.

``benchmarks`` and ``tests`` run from a checkout, where the working directory is on
``sys.path``. Installed, they would sit in site-packages as top-level packages with
generic names, test files and all, beside whatever else a user has installed.
"""

from __future__ import annotations

import tomllib
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

# setuptools before 71 has no type hints; later ones do, hence unused-ignore.
from setuptools import find_namespace_packages  # type: ignore[import-untyped, unused-ignore]

ROOT = Path(__file__).resolve().parents[1]
TIERS = {"naive", "improved", "final"}


def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def packaged() -> list[str]:
    """The packages setuptools builds into the wheel, found as it finds them.

    ``[tool.setuptools.packages.find]`` in pyproject.toml looks for namespace packages
    too unless it says ``namespaces = false``, so a folder without ``__init__.py``
    counts as well.
    """
    find = pyproject()["tool"]["setuptools"]["packages"]["find"]
    assert find.get("namespaces", True), "this test finds packages as namespaces=true does"
    return list(
        find_namespace_packages(
            where=str(ROOT / find.get("where", ["."])[0]),
            include=find.get("include", ["*"]),
            exclude=find.get("exclude", []),
        )
    )


def test_only_the_three_tiers_are_installed_as_top_level_packages() -> None:
    top_level = {name.split(".")[0] for name in packaged()}
    assert top_level == TIERS


def test_every_package_inside_a_tier_is_installed_with_it() -> None:
    inside = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for tier in TIERS
        for init in (ROOT / tier).rglob("__init__.py")
    }
    assert inside <= set(packaged())


def test_the_license_is_an_spdx_expression_not_a_deprecated_table() -> None:
    # setuptools 77 and later warn at every build when `license` is a table.
    assert isinstance(pyproject()["project"]["license"], str)


def test_the_dashboards_files_are_package_data_so_that_a_wheel_carries_them() -> None:
    # Served from the installed package: a file the wheel leaves out is a page that
    # breaks only once installed, never in a checkout.
    globs = pyproject()["tool"]["setuptools"].get("package-data", {}).get("final.dashboard", [])
    folder = ROOT / "final" / "dashboard"
    files = {path.name for path in folder.iterdir() if path.is_file() and path.suffix != ".py"}
    assert files and "final.dashboard" in packaged()
    assert [name for name in files if not any(fnmatch(name, glob) for glob in globs)] == []
    from final.dashboard import ASSETS

    assert set(ASSETS) == files, "the server serves exactly the files shipped"
