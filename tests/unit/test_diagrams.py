"""The pictures in docs/diagrams/ are generated from their Graphviz sources.

Every `NAME.dot` has a `NAME.svg` drawn from it by `dot -Tsvg`, and the SVG
records the sha256 of the source it was drawn from in a comment. The check
compares that hash with the source on disk, so it does not depend on which
Graphviz version drew the picture. A second check draws the source again and
compares what does not vary between Graphviz versions (the nodes, edges,
clusters and label text), so a hash pasted into a stale SVG is caught too.

After editing a .dot file, regenerate the pictures with:

    .venv/bin/python tests/unit/test_diagrams.py --write
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

DIAGRAMS = Path(__file__).resolve().parents[2] / "docs" / "diagrams"
REGENERATE = ".venv/bin/python tests/unit/test_diagrams.py --write"
MARK = "<!-- felix-nat64: drawn from {name} with sha256 {digest} -->"
MARK_RE = re.compile(r"<!-- felix-nat64: drawn from (\S+) with sha256 ([0-9a-f]{64}) -->")
SVG_NS = "{http://www.w3.org/2000/svg}"


def sources() -> list[Path]:
    return sorted(DIAGRAMS.glob("*.dot"))


def digest(source: Path) -> str:
    return hashlib.sha256(source.read_bytes()).hexdigest()


def draw(source: Path) -> str:
    """The SVG for `source`, stamped with the hash of the source."""
    dot = shutil.which("dot")
    if dot is None:
        raise RuntimeError("Graphviz's dot is not installed: run scripts/install-system-deps.sh "
                           "(or apt-get install graphviz)")
    done = subprocess.run([dot, "-Tsvg", str(source)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"dot -Tsvg {source.name} failed: {done.stderr.strip()}")
    svg = done.stdout
    root = svg.index("\n<svg")
    return svg[:root] + "\n" + MARK.format(name=source.name, digest=digest(source)) + svg[root:]


def shape(svg: str) -> tuple[Counter[str], Counter[str]]:
    """What a drawing shows, independent of layout: the titles of its nodes,
    edges and clusters, and every line of label text."""
    root = ET.fromstring(svg)
    assert root.tag == SVG_NS + "svg"
    titles: Counter[str] = Counter()
    texts: Counter[str] = Counter()
    for group in root.iter(SVG_NS + "g"):
        if group.get("class") in ("node", "edge", "cluster"):
            title = group.find(SVG_NS + "title")
            if title is not None and title.text:
                titles[f"{group.get('class')}:{title.text}"] += 1
    for text in root.iter(SVG_NS + "text"):
        if text.text and text.text.strip():
            texts[" ".join(text.text.split())] += 1
    return titles, texts


def write_all() -> None:
    for source in sources():
        target = source.with_suffix(".svg")
        target.write_text(draw(source))
        print(f"wrote {target.relative_to(DIAGRAMS.parents[1])}")


@pytest.mark.parametrize("source", sources(), ids=lambda p: p.name)
def test_svg_was_drawn_from_the_current_source(source: Path) -> None:
    target = source.with_suffix(".svg")
    assert target.exists(), f"{target.name} is missing; run: {REGENERATE}"
    found = MARK_RE.search(target.read_text())
    assert found is not None, f"{target.name} carries no source hash; run: {REGENERATE}"
    assert found.group(1) == source.name, f"{target.name} was drawn from {found.group(1)}"
    assert found.group(2) == digest(source), f"{target.name} is older than {source.name}; run: {REGENERATE}"


@pytest.mark.parametrize("source", sources(), ids=lambda p: p.name)
def test_svg_shows_what_the_source_draws(source: Path) -> None:
    committed = shape(source.with_suffix(".svg").read_text())
    fresh = shape(draw(source))
    assert committed == fresh, f"{source.with_suffix('.svg').name} differs from a fresh drawing; " \
                               f"run: {REGENERATE}"


def test_every_svg_has_a_source() -> None:
    assert sources(), "no diagram sources found"
    orphans = [svg.name for svg in DIAGRAMS.glob("*.svg") if not svg.with_suffix(".dot").exists()]
    assert not orphans, f"SVGs without a .dot source: {orphans}"


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(f"usage: {sys.argv[0]} --write   (regenerates docs/diagrams/*.svg)")
    write_all()
