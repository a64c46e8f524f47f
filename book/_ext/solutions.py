"""Exercise solutions folded behind a toggle that says what it hides.

A solution cell carries the tags `solution` and `hide-input` (and `jupyter.source_hidden`, which folds it in
JupyterLab). MyST-NB folds every `hide-input` cell behind "Show code cell source"; for a solution this
post-transform, which runs just before MyST-NB builds the toggles, names it: "Show the solution".
"""
from __future__ import annotations

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.transforms.post_transforms import SphinxPostTransform

SHOW, HIDE = "Show the solution", "Hide the solution"


class NameSolutionToggles(SphinxPostTransform):
    default_priority = 198  # MyST-NB's HideInputCells, which reads these prompts, runs at 199
    formats = ("html",)

    def run(self, **kwargs) -> None:
        for node in self.document.findall(nodes.container):
            if (node.get("nb_element") == "cell_code" and node.get("hide_mode")
                    and "tag_solution" in node.get("classes", [])):
                node["prompt_show"], node["prompt_hide"] = SHOW, HIDE


def setup(app: Sphinx) -> dict:
    app.add_post_transform(NameSolutionToggles)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
