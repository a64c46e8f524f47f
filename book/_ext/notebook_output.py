"""A directive that shows one saved output of a notebook on another page, read from the notebook at build time.

The fact-check table is computed in notebooks/07_self_check.ipynb; its page in the book shows that same
output without a second copy in the repository:

    ```{notebook-output} notebooks/07_self_check.ipynb
    :match: Chapter 22, fact-checked
    ```

The first code-cell output whose text/html contains the `match` text is inserted as HTML. No match is an
error, so a renamed caption fails the build instead of leaving an empty page.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective


def find_html_output(notebook: Path, match: str) -> str:
    """The first code-cell text/html output of `notebook` that contains `match`."""
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook-output: expected a notebook at {notebook}, found none")
    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            html = output.get("data", {}).get("text/html", "")
            html = "".join(html) if isinstance(html, list) else html
            if match in html:
                return html
    raise ValueError(f"notebook-output: no text/html output of {notebook.name} contains {match!r}")


class NotebookOutput(SphinxDirective):
    required_arguments = 1  # the notebook, relative to the page's folder
    option_spec = {"match": directives.unchanged_required}

    def run(self) -> list[nodes.Node]:
        if "match" not in self.options:
            raise self.error("notebook-output needs a :match: option: text that the wanted output contains")
        relative, notebook = self.env.relfn2path(self.arguments[0], self.env.docname)
        self.env.note_dependency(relative)  # rebuild this page when the notebook changes
        try:
            html = find_html_output(Path(notebook), self.options["match"])
        except (FileNotFoundError, ValueError) as err:
            raise self.error(str(err)) from err
        container = nodes.container(classes=["notebook-output"])
        container += nodes.raw("", html, format="html")
        return [container]


def setup(app: Sphinx) -> dict:
    app.add_directive("notebook-output", NotebookOutput)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
