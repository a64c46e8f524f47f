"""The quizzes: every notebooks/quizzes/NN.json loads and is well formed, the right option cannot be guessed by
its length, and show_quiz writes outputs that need no kernel and fetch nothing (tests/test_quiz_browser.py
clicks them in the book and in JupyterLab)."""
from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from tinyvit import quiz
from tinyvit.quiz import load_questions, quiz_path, quizzes_dir, show_quiz, validate

REPO = Path(__file__).resolve().parents[1]
QUIZZES = REPO / "notebooks" / "quizzes"
LESSONS = ["01", "02", "03", "04", "05", "06"]  # notebook 07 holds the chapter's own questions
ALL = LESSONS + ["07"]


def right_and_wrong(question: dict) -> tuple[str, list[str]]:
    right = [a["answer"] for a in question["answers"] if a["correct"]]
    return right[0], [a["answer"] for a in question["answers"] if not a["correct"]]


def test_the_quizzes_folder_is_the_repositorys():
    assert quizzes_dir() == QUIZZES
    assert sorted(p.stem for p in QUIZZES.glob("*.json")) == ALL
    assert quiz_path("1") == quiz_path(1) == quiz_path("01") == QUIZZES / "01.json"


@pytest.mark.parametrize("number", ALL)
def test_each_quiz_is_valid_json_in_jupyterquiz_format(number):
    path = QUIZZES / f"{number}.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert load_questions(number) == raw  # loading checks it (validate) and changes nothing
    for question in raw:
        assert question["type"] == "multiple_choice" and len(question["answers"]) >= 3
        assert sum(a["correct"] for a in question["answers"]) == 1
        for answer in question["answers"]:
            assert answer["feedback"].strip(), f"{path}: {answer['answer']!r} has no feedback"
            prefix = "Right." if answer["correct"] else "Not quite."
            assert answer["feedback"].startswith(prefix), f"{path}: {answer['feedback']!r} should open with {prefix}"


def test_enough_questions_per_notebook_and_over_the_course():
    counts = {number: len(load_questions(number)) for number in ALL}
    assert all(counts[number] >= 3 for number in LESSONS), counts
    assert sum(counts[number] for number in LESSONS) >= 20, counts
    assert counts["07"] == 5  # the chapter's five self-check questions


def test_the_right_option_is_rarely_the_longest_and_options_are_comparable():
    questions = [(number, q) for number in ALL for q in load_questions(number)]
    longest = []
    for number, question in questions:
        right, wrong = right_and_wrong(question)
        if len(right) > max(map(len, wrong)):
            longest.append(f"{number}: {question['question'][:60]}")
        lengths = [len(a["answer"]) for a in question["answers"]]
        # comparable: the shortest option at least half the longest (short numeric options excepted)
        assert max(lengths) <= 10 or min(lengths) >= max(lengths) / 2, (number, question["question"], lengths)
    assert len(longest) <= 0.2 * len(questions), f"the right option is the longest in {longest}"


def test_no_maths_html_or_links_in_quiz_text():
    for number in ALL:
        for question in load_questions(number):
            texts = [question["question"]] + [a[k] for a in question["answers"] for k in ("answer", "feedback")]
            for text in texts:
                assert not re.search(r"[$\\<>]|https?://|\]\(", text), (number, text)


def test_validate_names_the_file_and_the_question():
    good = load_questions("01")
    cases = [
        ([], "non-empty JSON list"),
        ([dict(good[0], type="many_choice")], "question 1 .*type must be 'multiple_choice'"),
        ([good[0], dict(good[1], answers=good[1]["answers"][:2])], "question 2 .*at least 3 answers"),
        ([dict(good[0], answers=[dict(a, correct=True) for a in good[0]["answers"]])], "exactly one answer"),
        ([dict(good[0], answers=[dict(a, correct=False) for a in good[0]["answers"]])], "found 0"),
        ([dict(good[0], answers=[{"answer": "x", "correct": False}] + good[0]["answers"])],
         "answer 1: expected exactly the keys answer, correct and feedback"),
        ([dict(good[0], question="What is $\\sqrt{2}$?")], "maths"),
        ([dict(good[0], answers=good[0]["answers"] + [dict(good[0]["answers"][0], correct=False)])],
         "two answers have the same text"),
        ([dict(good[0], hint="x")], "unknown keys \\['hint'\\]"),
        ([dict(good[0], answers=[dict(good[0]["answers"][0], feedback=" ")] + good[0]["answers"][1:])],
         "answer 1 feedback: expected non-empty text"),
    ]
    for questions, message in cases:
        with pytest.raises(ValueError, match=f"my.json: {message}" if message.startswith("question") else message):
            validate(questions, "my.json")


def test_load_questions_reports_bad_files_by_path(tmp_path, monkeypatch):
    monkeypatch.setenv(quiz.QUIZZES_ENV, str(tmp_path))
    (tmp_path / "01.json").write_text('[{"question": "a",', encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "01.json")) + ": not valid JSON"):
        load_questions("01")
    with pytest.raises(FileNotFoundError, match="no quiz file .*02.json .*holds \\['01.json'\\]"):
        load_questions("02")
    with pytest.raises(ValueError, match="a quiz number is a notebook number"):
        load_questions("../01")
    monkeypatch.setenv(quiz.QUIZZES_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="not a folder"):
        quizzes_dir()


def test_the_quizzes_are_found_from_the_notebooks_folder(monkeypatch):
    monkeypatch.chdir(REPO / "notebooks")
    assert quizzes_dir() == QUIZZES and len(load_questions("02")) >= 3


def quiz_outputs(number: str) -> list:
    InteractiveShell.instance()
    with capture_output() as captured:
        show_quiz(number)
    return captured.outputs


def test_show_quiz_writes_everything_the_page_needs_and_fetches_nothing(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("show_quiz must not open a URL")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    html_output, js_output = quiz_outputs("03")
    html, script = html_output.data["text/html"], js_output.data["application/javascript"]
    container = re.match(r'<div id="([A-Za-z]{12})"', html).group(1)
    assert "<style>" in html and ".MCButton" in html  # jupyterquiz's CSS travels with the output
    assert not re.search(r"<(script|link|img)\b", html)  # nothing loaded by the HTML
    assert f"var questions{container}=" in script and "function show_questions" in script
    assert "Question.register('multiple_choice'" in script and f"show_questions(questions{container}" in script
    for question in load_questions("03"):  # the questions themselves are in the page, not behind a URL
        assert json.dumps(question["question"]) in script
    assert "fetch(" not in script and "XMLHttpRequest" not in script
    # no outside address at all: jupyterquiz's fallback that loads MathJax from a CDN is taken out, so the
    # book's offline check passes and no page can reach for the network
    assert not re.search(r"https?://", html + script)
    assert "force load MathJax" not in script and "tinyvit quiz: MathJax is not ready" in script
    # JupyterLab 4's MathJax has no typeset(): every call is guarded, so a click raises nothing there
    assert script.count("MathJax.typeset(") == script.count("MathJax.typeset && MathJax.typeset(") == 7


def test_show_quiz_output_is_the_same_on_every_run_and_leaves_random_alone():
    import random

    random.seed(1)
    expected = random.random()
    random.seed(1)
    first = [o.data for o in quiz_outputs("01")]
    assert random.random() == expected  # the learner's random stream is untouched
    assert [o.data for o in quiz_outputs("01")] == first  # re-running a notebook stores the same output
    assert first[0]["text/html"] != quiz_outputs("02")[0].data["text/html"]  # each quiz its own container


def test_long_options_are_shown_one_per_row():
    script = quiz_outputs("07")[1].data["application/javascript"]
    shown = json.loads(re.search(r"var questions\w+=(\[.*?\]);\n", script, re.S).group(1))
    for question in shown:
        wide = max(len(a["answer"]) for a in question["answers"]) > quiz.WIDE_OPTION
        assert question["answer_cols"] == (1 if wide else 2)


def test_notebook_7_is_every_quiz_and_nothing_to_copy():
    cells = json.loads((REPO / "notebooks" / "07_self_check.ipynb").read_text(encoding="utf-8"))["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    assert code == ["from tinyvit.quiz import show_quiz"] + [f'show_quiz("{n}")' for n in ALL]
    assert not any({"exercise", "solution"} & set(c["metadata"].get("tags", [])) for c in cells)
