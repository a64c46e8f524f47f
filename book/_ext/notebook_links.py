"""Links written in the notebooks for JupyterLab, made to work in the book too.

A notebook in notebooks/ links a book page as a learner opens it from JupyterLab's file browser:
`[glossary](../book/glossary.md)`, `[appendix A](../book/appendix_a_fact_check.md#some-heading)`. In the book
the notebooks are pages under book/notebooks/, where that path would point at book/book/: this post-transform
runs before MyST resolves the links and points each one at the page it means (`../glossary.md`).

An anchor that names a glossary term, as the term's words in lower case with hyphens
(`../book/glossary.md#cls-token` for the term "CLS token"), becomes a reference to that term's entry; any
other anchor must be a heading of the page (MyST's heading anchors, `myst_heading_anchors` in _config.yml).
A link that still points nowhere is left to MyST, which warns, and `jupyter-book build -W` fails.
"""
from __future__ import annotations

import re

from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.transforms.post_transforms import SphinxPostTransform

BOOK_PREFIX = "../book/"


def slug(text: str) -> str:
    """'CLS token' -> 'cls-token', as MyST makes heading anchors."""
    return re.sub(r"[^\w]+", "-", text.strip().lower()).strip("-")


class BookLinksFromNotebooks(SphinxPostTransform):
    default_priority = 5  # before MyST's resolver (9) and Sphinx's (10)

    def run(self, **kwargs) -> None:
        terms = {slug(name): name for (kind, name) in self.env.get_domain("std").objects if kind == "term"}
        for node in list(self.document.findall(addnodes.pending_xref)):
            if node.get("reftype") != "myst":
                continue
            target = node.get("reftarget", "")
            anchor = node.get("reftargetid")
            if node.get("refdomain") is None:  # MyST found no file there: the JupyterLab path, unresolved
                target, _, anchor_here = target.partition("#")
                anchor = anchor_here or None
            elif node.get("refdomain") != "doc":
                continue
            if not target.startswith(BOOK_PREFIX):
                continue
            _, path = self.env.relfn2path("../" + target[len(BOOK_PREFIX):], node.get("refdoc", self.env.docname))
            docname = self.env.path2doc(path)
            if docname is None:
                continue  # left to MyST: it warns about a page that does not exist
            if anchor and slug(anchor) in terms:
                node["refdomain"], node["reftype"], node["reftarget"] = "std", "term", terms[slug(anchor)]
                node["reftargetid"] = None
            else:
                node["refdomain"], node["reftarget"], node["reftargetid"] = "doc", docname, anchor


def setup(app: Sphinx) -> dict:
    app.add_post_transform(BookLinksFromNotebooks)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
