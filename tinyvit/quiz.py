"""Multiple-choice quizzes for the notebooks, shown with jupyterquiz.

The questions of notebook NN live in `notebooks/quizzes/NN.json`, in jupyterquiz's own format:

    [{"question": "...", "type": "multiple_choice",
      "answers": [{"answer": "...", "correct": true, "feedback": "..."}, ...]}, ...]

`show_quiz("01")` reads that file (never a URL), checks it, and displays it with `jupyterquiz.display_quiz`.
jupyterquiz writes two outputs: an HTML container and a script that holds the questions and all of its own
JavaScript and CSS. So a saved notebook carries the whole quiz: JupyterLab runs the script when the cell runs
(or when a trusted notebook opens), and the static book runs it in the page, with no kernel and no request
outside the page (two small edits to jupyterquiz's script make sure of that; see `quiz_outputs`). Quiz text
stays plain: no `$` maths (jupyterquiz hands it to MathJax, which does not typeset it in JupyterLab 4) and no
HTML.
"""
from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path
from typing import Any

QUIZZES_ENV = "TINYVIT_QUIZZES"  # a folder to read the quizzes from instead of the repository's
FORBIDDEN = {"$": "maths ($) does not render in JupyterLab 4; write it in words",
             "\\": "a backslash (LaTeX) does not render in JupyterLab 4; write it in words",
             "<": "HTML (<) is not allowed; write plain text",
             ">": "HTML (>) is not allowed; write plain text"}
WIDE_OPTION = 60  # characters: a question with a longer option shows its options one per row


def quizzes_dir() -> Path:
    """The folder that holds NN.json: $TINYVIT_QUIZZES if set, else notebooks/quizzes of the repository this
    package is installed from (editable), else notebooks/quizzes or quizzes/ seen from the working folder or
    one of its parents (a notebook runs from notebooks/)."""
    if os.environ.get(QUIZZES_ENV):
        folder = Path(os.environ[QUIZZES_ENV])
        if not folder.is_dir():
            raise FileNotFoundError(f"${QUIZZES_ENV} is {folder}, which is not a folder")
        return folder
    candidates = [Path(__file__).resolve().parents[1] / "notebooks" / "quizzes"]
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        candidates += [folder / "notebooks" / "quizzes", folder / "quizzes"]
    for folder in candidates:
        if folder.is_dir():
            return folder
    raise FileNotFoundError("no quizzes folder found; looked in " + ", ".join(map(str, candidates[:3]))
                            + f" and above; set ${QUIZZES_ENV} to the folder that holds NN.json")


def quiz_path(number: str | int) -> Path:
    """notebooks/quizzes/NN.json for notebook `number` ("01", "1" or 1)."""
    text = str(number).strip()
    if not text.isdigit() or not 0 < int(text) < 100:
        raise ValueError(f"a quiz number is a notebook number such as '01', got {number!r}")
    return quizzes_dir() / f"{int(text):02d}.json"


def _check_text(text: Any, where: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: expected non-empty text, got {text!r}")
    for mark, why in FORBIDDEN.items():
        if mark in text:
            raise ValueError(f"{where}: {why}: {text!r}")


def validate(questions: Any, source: str = "questions") -> list[dict]:
    """Check a list of multiple-choice questions in jupyterquiz's format; raise ValueError naming `source`,
    the question (1-based, with the start of its text) and what is wrong. Returns the list."""
    if not isinstance(questions, list) or not questions:
        raise ValueError(f"{source}: expected a non-empty JSON list of questions, got {type(questions).__name__}")
    for i, question in enumerate(questions, start=1):
        label = f"{source}: question {i}"
        if not isinstance(question, dict):
            raise ValueError(f"{label}: expected an object with question, type and answers, got {question!r}")
        label += f" ({str(question.get('question', ''))[:50]!r})"
        unknown = set(question) - {"question", "type", "answers", "answer_cols"}
        missing = {"question", "type", "answers"} - set(question)
        if unknown or missing:
            raise ValueError(f"{label}: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}")
        _check_text(question["question"], label)
        if question["type"] != "multiple_choice":
            raise ValueError(f"{label}: type must be 'multiple_choice' (one right answer), got {question['type']!r}")
        answers = question["answers"]
        if not isinstance(answers, list) or len(answers) < 3:
            raise ValueError(f"{label}: expected a list of at least 3 answers, got {answers!r}")
        for j, answer in enumerate(answers, start=1):
            where = f"{label}, answer {j}"
            if not isinstance(answer, dict) or set(answer) != {"answer", "correct", "feedback"}:
                raise ValueError(f"{where}: expected exactly the keys answer, correct and feedback, got {answer!r}")
            _check_text(answer["answer"], where)
            _check_text(answer["feedback"], where + " feedback")
            if not isinstance(answer["correct"], bool):
                raise ValueError(f"{where}: correct must be true or false, got {answer['correct']!r}")
        right = sum(answer["correct"] for answer in answers)
        if right != 1:
            raise ValueError(f"{label}: exactly one answer must be correct, found {right}")
        texts = [answer["answer"].strip().lower() for answer in answers]
        if len(set(texts)) != len(texts):
            raise ValueError(f"{label}: two answers have the same text")
    return questions


def load_questions(number: str | int) -> list[dict]:
    """The questions of notebook `number`, read from notebooks/quizzes/NN.json and checked (see `validate`)."""
    path = quiz_path(number)
    if not path.is_file():
        found = sorted(p.name for p in path.parent.glob("*.json"))
        raise FileNotFoundError(f"no quiz file {path} (the folder holds {found})")
    try:
        questions = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON: {error}") from None
    return validate(questions, str(path))


# jupyterquiz's script loads MathJax 3 from a CDN when a page has a MathJax object without `typeset`, as
# JupyterLab 4's is (its README: maths in quizzes does not render there), and calls `MathJax.typeset` after
# every click, which throws there. Quiz text holds no maths, so here that branch only logs a line and every
# typeset call is skipped where there is none: the saved outputs name no outside address (the offline book
# stays offline) and a click raises no error in JupyterLab.
CDN_MATHJAX = re.compile(r"console\.log\('WARNING: Trying to force load MathJax 3'\);.*?"
                         r"document\.head\.appendChild\(script\);\s*\}\)\(\);", re.S)
NO_CDN = "console.log('tinyvit quiz: MathJax is not ready; quiz text holds no maths');"
TYPESET, GUARDED_TYPESET = "MathJax.typeset(", "MathJax.typeset && MathJax.typeset("


def quiz_outputs(questions: list[dict], name: str, shuffle_answers: bool = True) -> list:
    """The two objects jupyterquiz.display_quiz displays for `questions` (an HTML container with its CSS, and a
    Javascript object holding the questions and jupyterquiz's code), with its CDN branch taken out. The
    container's id is derived from `name`, so the same quiz gives the very same outputs on every run."""
    try:
        from jupyterquiz.dynamic import display as jupyterquiz_display  # only the notebooks need it
    except ImportError:
        raise ImportError("show_quiz needs jupyterquiz: pip install -r requirements.txt") from None

    shown = [dict(q, answer_cols=q.get("answer_cols",
                                       1 if max(len(a["answer"]) for a in q["answers"]) > WIDE_OPTION else 2))
             for q in questions]
    outputs = []
    display, state = jupyterquiz_display.display, random.getstate()
    jupyterquiz_display.display = outputs.append  # collect what display_quiz would display
    random.seed(f"tinyvit quiz {name}")  # jupyterquiz names its container with `random`
    try:
        jupyterquiz_display.display_quiz(shown, shuffle_answers=shuffle_answers, max_width=760, border_radius=6)
    finally:
        jupyterquiz_display.display = display
        random.setstate(state)  # the learner's random stream is left as it was
    html, script = outputs
    script.data, replaced = CDN_MATHJAX.subn(NO_CDN, script.data)
    typesets = script.data.count(TYPESET)
    script.data = script.data.replace(TYPESET, GUARDED_TYPESET)
    if replaced != 2 or typesets != 7 or re.search(r"https?://", script.data):
        raise RuntimeError("jupyterquiz's script has changed: pin jupyterquiz==2.9.6.4 (requirements.txt)")
    return [html, script]


def show_quiz(number: str | int, shuffle_answers: bool = True) -> None:
    """Display the quiz of notebook `number` (e.g. show_quiz("01")) in a notebook or the book.

    The options are shuffled in the browser each time the quiz is drawn; re-running a notebook stores the
    very same outputs."""
    from IPython.display import display

    for output in quiz_outputs(load_questions(number), quiz_path(number).stem, shuffle_answers):
        display(output)
