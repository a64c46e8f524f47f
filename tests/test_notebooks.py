"""The course notebooks as saved files, read as JSON (no kernel; a second or two): the rules every notebook
keeps so that the book, JupyterLab and `git diff` show a learner what they should.

- prose: at most 1,800 words of markdown in each of notebooks 01-06 (aim for 1,000-1,600; a word is a run of
  letters and digits, as WORD below counts it);
- width: every code line and every printed output line (stream and text/plain outputs) at most 88 characters
  in notebooks 01-07 and appendix_*.ipynb, the width of the book's code column;
- nbval markers are cell tags (nbval-check-output, nbval-skip, ...), never `# NBVAL_...` comments;
- each of 01-06 has at least 2 graded exercises: a cell tagged "exercise" whose code raises
  NotImplementedError, then a grader call (`check_...(...)`), then a cell tagged "solution" and "hide-input",
  folded in JupyterLab (metadata jupyter.source_hidden) and asserting its own grader;
- each of 01-06 ends with the quiz cell `from tinyvit.quiz import show_quiz` / `show_quiz("NN")`, tagged
  hide-input, with its output saved (the book shows the saved output);
- no stored error output;
- no noise a learner would see in `git diff` beyond outputs (the rule NOISE below):
  * notebook metadata holds only kernelspec, language_info and, where a cell shows a widget, widgets (the
    saved widget state the book draws widgets from; nbconvert writes it only when there are widgets);
  * cell metadata holds only tags and jupyter.source_hidden / jupyter.outputs_hidden: no execution
    timestamps (execute with `--ExecutePreprocessor.record_timing=False`; JupyterLab records none by
    default), no scrolled / collapsed / trusted flags;
  * execution counts run 1, 2, 3, ... down the code cells (the notebook ran top to bottom in one go), or
    are all empty;
  * no memory address (`at 0x7f...`) in a printed output: it changes on every run.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
LESSONS = sorted(NOTEBOOKS.glob("0[1-6]_*.ipynb"))
COURSE = sorted(NOTEBOOKS.glob("0[1-7]_*.ipynb"))
APPENDICES = sorted(NOTEBOOKS.glob("appendix_*.ipynb"))
WORD = re.compile(r"[A-Za-z0-9][\w'’,.\-]*")
MAX_WORDS, MAX_WIDTH, MIN_EXERCISES = 1800, 88, 2
RICH = ("text/html", "image/png", "image/jpeg", "image/svg+xml", "application/javascript", "text/markdown",
        "text/latex", "application/vnd.jupyter.widget-view+json")  # shown instead of text/plain
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
NOTEBOOK_KEYS = {"kernelspec", "language_info", "widgets"}
CELL_KEYS = {"tags", "jupyter"}
JUPYTER_KEYS = {"source_hidden", "outputs_hidden"}
QUIZ_CELL = 'from tinyvit.quiz import show_quiz\nshow_quiz("{number}")'


def test_the_course_is_all_here():
    assert [p.name[:2] for p in COURSE] == ["01", "02", "03", "04", "05", "06", "07"]


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def source(cell: dict) -> str:
    return "".join(cell["source"])


def tags(cell: dict) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


def code_cells(nb: dict) -> list[tuple[int, dict]]:
    return [(i, c) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]


def text(value) -> str:
    return "".join(value) if isinstance(value, list) else value


def prose_words(nb: dict) -> int:
    return sum(len(WORD.findall(source(c))) for c in nb["cells"] if c["cell_type"] == "markdown")


def printed_lines(output: dict) -> list[str]:
    """The lines a reader sees of one output: a stream's text, or text/plain when nothing richer is shown."""
    if output["output_type"] == "stream":
        return text(output["text"]).splitlines()
    data = output.get("data", {})
    if "text/plain" in data and not any(mime in data for mime in RICH):
        return text(data["text/plain"]).splitlines()
    return []


def ids(paths):
    return [p.stem for p in paths]


@pytest.mark.parametrize("path", LESSONS, ids=ids(LESSONS))
def test_prose_is_at_most_1800_words(path):
    words = prose_words(load(path))
    assert words <= MAX_WORDS, f"{path.name}: {words:,} words of markdown prose (at most {MAX_WORDS:,})"


@pytest.mark.parametrize("path", COURSE + APPENDICES, ids=ids(COURSE + APPENDICES))
def test_code_and_printed_lines_fit_the_books_column(path):
    wide = []
    for i, cell in code_cells(load(path)):
        for line in source(cell).splitlines():
            if len(line) > MAX_WIDTH:
                wide.append(f"cell {i} code ({len(line)}): {line[:70]}...")
        for output in cell.get("outputs", []):
            for line in printed_lines(output):
                if len(line) > MAX_WIDTH:
                    wide.append(f"cell {i} output ({len(line)}): {line[:70]}...")
    assert not wide, f"{path.name}: {len(wide)} lines over {MAX_WIDTH} characters:\n" + "\n".join(wide)


@pytest.mark.parametrize("path", COURSE + APPENDICES, ids=ids(COURSE + APPENDICES))
def test_nbval_markers_are_tags_not_comments(path):
    comments = [f"cell {i}: {m.group(0)}" for i, cell in code_cells(load(path))
                for m in re.finditer(r"#\s*NBVAL_\w+", source(cell))]
    assert not comments, f"{path.name}: use the cell tags (nbval-check-output, nbval-skip) instead of {comments}"


def graded_exercises(nb: dict) -> tuple[int, list[str]]:
    """(exercises in the four-cell format, what is wrong with the others)."""
    cells = code_cells(nb)
    good, problems = 0, []
    for k, (i, cell) in enumerate(cells):
        if "exercise" not in tags(cell):
            continue
        where = f"exercise cell {i}"
        if "NotImplementedError" not in source(cell):
            problems.append(f"{where}: its stub does not raise NotImplementedError")
            continue
        grader = cells[k + 1][1] if k + 1 < len(cells) else None
        solution = cells[k + 2][1] if k + 2 < len(cells) else None
        call = re.search(r"\b(check_\w+)\(", source(grader)) if grader else None
        if not call or tags(grader) & {"exercise", "solution"}:
            problems.append(f"{where}: the next code cell is not a grader call such as check_patchify(my_patchify)")
            continue
        if solution is None or not {"solution", "hide-input"} <= tags(solution):
            problems.append(f"{where}: the code cell after the grader is not tagged solution and hide-input")
            continue
        if solution.get("metadata", {}).get("jupyter", {}).get("source_hidden") is not True:
            problems.append(f"{where}: the solution is not folded (metadata jupyter.source_hidden true)")
            continue
        if not re.search(rf"assert\s+{call.group(1)}\(", source(solution)):
            problems.append(f"{where}: the solution does not end with assert {call.group(1)}(...)")
            continue
        good += 1
    return good, problems


@pytest.mark.parametrize("path", LESSONS, ids=ids(LESSONS))
def test_at_least_two_graded_exercises(path):
    good, problems = graded_exercises(load(path))
    assert good >= MIN_EXERCISES and not problems, (
        f"{path.name}: {good} graded exercises in the four-cell format (at least {MIN_EXERCISES})"
        + "".join(f"\n{p}" for p in problems))


@pytest.mark.parametrize("path", LESSONS, ids=ids(LESSONS))
def test_ends_with_its_quiz(path):
    cells = code_cells(load(path))
    assert cells, f"{path.name} has no code cells"
    i, last = cells[-1]
    expected = QUIZ_CELL.format(number=path.name[:2])
    assert source(last).strip() == expected, f"{path.name}: the last code cell (cell {i}) should be\n{expected}"
    assert "hide-input" in tags(last), f"{path.name}: tag the quiz cell hide-input"
    shown = [o for o in last.get("outputs", []) if "application/javascript" in o.get("data", {})]
    assert shown, f"{path.name}: the quiz cell has no saved output; execute the notebook so that the book shows it"
    saved = json.dumps(last["outputs"])
    assert not re.search(r"https?://", saved), (
        f"{path.name}: the saved quiz output names an outside address (made before tinyvit.quiz took jupyterquiz's "
        "CDN fallback out): re-execute the notebook")


@pytest.mark.parametrize("path", COURSE + APPENDICES, ids=ids(COURSE + APPENDICES))
def test_no_stored_errors(path):
    errors = [f"cell {i}: {o.get('ename')}: {o.get('evalue', '')[:100]}" for i, cell in code_cells(load(path))
              for o in cell.get("outputs", []) if o["output_type"] == "error"]
    assert not errors, f"{path.name}: saved error outputs {errors}"


def noise(nb: dict) -> list[str]:
    """What the NOISE rule (see the module docstring) finds in one notebook."""
    found = []
    extra = set(nb["metadata"]) - NOTEBOOK_KEYS
    if extra:
        found.append(f"notebook metadata {sorted(extra)}")
    kernel = nb["metadata"].get("kernelspec", {}).get("name")
    if kernel != "python3":
        found.append(f"kernelspec {kernel!r}, not python3")
    views = any(WIDGET_VIEW in o.get("data", {}) for _, c in code_cells(nb) for o in c.get("outputs", []))
    if "widgets" in nb["metadata"] and not views:
        found.append("widget state saved, but no cell shows a widget")
    for i, cell in enumerate(nb["cells"]):
        meta = cell.get("metadata", {})
        extra = set(meta) - CELL_KEYS
        extra |= {f"jupyter.{k}" for k in set(meta.get("jupyter", {})) - JUPYTER_KEYS}
        if extra:
            found.append(f"cell {i} metadata {sorted(extra)}")
    counts = [c.get("execution_count") for _, c in code_cells(nb)]
    if any(counts) and counts != list(range(1, len(counts) + 1)):
        found.append(f"execution counts {counts}: not one run from the top")
    for i, cell in code_cells(nb):
        for output in cell.get("outputs", []):
            for line in printed_lines(output):
                if re.search(r"\bat 0x[0-9a-fA-F]{6,}", line):
                    found.append(f"cell {i} prints a memory address: {line[:70]}")
    return found


@pytest.mark.parametrize("path", COURSE + APPENDICES, ids=ids(COURSE + APPENDICES))
def test_no_noise_beyond_outputs(path):
    found = noise(load(path))
    assert not found, f"{path.name}:\n" + "\n".join(found)


# ---- the rules themselves, on small made-up notebooks ------------------------------------------------------

def cell(kind: str, text: str, cell_tags=(), **extra) -> dict:
    made = {"cell_type": kind, "source": text, "metadata": {"tags": list(cell_tags)} if cell_tags else {}}
    if kind == "code":
        made.update(outputs=[], execution_count=None)
    made["metadata"].update(extra)
    return made


def exercise_cells(solution_meta=None) -> list[dict]:
    return [cell("markdown", "### Exercise 1: patchify"),
            cell("code", 'def my_patchify(x, p):\n    raise NotImplementedError("your code here")', ["exercise"]),
            cell("code", "check_patchify(my_patchify)"),
            cell("code", "def my_patchify(x, p):\n    return patchify(x, p)\nassert check_patchify(my_patchify)",
                 ["solution", "hide-input"], **({"jupyter": {"source_hidden": True}} if solution_meta is None
                                                else solution_meta))]


def test_rules_on_made_up_notebooks():
    nb = {"metadata": {"kernelspec": {"name": "python3"}}, "cells": exercise_cells() * 2}
    assert graded_exercises(nb) == (2, []) and noise(nb) == []
    unfolded = {"metadata": {}, "cells": exercise_cells(solution_meta={})}
    assert graded_exercises(unfolded)[0] == 0 and "not folded" in graded_exercises(unfolded)[1][0]
    assert prose_words({"cells": [cell("markdown", "It's 14 x 14 = 196 patches, e.g. `patchify`.")]}) == 8
    timed = {"metadata": {"kernelspec": {"name": "python3"}, "widgets": {}},
             "cells": [cell("code", "x", execution={"iopub.status.busy": "2026"}, scrolled=True)]}
    assert noise(timed) == ["widget state saved, but no cell shows a widget",
                            "cell 0 metadata ['execution', 'scrolled']"]
    figure = {"output_type": "execute_result", "data": {"text/plain": "<Figure at 0x7f3a2b1c9d00>"}}
    shown = {"output_type": "display_data", "data": {"text/plain": "x" * 100, "image/png": ""}}
    assert printed_lines(figure) == ["<Figure at 0x7f3a2b1c9d00>"] and printed_lines(shown) == []
