"""The README is the course: its matrix is current, its links resolve, its lessons are
the ones the tiers' own files open with, in the same order, and it links the lab report
(benchmarks/README.md) once. Its Python snippets are run by test_readme_snippets.py.

These read files and run nothing: they run once, whatever ``--tier`` says.
"""

from __future__ import annotations

import importlib
import re
from collections import Counter
from pathlib import Path

import pytest

from tests import matrix
from tests.support import PACKAGES as TIERS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LAB_REPORT = ROOT / "benchmarks" / "README.md"
COURSE_PAGES = [README, ROOT / "notebooks" / "README.md", LAB_REPORT]

FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
# [text](target), ![alt](target) and <img src="target">; a title after the target is allowed.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_SRC = re.compile(r"""<(?:img|a)\b[^>]*?\b(?:src|href)=["']([^"']+)["']""")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # https:, mailto:, ...
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
LINK_TEXT = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
LINE_ANCHOR = re.compile(r"^L(\d+)(?:-L(\d+))?$")  # GitHub's anchors into a file's lines


def local_targets(page: Path) -> list[str]:
    """Every link and image of the page that stays in the repository, anchors included."""
    # Code shows Python and shell, where "[x](y)" is not a link.
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    # Inline code may hold a link's text, so only its backticks go.
    text = INLINE_CODE.sub(lambda m: m.group(0).strip("`"), text)
    targets = LINK.findall(text) + HTML_SRC.findall(text)
    return [t for t in targets if not EXTERNAL.match(t)]


def relative_links(page: Path) -> list[str]:
    return [t for t in local_targets(page) if not t.startswith("#")]


def heading_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a Markdown page's headings.

    Its rule: the heading's text in lower case, every character but letters, digits,
    spaces, '-' and '_' dropped (backticks, colons, full stops...), each space made a
    '-'; a heading whose anchor is taken already gets '-1', '-2', ... after it.
    """
    # A "# comment" in a shell or Python block is not a heading.
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    anchors = set()
    seen = Counter[str]()
    for title in HEADING.findall(text):
        title = LINK_TEXT.sub(r"\1", title)  # a link in a heading anchors by its text
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        anchors.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
        seen[slug] += 1
    return anchors


def test_the_readme_tier_matrix_is_current() -> None:
    text = README.read_text(encoding="utf-8")
    assert matrix.rewrite(text) == text, "the README's tier matrix is stale: run `make matrix`"


@pytest.mark.parametrize("page", COURSE_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_image_resolves_to_a_file_in_the_repository(page: Path) -> None:
    links = relative_links(page)
    if page == README:
        assert len(links) > 20, "hardly a link found in the README: is the pattern still right?"
    broken = []
    for target in links:
        path = (page.parent / target.split("#", 1)[0].split("?", 1)[0]).resolve()
        if not path.exists() or not path.is_relative_to(ROOT):
            broken.append(target)
    assert broken == [], f"{page.relative_to(ROOT)}: links that lead nowhere: {broken}"


def test_heading_anchors_follow_githubs_rule() -> None:
    anchors = heading_anchors(README)
    # Backticks and a colon dropped, spaces made '-'.
    assert "the-tour-what-make-demo-shows" in anchors
    assert "tier-3-final" in anchors
    # A shell comment in a fenced block is no heading.
    assert "leaving-the-block-calls-qclose" not in anchors


@pytest.mark.parametrize("page", COURSE_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_anchor_leads_to_a_heading_or_a_line_that_exists(page: Path) -> None:
    anchored = [t for t in local_targets(page) if "#" in t]
    if page == README:
        assert any(t.startswith("#") for t in anchored), "no in-page link found in the README"
    broken = []
    for target in anchored:
        name, anchor = target.split("#", 1)
        path = (page.parent / name.split("?", 1)[0]).resolve() if name else page
        if not path.is_file():
            broken.append(target)  # the link test says where it leads instead
        elif path.suffix == ".md":
            if anchor not in heading_anchors(path):
                broken.append(target)
        elif line := LINE_ANCHOR.match(anchor):
            lines = len(path.read_text(encoding="utf-8").splitlines())
            if max(int(n) for n in line.groups() if n) > lines:
                broken.append(target)
        else:
            broken.append(target)  # an anchor this test cannot check: make it one it can
    assert broken == [], f"{page.relative_to(ROOT)}: anchors that lead nowhere: {broken}"


def test_the_readme_links_the_lab_report_once() -> None:
    # The course quotes figures; how each was measured, and the targets, live in the
    # report. One link, where the README says what the report holds.
    lab_report = [t for t in relative_links(README) if (ROOT / t).resolve() == LAB_REPORT]
    assert len(lab_report) == 1


def docstring_lessons(tier: str) -> list[tuple[str, str]]:
    """The numbered lessons a tier's file opens with: (number, title up to its full stop)."""
    doc = importlib.import_module(f"{tier}.job_queue").__doc__ or ""
    return re.findall(r"^(\d+)\. (.+?)\.(?:\s|$)", doc, re.MULTILINE)


def readme_lessons(tier: str) -> list[tuple[str, str]]:
    """The numbered, bold lessons of the README's section on a tier."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^## Tier \d: {tier}\n(.*?)(?=^## )", text, re.MULTILINE | re.DOTALL)
    assert match, f"the README has no section '## Tier N: {tier}'"
    return re.findall(r"^(\d+)\. \*\*(.+?)\.\*\*", match.group(1), re.MULTILINE)


# Not named "tier": that name is the tier plugin's fixture, which would run this per tier.
@pytest.mark.parametrize("name", TIERS)
def test_the_readme_teaches_each_tiers_lessons_in_the_order_its_file_gives_them(
    name: str,
) -> None:
    in_code = docstring_lessons(name)
    assert len(in_code) >= 4, f"{name}/job_queue.py: no numbered lessons found"
    assert readme_lessons(name) == in_code


def test_every_test_the_readme_names_is_in_the_file_it_links_to() -> None:
    text = FENCE.sub("", README.read_text(encoding="utf-8"))
    named = re.findall(r"\[`(test_\w+)`\]\(([^)#\s]+)\)", text)
    assert len(named) > 20, "hardly a test named in the README: is the pattern still right?"
    missing = [
        f"{name} in {target}"
        for name, target in named
        if not re.search(rf"^def {name}\(", (ROOT / target).read_text(), re.MULTILINE)
    ]
    assert missing == []
