"""The quizzes in a browser: in the built book with every outside request blocked (no kernel), a wrong and a
right answer are clicked and each one's feedback shows; in JupyterLab at 1,280 x 800, every option of every
quiz of notebook 7 is visible and none overlaps another, and clicking still gives feedback.

Needs /usr/bin/chromium and, for the book, the built book (book/build.sh; TINYVIT_BOOK_HTML may name a book
built elsewhere). Run with `pytest -m browser tests/test_quiz_browser.py` (about a minute).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from browser_support import chromium, local_only_page, serve_directory
from test_book import browser  # noqa: F401  (the module's Chromium, shared with the book's tests)
from test_lab import ERROR_OUTPUTS_JS, PROMPTS_JS, lab, menu, open_in_lab  # noqa: F401

from tinyvit.quiz import load_questions

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
HTML = Path(os.environ.get("TINYVIT_BOOK_HTML", REPO / "book" / "_build" / "html"))
SCREENSHOTS = REPO / "book" / "_build" / "screenshots"
SELF_CHECK = "notebooks/07_self_check.ipynb"
QUIZ_CALL = re.compile(r'show_quiz\("(\d\d)"\)')


def quizzes_in(notebook: Path) -> list[str]:
    """The quiz numbers a notebook shows, in order, read from its code cells."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return [n for c in cells if c["cell_type"] == "code" for n in QUIZ_CALL.findall("".join(c["source"]))]


def quiz_pages() -> list[str]:
    return [f"notebooks/{p.stem}" for p in sorted((REPO / "notebooks").glob("0[1-7]_*.ipynb")) if quizzes_in(p)]


def questions_of(page: str) -> list[dict]:
    return [q for n in quizzes_in(REPO / f"{page}.ipynb") for q in load_questions(n)]


# Each question is a div.Quiz: its text, the options (label.MCButton, shuffled in the browser, each carrying
# data-correct and data-feedback), then div.Feedback.
QUIZ_REPORT_JS = """() => [...document.querySelectorAll('div.Quiz')].map(q => ({
  question: q.querySelector('.MultipleChoiceQn').innerText.trim(),
  options: [...q.querySelectorAll('label.MCButton')].map(l => ({
    text: l.innerText.trim(), correct: l.dataset.correct === 'true', feedback: l.dataset.feedback})),
}))"""


def drawn(page) -> list[dict]:
    return page.evaluate(QUIZ_REPORT_JS)


def wait_for_quizzes(page, count: int, timeout: float = 30_000) -> None:
    page.wait_for_function(f"() => document.querySelectorAll('div.Quiz').length >= {count}", timeout=timeout)


def click_and_read(page, question_index: int, correct: bool) -> tuple[str, str]:
    """Click one wrong (or the right) option of question `question_index` on the page; (feedback, its class)."""
    quiz = page.locator("div.Quiz").nth(question_index)
    option = quiz.locator(f'label.MCButton[data-correct="{str(correct).lower()}"]').first
    option.scroll_into_view_if_needed()
    option.click()
    feedback = quiz.locator("div.Feedback")
    return feedback.inner_text().strip(), feedback.get_attribute("class") or ""


def check_drawn_against_files(shown: list[dict], expected: list[dict]) -> None:
    assert [q["question"] for q in shown] == [q["question"] for q in expected]
    for got, want in zip(shown, expected):
        by_text = {o["text"]: o for o in got["options"]}
        assert sorted(by_text) == sorted(a["answer"] for a in want["answers"]), want["question"]
        for answer in want["answers"]:
            assert by_text[answer["answer"]]["correct"] == answer["correct"]
            assert by_text[answer["answer"]]["feedback"] == answer["feedback"]


# ---- the built book ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def book_url():
    if not (HTML / "index.html").is_file():
        pytest.fail(f"no built book in {HTML}: build it with book/build.sh")
    with serve_directory(HTML) as url:
        yield url


@pytest.mark.parametrize("doc", quiz_pages())
def test_book_quiz_gives_feedback_offline(browser, book_url, doc):
    expected = questions_of(doc)
    page, log = local_only_page(browser, book_url)
    try:
        page.goto(f"{book_url}{doc}.html", wait_until="networkidle")
        wait_for_quizzes(page, len(expected))
        check_drawn_against_files(drawn(page), expected)
        first_of_each = [0]  # the first question of every quiz on the page
        for n in quizzes_in(REPO / f"{doc}.ipynb")[:-1]:
            first_of_each.append(first_of_each[-1] + len(load_questions(n)))
        for index in first_of_each:
            question = expected[index]
            wrong = [a["feedback"] for a in question["answers"] if not a["correct"]]
            right = [a["feedback"] for a in question["answers"] if a["correct"]]
            text, kind = click_and_read(page, index, correct=False)
            assert text in wrong and "incorrect" in kind.split(), (question["question"], text, kind)
            text, kind = click_and_read(page, index, correct=True)
            assert text in right and "correct" in kind.split(), (question["question"], text, kind)
        page.wait_for_timeout(800)  # jupyterquiz typesets 0.5 s after drawing: let that run, then judge the log
    finally:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"quiz_{doc.replace('/', '__')}.png"), full_page=True)
        page.close()
    assert log.problems() == [], "\n".join(log.problems())


# ---- JupyterLab --------------------------------------------------------------------------------------------

OVERLAPS_JS = """(quiz) => {
  // every option of one question, its text and its feedback line: boxes in viewport coordinates
  const parts = [quiz.querySelector('.MultipleChoiceQn'), ...quiz.querySelectorAll('label.MCButton')];
  const boxes = parts.map(e => e.getBoundingClientRect());
  const area = document.querySelector('.jp-NotebookPanel .jp-WindowedPanel-outer, .jp-NotebookPanel .jp-Notebook')
    .getBoundingClientRect();
  const problems = [];
  parts.forEach((e, i) => {
    const b = boxes[i];
    const name = i === 0 ? 'question text' : 'option ' + JSON.stringify(e.innerText.trim().slice(0, 40));
    if (b.width < 20 || b.height < 10 || !e.checkVisibility({opacityProperty: true, visibilityProperty: true}))
      problems.push(name + ' is not visible');
    if (b.left < area.left - 1 || b.right > area.right + 1) problems.push(name + ' sticks out of the notebook');
    if (i > 0) {
      const hit = document.elementFromPoint(b.left + b.width / 2, b.top + b.height / 2);
      if (!hit || !e.contains(hit)) problems.push(name + ' is covered at its centre');
    }
    for (let j = 0; j < i; j++) {
      const o = boxes[j];
      if (b.left < o.right - 1 && o.left < b.right - 1 && b.top < o.bottom - 1 && o.top < b.bottom - 1)
        problems.push(name + ' overlaps part ' + j);
    }
  });
  return problems;
}"""


def open_and_run(page, base: str, notebook: str) -> None:
    """Open a notebook in JupyterLab, keep the proposed kernel, clear the saved outputs and run all cells."""
    open_in_lab(page, base, notebook)
    menu(page, "Edit", "Clear Outputs of All Cells")
    page.wait_for_function(f"() => ({PROMPTS_JS})().every(p => p === '[ ]:')")
    menu(page, "Run", "Run All Cells")
    page.wait_for_function(f"""() => {{
        const prompts = ({PROMPTS_JS})();
        return (prompts.length > 0 && prompts.every(p => /^\\[\\d+\\]:$/.test(p))) || ({ERROR_OUTPUTS_JS})().length;
    }}""", timeout=120_000)
    assert page.evaluate(ERROR_OUTPUTS_JS) == []


def test_jupyterlab_shows_every_option_of_every_quiz_at_1280_by_800(lab):
    expected = questions_of(SELF_CHECK.removesuffix(".ipynb"))
    saved = (REPO / SELF_CHECK).read_bytes()
    with chromium() as browser:
        page, log = local_only_page(browser, lab, viewport=(1280, 800))
        page.set_default_timeout(30_000)
        try:
            open_and_run(page, lab, SELF_CHECK)
            wait_for_quizzes(page, len(expected))
            check_drawn_against_files(drawn(page), expected)
            problems = []
            quizzes = page.locator("div.Quiz")
            for index in range(quizzes.count()):
                quiz = quizzes.nth(index)
                quiz.scroll_into_view_if_needed()
                problems += [f"{expected[index]['question'][:50]}: {p}" for p in quiz.evaluate(OVERLAPS_JS)]
            assert not problems, "\n".join(problems)
            # a click answers in JupyterLab too, with the kernel idle (the quiz runs in the page)
            wrong = {a["feedback"] for a in expected[0]["answers"] if not a["correct"]}
            text, kind = click_and_read(page, 0, correct=False)
            assert text in wrong and "incorrect" in kind.split()
            text, kind = click_and_read(page, 0, correct=True)
            assert "correct" in kind.split() and text.startswith("Right.")
        finally:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "jupyterlab_07_self_check_quizzes.png"))
            page.close()
    assert log.problems() == [], "\n".join(log.problems())
    assert (REPO / SELF_CHECK).read_bytes() == saved, "running the notebook in JupyterLab changed the committed file"
