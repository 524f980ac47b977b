"""The README and docs/ link only into the repository, and every link there resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^[ \t]*```.*?^[ \t]*```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
URL = re.compile(r"\b(?:https?|ftp)://|\bwww\.|\bmailto:", re.IGNORECASE)


def prose(text: str) -> str:
    """The text a reader sees as prose: code blocks and code spans are examples, not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", FENCE.sub("", text), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower()).replace(" ", "-")
        found.add(slug)
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_links_stay_inside_the_repository_and_resolve(doc: Path) -> None:
    text = prose(doc.read_text())
    assert URL.findall(text) == [], f"{doc.name} links outside the repository"
    for target in LINK.findall(text):
        path, _, anchor = target.partition("#")
        assert ":" not in path, f"{doc.name}: {target} is not a path in the repository"
        linked = (doc.parent / path).resolve() if path else doc
        assert linked.is_relative_to(REPO) and linked.exists(), f"{doc.name}: {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked.read_text()), f"{doc.name}: {target}"


def test_the_readme_links_the_architecture_page() -> None:
    assert "(docs/architecture.md)" in (REPO / "README.md").read_text()


def test_the_readme_performance_table_is_the_last_benchmark_run() -> None:
    """`python -m bench.run_all` writes bench/README-table.md; the README shows it as written,
    so a hand-edited or stale figure fails here."""
    table = (REPO / "bench" / "README-table.md").read_text().strip()
    readme = (REPO / "README.md").read_text()
    performance = readme.split("## Performance", 1)[1].split("\n## ", 1)[0]
    assert table in performance
