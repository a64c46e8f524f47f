"""No broken internal link in the built book: LinkChecker (a maintained link checker, pinned in
requirements.txt) follows every link between the book's pages from the root page, with its anchor plugin
checking that each `page.html#anchor` names an element of that page. Links to other sites are listed but not
fetched, so the check runs offline.

Needs the built book (book/build.sh); runs with the browser tests: `pytest -m browser tests/test_links.py`.
"""
from __future__ import annotations

import csv
import io
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from test_book import PAGES

pytestmark = pytest.mark.browser  # like the browser tests, it needs the built book

REPO = Path(__file__).resolve().parents[1]
HTML = REPO / "book" / "_build" / "html"

# checkextern=0: other sites are not fetched (offline); [AnchorCheck]: every #anchor must exist on its page.
CONFIG = """\
[checking]
threads=2
[filtering]
checkextern=0
[AnchorCheck]
[output]
"""


def linkchecker() -> str:
    """The linkchecker command of the environment running the tests."""
    found = Path(sys.executable).with_name("linkchecker")
    if found.is_file():
        return str(found)
    on_path = shutil.which("linkchecker")
    if on_path is None:
        pytest.fail("linkchecker not found: pip install -r requirements.txt")
    return on_path


def readable_copy(site: Path) -> Path:
    """A copy of `site` that any user can read: run as root, LinkChecker drops to the user nobody, who may
    not reach the checkout's folder. The theme's _static/ stays behind (its links are not checked: the
    browser tests load every script, style and font)."""
    copy = Path(tempfile.mkdtemp(prefix="tinyvit-links-")) / "html"
    shutil.copytree(site, copy, ignore=shutil.ignore_patterns("_static"))
    for path in (copy.parent, copy, *copy.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return copy


def check(start: Path, tmp_path: Path) -> tuple[list[dict], str]:
    """Run LinkChecker from `start` (an HTML file in a readable_copy); (rows of its CSV report, its output)."""
    config = tmp_path / "linkcheckerrc"
    config.write_text(CONFIG)
    config.chmod(0o644)
    result = subprocess.run([linkchecker(), "--config", str(config), "--no-status", "-o", "csv", "--verbose",
                             "--ignore-url", r"/_static/", start.as_uri()],
                            capture_output=True, text=True, timeout=900)
    lines = [line for line in result.stdout.splitlines() if line and not line.startswith("#")]
    rows = list(csv.DictReader(io.StringIO("\n".join(lines)), delimiter=";"))
    return rows, result.stdout + result.stderr


def broken(rows: list[dict]) -> list[str]:
    """'parent page -> link: what is wrong' for each failed link and each missing anchor."""
    problems = []
    for row in rows:
        anchor_missing = "Anchor" in row.get("warningstring", "") and "not found" in row.get("warningstring", "")
        if row.get("valid") != "True" or anchor_missing:
            parent = row.get("parentname", "").rsplit("/html/", 1)[-1]
            reason = row.get("result", "") if row.get("valid") != "True" else row["warningstring"]
            problems.append(f"{parent} -> {row.get('urlname')}: {' '.join(reason.split())}")
    return problems


def test_no_broken_internal_link_or_anchor(tmp_path):
    if not (HTML / "index.html").is_file():
        pytest.fail(f"no built book in {HTML}: build it with book/build.sh")
    site = readable_copy(HTML)
    try:
        rows, output = check(site / "index.html", tmp_path)
    finally:
        shutil.rmtree(site.parent)
    reached = {row["url"].split("#")[0].rsplit("/html/", 1)[-1].removesuffix(".html") for row in rows}
    missed = [doc for doc in PAGES if doc not in reached]
    assert missed == [], f"LinkChecker did not reach {missed}:\n{output[-3000:]}"
    assert broken(rows) == [], "broken links in the book:\n" + "\n".join(broken(rows))


def test_the_checker_finds_a_broken_link_and_a_missing_anchor(tmp_path):
    """The check above proves something: on a two-page site it reports exactly the two broken links."""
    source = tmp_path / "html"
    source.mkdir()
    (source / "index.html").write_text('<a href="a.html#here">ok</a> <a href="a.html#gone">anchor</a> '
                                       '<a href="missing.html">page</a> <a href="https://example.org/">out</a>')
    (source / "a.html").write_text('<h1 id="here">a</h1>')
    site = readable_copy(source)
    try:
        rows, output = check(site / "index.html", tmp_path)
    finally:
        shutil.rmtree(site.parent)
    found = broken(rows)
    assert len(found) == 2, output
    assert any("a.html#gone" in line and "gone" in line for line in found)
    assert any("missing.html" in line for line in found)
