"""Every link between the project's Markdown pages points at a file that exists, and at a heading that exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
LINK = re.compile(r"\]\(([^)\s#]*)(?:#([^)\s]+))?\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation other than - and _ dropped, spaces as -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # a '#' in a code block is no heading
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.*)$", text, re.M)}


def test_slug_matches_githubs_rule_on_a_hand_made_heading():
    assert slug("The encoder start's budget: 300 steps (brick) or E(x), `n_init`") == \
        "the-encoder-starts-budget-300-steps-brick-or-ex-n_init"


def test_links_between_pages_reach_an_existing_file_and_heading():
    broken = []
    for page in PAGES:
        text = page.read_text()
        if "](#)" in text:
            broken.append(f"{page.relative_to(ROOT)}: a link to '#', no heading named")
        for target, anchor in LINK.findall(text):
            if target.startswith(("http:", "https:", "mailto:")):
                continue
            dest = (page.parent / target).resolve() if target else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in headings(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target}#{anchor} (no such heading)")
    assert not broken, "\n".join(broken)
