"""The tier plugin: every contract test runs once per tier.

``pytest --tier improved`` runs one tier (repeat the flag for more). A test marked
``@pytest.mark.lacks(naive="naive: ...")`` is a strict expected failure on the named
tiers: it must fail there with an assertion, and the reason is that tier's lesson.
If a lesson stops being true (the test passes), or the test crashes instead of
failing its assertion, the suite fails. ``pytest -rxX`` prints the lessons.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import OPTIONS, TIERS, Tier

# What counts as "the tier lacks this guarantee": an assertion about behaviour that
# does not hold (pytest.raises and pytest.fail raise pytest.fail.Exception).
LESSON_FAILS_WITH = (AssertionError, pytest.fail.Exception)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--tier",
        action="append",
        choices=TIERS,
        help="run the suite against this tier only (repeatable); default: every tier",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "tier" not in metafunc.fixturenames:
        return
    only = metafunc.definition.get_closest_marker("tiers")
    lacks = metafunc.definition.get_closest_marker("lacks")
    lessons: dict[str, str] = dict(lacks.kwargs) if lacks else {}
    unknown = set(lessons) - set(OPTIONS)
    if unknown:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: lacks() names {unknown}")
    params = []
    for name in only.args if only else TIERS:
        if name not in TIERS:
            continue  # a tier that has not landed yet
        marks = []
        if name in lessons:
            marks.append(
                pytest.mark.xfail(strict=True, raises=LESSON_FAILS_WITH, reason=lessons[name])
            )
        params.append(pytest.param(name, marks=marks, id=name))
    metafunc.parametrize("tier", params, indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = config.getoption("--tier")
    if not wanted:
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        tier = callspec.params.get("tier") if callspec else None
        only = item.get_closest_marker("tiers")
        if tier is not None:
            selected = tier in wanted
        elif only is not None:  # a tier's own tests that take no tier fixture
            selected = any(name in wanted for name in only.args)
        else:
            selected = True
        (keep if selected else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def tier(request: pytest.FixtureRequest) -> Iterator[Tier]:
    t = Tier(request.param)
    yield t
    t.cleanup()
