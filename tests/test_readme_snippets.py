"""Every Python snippet of the course pages runs, so that none drifts from the code.

A ```python fence is run as a script of its own: a fresh interpreter, an empty temporary
directory as its working directory (a snippet may write files there), the repository
first on ``PYTHONPATH``, and a timeout. It must exit with status 0, and nothing on its
stderr may be an error that says the code itself is stale (a ``NameError``, an
``AttributeError``...): a queue only logs its handler's exceptions, so a snippet whose
handler calls a name that has gone would still exit with 0.

An HTML comment on the line just above a fence, hidden when the page is rendered, says
when a fence is not a script:

- ``<!-- excerpt: PATH -->``: lines lifted from a file of the repository, which cannot
  run outside their class. They must still be in that file, in the same order; each run
  of lines between blank lines must be consecutive there. Comments and indentation are
  not compared, and ``...`` stands for any text within a line.
- ``<!-- not run: REASON -->``: a snippet that cannot run here (it needs a server of
  the reader's own, say). Such fences stay few, and each gives its reason.
- ``<!-- needs: postgresql -->``: a script that runs against the test server
  (``$JOBQ_TEST_DSN``, see tests/pg.py), given to it in that variable; skipped like the
  other PostgreSQL tests when no server answers, and a failure under ``CI``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, ROOT / "benchmarks" / "README.md", ROOT / "notebooks" / "README.md"]

# A fence may be indented (inside a list item); it closes with the same indentation.
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
MARK = re.compile(r"^\s*<!--\s*(?P<kind>excerpt|not run|needs):\s*(?P<what>.*?)\s*-->\s*$")
ANY_MARK = re.compile(r"<!--\s*(?:excerpt|not run|needs)\b")
# What a handler's traceback ends with when the snippet, not the job, is wrong.
STALE = re.compile(
    r"^(?:NameError|AttributeError|TypeError|ImportError|ModuleNotFoundError|SyntaxError)\b.*",
    re.MULTILINE,
)
TRAILING_COMMENT = re.compile(r"\s{2,}#.*$")  # ruff format puts two spaces before one

SECONDS = 100  # below pytest's own timeout, so that a slow snippet says which it is
MOST_NOT_RUN = 2
FEWEST_WORDS_OF_A_REASON = 3


@dataclass(frozen=True)
class Snippet:
    page: Path
    line: int  # of the opening fence, from 1
    code: str  # dedented
    kind: str  # "run", "excerpt", "not run" or "needs" (a server the tests have)
    what: str  # the excerpt's file, or the reason it is not run; "" for "run"

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def snippets(page: Path) -> list[Snippet]:
    """The page's ```python fences, each with the mark above it, if any."""
    text = page.read_text(encoding="utf-8")
    found = []
    for fence in FENCE.finditer(text):
        if fence["info"].strip().split(" ")[0] not in ("python", "py"):
            continue
        before = [line for line in text[: fence.start()].splitlines() if line.strip()]
        mark = MARK.match(before[-1]) if before else None
        found.append(
            Snippet(
                page=page,
                line=text.count("\n", 0, fence.start()) + 1,
                code=textwrap.dedent(fence["body"]),
                kind=mark["kind"] if mark else "run",
                what=mark["what"] if mark else "",
            )
        )
    return found


ALL = [s for page in PAGES for s in snippets(page)]


def of_kind(kind: str) -> list[Snippet]:
    return [s for s in ALL if s.kind == kind]


def code_lines(text: str) -> list[str]:
    """The lines that carry code: stripped, without comments, without blank lines."""
    lines = (TRAILING_COMMENT.sub("", line).strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def matches(pattern: str, line: str) -> bool:
    return re.fullmatch(".*".join(map(re.escape, pattern.split("..."))), line) is not None


def missing_from(excerpt: str, source: str) -> list[str]:
    """The excerpt's runs of lines that are not in ``source``, in order, consecutively."""
    lines = code_lines(source)
    missing = []
    start = 0
    for chunk in re.split(r"\n\s*\n", excerpt):
        wanted = code_lines(chunk)
        if not wanted:
            continue
        for i in range(start, len(lines) - len(wanted) + 1):
            if all(matches(w, line) for w, line in zip(wanted, lines[i:], strict=False)):
                start = i + len(wanted)
                break
        else:
            missing.append(chunk.strip())
    return missing


def test_the_readme_has_snippets_that_run_and_excerpts_that_are_checked() -> None:
    in_readme = [s for s in ALL if s.page == README]
    # Fewer would mean the fence pattern no longer sees them.
    assert len([s for s in in_readme if s.kind == "run"]) >= 3
    assert len([s for s in in_readme if s.kind == "excerpt"]) >= 3


@pytest.mark.parametrize("snippet", of_kind("run"), ids=str)
def test_the_snippet_runs(snippet: Snippet, tmp_path: Path) -> None:
    run_snippet(snippet, tmp_path, dict(os.environ))


@pytest.mark.parametrize("snippet", of_kind("needs"), ids=str)
def test_the_snippet_runs_against_the_test_server(snippet: Snippet, tmp_path: Path) -> None:
    assert snippet.what == "postgresql", f"{snippet}: needs what? ({snippet.what!r})"
    from tests.pg import answering_server

    run_snippet(snippet, tmp_path, dict(os.environ, JOBQ_TEST_DSN=answering_server()))


def run_snippet(snippet: Snippet, tmp_path: Path, env: dict[str, str]) -> None:
    """Run ``snippet`` as a script in ``tmp_path``: exit 0, and nothing stale on stderr."""
    script = tmp_path / "snippet.py"
    script.write_text(snippet.code, encoding="utf-8")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    try:
        done = subprocess.run(
            [sys.executable, script.name],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=SECONDS,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{snippet}: still running after {SECONDS} s")
    assert done.returncode == 0, f"{snippet} exited {done.returncode}:\n{done.stderr}"
    assert STALE.findall(done.stderr) == [], f"{snippet} logged:\n{done.stderr}"


@pytest.mark.parametrize("snippet", of_kind("excerpt"), ids=str)
def test_the_excerpt_is_still_in_the_file_it_names(snippet: Snippet) -> None:
    source = ROOT / snippet.what
    assert source.is_file(), f"{snippet}: the excerpt names {snippet.what}, which is no file"
    assert missing_from(snippet.code, source.read_text(encoding="utf-8")) == []


def test_snippets_not_run_are_few_and_each_says_why() -> None:
    not_run = of_kind("not run")
    assert len(not_run) <= MOST_NOT_RUN, f"run them instead: {[str(s) for s in not_run]}"
    vague = [str(s) for s in not_run if len(s.what.split()) < FEWEST_WORDS_OF_A_REASON]
    assert vague == [], "a snippet that is not run says why, in a few words"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_mark_sits_just_above_a_python_fence(page: Path) -> None:
    marks = len(ANY_MARK.findall(page.read_text(encoding="utf-8")))
    marked = len([s for s in ALL if s.page == page and s.kind != "run"])
    assert marks == marked, f"{page.relative_to(ROOT)}: a mark that is not above a ```python"


def test_an_excerpt_must_match_consecutive_lines_in_order() -> None:
    source = "a = 1\n# a comment\nb = 2  # why\nc = f(x, y)\n"
    assert missing_from("a = 1\nb = 2", source) == []
    assert missing_from("a = 1  # said otherwise\n\nc = f(...)", source) == []
    assert missing_from("a = 1\nc = f(x, y)", source) == ["a = 1\nc = f(x, y)"]
    assert missing_from("b = 2\n\na = 1", source) == ["a = 1"]


def test_the_quick_start_uses_final_on_disk_in_ten_lines() -> None:
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^## Quick start.*?(?=^## )", text, re.MULTILINE | re.DOTALL)
    assert section, "the README has no '## Quick start' section"
    first, last = (text.count("\n", 0, at) + 1 for at in section.span())
    code = next(s.code for s in snippets(README) if first < s.line < last)
    assert "from final import" in code
    for used in ("path=", ".status(", ".dead_letters(", ".retry_dead("):
        assert used in code
    assert len([line for line in code.splitlines() if line.strip()]) <= 10
