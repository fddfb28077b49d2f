"""The README and docs/ link only to files inside the repository, and those exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def links(doc: Path) -> list[str]:
    return LINK.findall(doc.read_text())


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_resolve_inside_the_repo(doc: Path) -> None:
    found = links(doc)
    for target in found:
        assert "://" not in target and not target.startswith("mailto:"), f"{doc.name}: {target}"
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        assert path.is_relative_to(ROOT), f"{doc.name} links outside the repo: {target}"
        assert path.exists(), f"{doc.name} links to a missing file: {target}"


def test_readme_links_the_docs() -> None:
    found = links(ROOT / "README.md")
    assert "docs/protocol.md" in found
    assert "docs/architecture.md" in found


def test_link_pattern_sees_an_outside_link() -> None:
    assert links_in("see [x](../shared/protocol.md)") == ["../shared/protocol.md"]


def links_in(text: str) -> list[str]:
    return LINK.findall(text)
