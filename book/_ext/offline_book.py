"""Keep the built book self-contained: no page may load anything from outside the book.

MathJax and the widget renderer are pointed at the book's own copies in _config.yml. What is left is
sphinx-thebe, which Jupyter Book always loads: it writes the address of its CDN bundle into every page
(fetched only when a reader starts a live kernel, which this book does not offer). This extension removes
those scripts, then checks every written page for an outside address in a <script>, <link>, <img> or
<iframe>, and for a script included twice (MathJax loaded twice breaks every formula), and reports each as
a Sphinx warning, so that `jupyter-book build -W` fails on it.
"""
from __future__ import annotations

import re
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

# An outside address in an attribute that makes the browser fetch it.
REMOTE_ATTR = re.compile(r"<(script|link|img|iframe)\b[^>]*?\b(src|href)=[\"']?((?:https?:)?//[^\"' >]+)", re.I)
# An outside address inside an inline script (not JSON data such as saved widget state).
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\btype=\"application/[^\"]*json)[^>]*>(.*?)</script>", re.I | re.S)
REMOTE_URL = re.compile(r"https?://[^\s\"'<>;]+")
SCRIPT_SRC = re.compile(r"<script\b[^>]*?\bsrc=[\"']([^\"'?#]+)", re.I)


def drop_thebe_scripts(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    """Remove sphinx-thebe's loader and its CDN address from the page's scripts."""
    scripts = context.get("script_files")
    if scripts is None:
        return
    context["script_files"] = [
        js for js in scripts
        if not str(js.filename).endswith("sphinx-thebe.js")
        and "THEBE_JS_URL" not in js.attributes.get("body", "")
    ]


def remote_references(html: str) -> list[str]:
    """Outside addresses that a page would fetch: from tag attributes and from inline scripts."""
    found = [match.group(3) for match in REMOTE_ATTR.finditer(html)]
    for body in INLINE_SCRIPT.findall(html):
        found.extend(REMOTE_URL.findall(body))
    return found


def repeated_scripts(html: str) -> list[str]:
    """Script files that a page includes more than once (query strings such as ?v=hash ignored)."""
    sources = SCRIPT_SRC.findall(html)
    return sorted({src for src in sources if sources.count(src) > 1})


def check_pages(app: Sphinx, exception: Exception | None) -> None:
    """Warn about every outside address and every repeated script in the written HTML pages."""
    if exception is not None or app.builder.format != "html":
        return
    outdir = Path(app.outdir)
    for page in sorted(outdir.rglob("*.html")):
        if page.relative_to(outdir).parts[0] in ("_static", "_sources"):  # theme templates and copies, not pages
            continue
        html = page.read_text(encoding="utf-8")
        for url in remote_references(html):
            logger.warning("%s loads %s from outside the book; serve it from book/_vendor instead",
                           page.relative_to(outdir), url)
        for src in repeated_scripts(html):
            logger.warning("%s includes %s more than once (is there a book/_static folder?)",
                           page.relative_to(outdir), src)


def setup(app: Sphinx) -> dict:
    app.connect("html-page-context", drop_thebe_scripts, priority=900)  # after sphinx-thebe added them
    app.connect("build-finished", check_pages)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
