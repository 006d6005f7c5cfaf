"""Every relative link in README.md, BENCHMARKS.md and docs/**/*.md leads somewhere: the file (or
directory) exists, and a ``#anchor`` names a heading of the target page, slugged as GitHub slugs it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", REPO / "BENCHMARKS.md", *sorted((REPO / "docs").rglob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def _prose(text: str) -> str:
    """The page without fenced code blocks (their ``#`` lines and brackets are not markdown)."""
    return FENCE.sub("", text)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: link markup reduced to its text, lowercased, every character
    that is not a letter, digit, space, hyphen or underscore dropped, spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings; a repeated heading gets ``-1``, ``-2``, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(_prose(page.read_text(encoding="utf-8"))):
        slug = github_slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(page: Path) -> list[str]:
    prose = INLINE_CODE.sub("", _prose(page.read_text(encoding="utf-8")))
    return [t for t in LINK.findall(prose) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in relative_links(page):
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with anchor #{anchor} in {os.path.relpath(resolved, page.parent)}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(page):
    assert broken_links(page) == []


def test_the_checker_sees_a_missing_file_and_a_wrong_anchor(tmp_path):
    (tmp_path / "other.md").write_text("# Deadlines and planning\n\n## `carbonsched plan`\n\n## Forecasts\n## Forecasts\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#carbonsched-plan) [ok](other.md#forecasts-1) [ok](#here) [web](https://example.org/x)\n"
        "`[not a link](nowhere.md)`\n```sh\n[not a link](nowhere.md)\n```\n"
        "[gone](missing.md) [bad](other.md#deadlines-and-pausing) [bad here](#there)\n\n## Here\n"
    )
    assert broken_links(page) == [
        "missing.md: no such file",
        "other.md#deadlines-and-pausing: no heading with anchor #deadlines-and-pausing in other.md",
        "#there: no heading with anchor #there in page.md",
    ]


def test_github_slugs_of_headings_with_code_links_and_greek():
    assert github_slug("The daemon (carbonsched)") == "the-daemon-carbonsched"
    assert github_slug("Sharded models: `--strategy fsdp`") == "sharded-models---strategy-fsdp"
    assert github_slug("Inside a Hugging Face `Trainer`") == "inside-a-hugging-face-trainer"
    assert github_slug("11b. ρ = 0.7 [its own](x.md) rate") == "11b-ρ--07-its-own-rate"
