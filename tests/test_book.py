"""The built book, seen the way a reader sees it: every page of book/_toc.yml opened in Chromium with every
request outside the book blocked (as in a classroom without internet), at 1,280 x 900.

Besides loading cleanly (no console error, no failed request, figures, maths and widgets drawn), the pages
keep the course's promises: no dead control (a widget with a slider says it is live in JupyterLab), 88
characters fit the code column and printed lines wrap, tables are padded with their verdicts coloured,
exercise solutions sit folded behind a "Show the solution" toggle, one search box and a favicon.

Needs the built book (book/build.sh) and /usr/bin/chromium; run with `pytest -m browser tests/test_book.py`.
A full-page screenshot of each page is written to book/_build/screenshots/.
"""
from __future__ import annotations

import html
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import nbformat
import pytest
import yaml
from browser_support import chromium, local_only_page, serve_directory

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"
HTML = BOOK / "_build" / "html"
SCREENSHOTS = BOOK / "_build" / "screenshots"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
SOLUTION_TAGS = ("hide-cell", "hide-input", "hide-output")
# What a reader can drag, click or type into in a widget: each needs a kernel behind it.
CONTROLS = ".widget-slider, .widget-dropdown, .widget-button, .widget-toggle-buttons, .widget-radio-box, " \
           ".widget-checkbox, .widget-text, .widget-textarea, .widget-play"
CODE_COLUMN = 88  # characters: the notebooks' limit for code lines and printed lines


def toc_pages() -> list[str]:
    """The book's pages in reading order (root first), as docnames: 'intro', 'notebooks/01_pixels_to_patches'."""
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text(encoding="utf-8"))
    pages = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                pages.append(entry["file"])
            walk(entry.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return [str(Path(page).with_suffix("")) if Path(page).suffix in (".md", ".ipynb") else page for page in pages]


PAGES = toc_pages()


def source_of(doc: str) -> Path:
    """The file a page is built from: book/<doc>.md or book/<doc>.ipynb (notebooks/ is a link to ../notebooks)."""
    for suffix in (".md", ".ipynb"):
        if (BOOK / f"{doc}{suffix}").is_file():
            return BOOK / f"{doc}{suffix}"
    raise FileNotFoundError(f"_toc.yml lists {doc!r}, but neither book/{doc}.md nor book/{doc}.ipynb exists")


def doc_of(url: str, base: str) -> str:
    """'http://127.0.0.1:PORT/notebooks/x.html#part' -> 'notebooks/x'."""
    path = urlparse(url).path[len(urlparse(base).path):]
    return path.removesuffix(".html")


@pytest.fixture(scope="module")
def site() -> Path:
    """The built book's folder, checked to be newer than every page's source."""
    if not (HTML / "index.html").is_file():
        pytest.fail(f"no built book in {HTML}: build it with book/build.sh")
    stale = [doc for doc in PAGES
             if not (HTML / f"{doc}.html").is_file()
             or (HTML / f"{doc}.html").stat().st_mtime < source_of(doc).stat().st_mtime]
    if stale:
        pytest.fail(f"the built book is missing or older than {stale}: rebuild it with book/build.sh")
    return HTML


@pytest.fixture(scope="module")
def base_url(site):
    with serve_directory(site) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


@dataclass
class Visit:
    """What one page showed after loading: problems logged, broken images, error outputs, math, widgets."""
    problems: list[str]
    broken_images: list[str]
    images: int
    error_outputs: list[str]
    math: int = 0
    math_unrendered: int = 0
    math_errors: int = 0
    widget_views: int = 0
    widget_views_unrendered: int = 0
    widget_text: str = ""
    solutions: list[dict] = field(default_factory=list)
    widgets: list[dict] = field(default_factory=list)
    code_blocks: list[dict] = field(default_factory=list)
    table_cells: list[dict] = field(default_factory=list)


PAGE_REPORT_JS = """() => {
  const text = (el) => el.innerText || el.textContent || '';
  const views = [...document.querySelectorAll('script[type="%(view)s"]')];
  return {
    images: document.images.length,
    broken_images: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src),
    tracebacks: [...document.querySelectorAll('.output.traceback')].map(e => text(e).slice(0, 300)),
    stderr: [...document.querySelectorAll('.output.stderr')].map(e => text(e)),
    body_text: text(document.body),
    math: document.querySelectorAll('.math').length,
    math_unrendered: [...document.querySelectorAll('.math')].filter(e => !e.querySelector('mjx-container')).length,
    math_errors: document.querySelectorAll('mjx-merror').length,
    widget_views: views.length,
    widget_views_unrendered: views.filter(s => !s.parentElement.querySelector('.jupyter-widgets')).length,
    widget_text: views.map(s => text(s.parentElement)).join('\\n'),
    solutions: [...document.querySelectorAll('.cell')].filter(c => [...c.classList].some(k => /^tag_hide-/.test(k)))
      .map(c => ({tags: [...c.classList].filter(k => k.startsWith('tag_')),
                  details: c.querySelectorAll('details').length,
                  open: c.querySelectorAll('details[open]').length,
                  hidden_visible: [...c.querySelectorAll('details > :not(summary)')].some(e => e.checkVisibility())})),
    // Each rendered widget: its controls, and whether it says (visibly) that it is live in JupyterLab only.
    widgets: views.map(s => s.parentElement.querySelector('.jupyter-widgets')).filter(Boolean).map(w => {
      const controls = [...w.querySelectorAll(%(controls)s)].filter(e => e.checkVisibility());
      const notes = [...w.querySelectorAll('.tinyvit-live-note')].filter(e => e.checkVisibility());
      return {text: text(w).slice(0, 120), controls: controls.length,
              clickable: controls.filter(e => getComputedStyle(e).pointerEvents !== 'none').length,
              note: notes.map(text).join(' ')};
    }),
    // Each code cell's and output's <pre>: how many characters of its font fit a line, and whether a line
    // runs past its box.
    code_blocks: [...document.querySelectorAll('.cell_input pre, .cell_output pre')].filter(p => p.checkVisibility())
      .map(pre => {
        const style = getComputedStyle(pre);
        const probe = document.createElement('span');
        probe.textContent = 'x'.repeat(88);
        pre.appendChild(probe);
        const width88 = probe.getBoundingClientRect().width;
        probe.remove();
        const inner = pre.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
        return {kind: pre.closest('.cell_input') ? 'code' : 'output', fits: Math.floor(inner / (width88 / 88)),
                overflows: pre.scrollWidth > pre.clientWidth + 1, start: text(pre).slice(0, 80)};
      }),
    table_cells: [...document.querySelectorAll('table.tinyvit-table td')].map(td => {
      const style = getComputedStyle(td);
      return {padding: parseFloat(style.paddingLeft), border: parseFloat(style.borderTopWidth),
              background: style.backgroundColor, verdict: [...td.classList].find(k => /^verdict-/.test(k)) || '',
              text: text(td).trim()};
    }),
  };
}""" % {"view": WIDGET_VIEW, "controls": json.dumps(CONTROLS)}

TYPESET_DONE_JS = """() => [...document.querySelectorAll('.math')].every(e => e.querySelector('mjx-container'))"""
WIDGETS_DONE_JS = """() => [...document.querySelectorAll('script[type="%s"]')]
  .every(s => s.parentElement.querySelector('.jupyter-widgets'))""" % WIDGET_VIEW


@pytest.fixture(scope="module")
def visits(browser, base_url) -> dict[str, Visit]:
    """Every toc page, opened once (lazily) and shared by the tests below; each also saves a screenshot."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    cache: dict[str, Visit] = {}

    def visit(doc: str) -> Visit:
        if doc in cache:
            return cache[doc]
        page, log = local_only_page(browser, base_url)
        try:
            page.goto(base_url + f"{doc}.html", wait_until="networkidle")
            for done in (TYPESET_DONE_JS, WIDGETS_DONE_JS):  # give MathJax and the widgets time; judged below
                try:
                    page.wait_for_function(done, timeout=15_000)
                except Exception:  # noqa: BLE001 - a timeout here is reported as unrendered math/widgets
                    pass
            page.wait_for_timeout(300)  # late console errors and font loads
            report = page.evaluate(PAGE_REPORT_JS)
            page.screenshot(path=str(SCREENSHOTS / f"{doc.replace('/', '__')}.png"), full_page=True)
        finally:
            page.close()
        errors = [f"traceback: {t}" for t in report["tracebacks"]]
        errors += [f"stderr with an error: {s[:300]}" for s in report["stderr"] if re.search(r"\w*Error\b", s)]
        if "Traceback (most recent call last)" in report["body_text"] and not report["tracebacks"]:
            errors.append("the page text contains a Python traceback")
        cache[doc] = Visit(
            problems=log.problems(), broken_images=report["broken_images"], images=report["images"],
            error_outputs=errors, math=report["math"], math_unrendered=report["math_unrendered"],
            math_errors=report["math_errors"], widget_views=report["widget_views"],
            widget_views_unrendered=report["widget_views_unrendered"], widget_text=report["widget_text"],
            solutions=report["solutions"], widgets=report["widgets"], code_blocks=report["code_blocks"],
            table_cells=report["table_cells"])
        return cache[doc]

    return visit


@pytest.mark.parametrize("doc", PAGES)
def test_page_loads_cleanly_offline(visits, doc):
    """No console error, no uncaught exception, no failed or outside request, every image loaded."""
    visit = visits(doc)
    assert visit.problems == [], f"{doc}: " + "\n".join(visit.problems)
    assert visit.broken_images == [], f"{doc}: images that did not load: {visit.broken_images}"
    assert (SCREENSHOTS / f"{doc.replace('/', '__')}.png").stat().st_size > 10_000


@pytest.mark.parametrize("doc", PAGES)
def test_page_shows_no_error_output(visits, doc):
    assert visits(doc).error_outputs == [], f"{doc}: " + "\n".join(visits(doc).error_outputs)


def test_notebook_figures_are_shown(visits):
    """Every figure a notebook saved (image/png outputs) appears as an image that loaded on its page."""
    for doc in PAGES:
        if source_of(doc).suffix != ".ipynb":
            continue
        nb = nbformat.read(source_of(doc), as_version=4)
        saved = sum(1 for cell in nb.cells if cell.cell_type == "code"
                    for out in cell.get("outputs", []) if "image/png" in out.get("data", {}))
        visit = visits(doc)
        assert visit.images >= saved, f"{doc}: the notebook saved {saved} figures, the page shows {visit.images}"
        assert visit.broken_images == []


def test_math_renders(visits):
    """Every formula is typeset by the book's own MathJax (an mjx-container, no TeX error), on every page."""
    with_math = [doc for doc in PAGES if visits(doc).math]
    assert with_math, "no page has any math: the check would prove nothing (the glossary has some)"
    for doc in with_math:
        visit = visits(doc)
        assert visit.math_unrendered == 0, f"{doc}: {visit.math_unrendered} of {visit.math} formulas left as raw TeX"
        assert visit.math_errors == 0, f"{doc}: {visit.math_errors} formulas with TeX errors"


def saved_widget_values(notebook: Path) -> tuple[int, list[str]]:
    """(number of widget views in outputs, texts the views must show): from the notebook's saved widget state,
    the value of every slider, label, text and HTML model reachable from a view."""
    nb = nbformat.read(notebook, as_version=4)
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    roots = [out["data"][WIDGET_VIEW]["model_id"] for cell in nb.cells if cell.cell_type == "code"
             for out in cell.get("outputs", []) if WIDGET_VIEW in out.get("data", {})]
    seen, stack, texts = set(), list(roots), []
    while stack:
        model_id = stack.pop()
        if model_id in seen or model_id not in state:
            continue
        seen.add(model_id)
        name, values = state[model_id]["model_name"], state[model_id]["state"]
        stack += re.findall(r"IPY_MODEL_([0-9a-f]+)", json.dumps(values))
        if name in ("IntSliderModel", "LabelModel", "TextModel", "HTMLModel"):
            texts.append(html.unescape(re.sub(r"<[^>]+>", " ", str(values.get("value", "")))))
        elif name == "SelectionSliderModel" and values.get("_options_labels"):
            texts.append(values["_options_labels"][values.get("index", 0)])
    return len(roots), [text for text in texts if words(text)]


def words(text: str) -> list[str]:
    """Letters-and-digits runs: markup and punctuation differ between saved HTML and rendered text."""
    return re.findall(r"[\w.]+", text)


def test_widgets_render_from_saved_state(visits):
    """Every widget view is drawn (no empty widget), showing the values saved with the notebook."""
    with_widgets = []
    for doc in PAGES:
        if source_of(doc).suffix != ".ipynb":
            continue
        views, texts = saved_widget_values(source_of(doc))
        if not views:
            continue
        with_widgets.append(doc)
        visit = visits(doc)
        assert visit.widget_views == views, f"{doc}: {views} widget outputs saved, {visit.widget_views} on the page"
        assert visit.widget_views_unrendered == 0, f"{doc}: {visit.widget_views_unrendered} widgets left empty"
        shown = Counter(words(visit.widget_text))
        for text in texts:
            missing = [word for word in words(text) if not shown[word]]
            assert not missing, f"{doc}: saved widget value {text!r} not shown (missing {missing})"
    assert with_widgets, "no notebook in the toc has saved widget views (01's patch-size explorer should)"


def test_solution_cells_are_collapsed(visits):
    """Cells tagged hide-cell/-input/-output render closed behind a toggle, one per tagged cell."""
    expected_total = 0
    for doc in PAGES:
        if source_of(doc).suffix != ".ipynb":
            continue
        nb = nbformat.read(source_of(doc), as_version=4)
        tagged = [cell for cell in nb.cells if set(cell.metadata.get("tags", [])) & set(SOLUTION_TAGS)]
        expected_total += len(tagged)
        if not tagged:
            continue
        solutions = visits(doc).solutions
        assert len(solutions) == len(tagged), f"{doc}: {len(tagged)} tagged cells, {len(solutions)} rendered"
        for solution in solutions:
            assert solution["details"] >= 1 and solution["open"] == 0, f"{doc}: a {solution['tags']} cell is open"
            assert not solution["hidden_visible"], f"{doc}: a {solution['tags']} cell shows its hidden part"
    assert expected_total > 0, "no notebook in the toc has hide-cell cells: the self-check's solutions should"


def test_fact_check_page_shows_its_table_with_verdicts(browser, base_url):
    """The fact-check (appendix A) shows its findings as tables with a verdict column, verdicts coloured."""
    fact = [doc for doc in PAGES if "fact_check" in doc]
    assert fact, "the fact-check page is missing from _toc.yml"
    page, log = local_only_page(browser, base_url)
    try:
        page.goto(f"{base_url}{fact[0]}.html")
        verdict = page.locator("th", has_text=re.compile(r"^\s*verdict\s*$", re.I))
        tables = page.locator("article table", has=verdict)
        assert tables.count() >= 1, f"{fact[0]}: no table with a verdict column"
        rows = sum(table.locator("tbody tr").count() for table in tables.all())
        coloured = page.locator("article table td.verdict").count()
    finally:
        page.close()
    assert rows > 10 and coloured == rows, f"{fact[0]}: {rows} findings, {coloured} verdicts coloured"
    assert log.problems() == []


def follow(page, selector: str, base_url: str, limit: int) -> list[str]:
    """Click the link matching `selector` until there is none; the docnames visited, starting page first."""
    docs = [doc_of(page.url, base_url)]
    for _ in range(limit):
        link = page.locator(selector)
        if link.count() == 0:
            return docs
        target = link.first.evaluate("a => a.href")
        link.first.click()
        page.wait_for_url(target)
        docs.append(doc_of(page.url, base_url))
    raise AssertionError(f"{selector} still leads on after {limit} pages: {docs}")


def test_next_and_previous_walk_the_whole_book(browser, base_url):
    page, log = local_only_page(browser, base_url)
    try:
        page.goto(base_url)  # index.html redirects to the root page
        page.wait_for_url(f"{base_url}{PAGES[0]}.html")
        forward = follow(page, "a.right-next", base_url, limit=len(PAGES) + 1)
        backward = follow(page, "a.left-prev", base_url, limit=len(PAGES) + 1)
    finally:
        page.close()
    assert forward == PAGES
    assert backward == PAGES[::-1]
    assert log.blocked == []


def test_sidebar_toc_reaches_every_chapter(browser, base_url):
    page, log = local_only_page(browser, base_url)
    try:
        page.goto(f"{base_url}{PAGES[0]}.html")
        listed = [doc_of(href, base_url) for href in
                  page.eval_on_selector_all("nav.bd-docs-nav a.reference.internal", "as => as.map(a => a.href)")]
        assert [doc for doc in listed if doc != PAGES[0]] == PAGES[1:], f"sidebar lists {listed}"
        for doc in PAGES[1:]:  # click through from wherever we are, as a reader would
            link = page.locator(f"nav.bd-docs-nav a.reference.internal[href$='{Path(doc).name}.html']")
            link.first.click()
            page.wait_for_url(f"{base_url}{doc}.html")
            assert page.locator("article h1").first.is_visible(), f"{doc}: no visible title"
    finally:
        page.close()
    assert log.problems() == []


def test_search_finds_cls(browser, base_url):
    page, log = local_only_page(browser, base_url)
    try:
        page.goto(f"{base_url}search.html?q=CLS")
        page.wait_for_selector("ul.search li", timeout=15_000)
        # Sphinx adds the hits one by one and says so when done: read them only then.
        page.wait_for_function("() => /Search finished/.test(document.querySelector('.search-summary')?.textContent"
                               " || '')", timeout=15_000)
        hits = [doc_of(href, base_url) for href in
                page.eval_on_selector_all("ul.search li a", "as => as.map(a => a.href)")]
    finally:
        page.close()
    assert "glossary" in hits, f"search for CLS found {hits}"
    assert set(hits) <= set(PAGES), f"search results outside the toc: {set(hits) - set(PAGES)}"
    assert log.problems() == []


def test_no_page_refers_to_outside_files_or_repeats_a_script(site):
    """A static check of every built page (the build runs it too): no <script>/<link>/<img> from elsewhere,
    and no script included twice (a second MathJax breaks every formula on the page)."""
    sys.path.insert(0, str(BOOK / "_ext"))
    try:
        from offline_book import remote_references, repeated_scripts
    finally:
        sys.path.remove(str(BOOK / "_ext"))
    pages = [p for p in site.rglob("*.html") if p.relative_to(site).parts[0] not in ("_static", "_sources")]
    assert len(pages) >= len(PAGES)
    remote = {str(p.relative_to(site)): refs for p in pages if (refs := remote_references(p.read_text("utf-8")))}
    repeated = {str(p.relative_to(site)): refs for p in pages if (refs := repeated_scripts(p.read_text("utf-8")))}
    assert remote == {} and repeated == {}
    assert remote_references('<script src="https://cdn.example/x.js"></script>') == ["https://cdn.example/x.js"]
    assert repeated_scripts('<script src="a.js?v=1"></script><script src="a.js?v=1"></script>') == ["a.js"]


def notebook_pages() -> list[str]:
    return [doc for doc in PAGES if source_of(doc).suffix == ".ipynb"]


def test_no_dead_control_widgets_with_controls_say_they_are_live_in_jupyterlab(visits):
    """No kernel runs in the book: a widget with a slider (or any control) says plainly, in view, that it is
    live in JupyterLab, and its controls take no clicks (tinyvit.widgets.LiveNote and book/_assets/tinyvit.css).
    """
    with_controls = []
    for doc in notebook_pages():
        for widget in visits(doc).widgets:
            if not widget["controls"]:
                continue
            with_controls.append(doc)
            assert "Live in JupyterLab" in widget["note"], (
                f"{doc}: a widget with {widget['controls']} controls and no visible 'Live in JupyterLab' note "
                f"(a control that moves nothing): {widget['text']!r}")
            assert widget["clickable"] == 0, f"{doc}: {widget['clickable']} controls still take clicks"
    assert with_controls, "no widget with controls in the book: 01's patch-size explorer should have one"


def test_code_and_printed_lines_fit_the_code_column(visits):
    """At 1,280 x 900, 88 characters fit every code cell and output (the notebooks' line limit), and no printed
    line runs out of its box: a long one wraps, so a conclusion is never cut off at the edge."""
    checked = 0
    for doc in notebook_pages():
        for block in visits(doc).code_blocks:
            checked += 1
            assert block["fits"] >= CODE_COLUMN, (
                f"{doc}: a {block['kind']} box holds {block['fits']} characters a line, "
                f"not {CODE_COLUMN}: {block['start']!r}")
            if block["kind"] == "output":
                assert not block["overflows"], f"{doc}: a printed line is cut at the edge: {block['start']!r}"
    assert checked > 20


def test_tables_have_padding_borders_and_highlighted_verdicts(visits):
    """Tables from tinyvit.viz.Table: every cell padded and bordered, every verdict coloured by its kind."""
    cells = {doc: visits(doc).table_cells for doc in PAGES}
    assert any(cells.values()), "no page shows a tinyvit.viz.Table"
    kinds = set()
    for doc, found in cells.items():
        for cell in found:
            assert cell["padding"] >= 4 and cell["border"] >= 1, f"{doc}: a cell without padding or border: {cell}"
            if cell["verdict"]:
                kinds.add(cell["verdict"])
                assert cell["background"] not in ("rgba(0, 0, 0, 0)", "transparent"), f"{doc}: {cell}"
    assert {"verdict-right", "verdict-wrong"} <= kinds, f"verdict kinds shown: {sorted(kinds)}"


def solution_cells(doc: str) -> list[dict]:
    """The exercise solutions of a notebook page: cells tagged `solution` (with `hide-input` and
    `jupyter.source_hidden`, the course's convention)."""
    nb = nbformat.read(source_of(doc), as_version=4)
    return [cell for cell in nb.cells if cell.cell_type == "code" and "solution" in cell.metadata.get("tags", [])]


def test_solutions_are_folded_behind_a_toggle(browser, base_url):
    """Each solution cell shows only a closed "Show the solution" toggle; a click opens its code, a second
    click folds it again."""
    total = 0
    for doc in notebook_pages():
        cells = solution_cells(doc)
        if not cells:
            continue
        for cell in cells:  # the convention, so that JupyterLab folds them too (tests/test_lab.py)
            assert "hide-input" in cell.metadata.get("tags", []), f"{doc}: a solution cell without hide-input"
            assert cell.metadata.get("jupyter", {}).get("source_hidden") is True, (
                f"{doc}: a solution cell without jupyter.source_hidden: {cell.source[:60]!r}")
        page, log = local_only_page(browser, base_url)
        try:
            page.goto(f"{base_url}{doc}.html")
            rendered = page.locator(".cell.tag_solution")
            assert rendered.count() == len(cells), f"{doc}: {len(cells)} solution cells, {rendered.count()} on the page"
            for index, cell in enumerate(cells):
                shown = rendered.nth(index)
                first_line = next(line for line in cell.source.splitlines() if line.strip()).strip()
                code = shown.locator(".cell_input pre")
                toggle = shown.locator("details > summary")
                assert toggle.count() == 1 and toggle.is_visible(), f"{doc}: solution {index + 1} has no toggle"
                assert "Show the solution" in toggle.inner_text()
                assert not code.is_visible(), f"{doc}: solution {index + 1} is open: {first_line!r}"
                toggle.click()
                code.wait_for(state="visible", timeout=5_000)
                assert first_line in code.inner_text(), f"{doc}: the toggle opened something else"
                toggle.click()
                code.wait_for(state="hidden", timeout=5_000)
                total += 1
        finally:
            page.close()
        assert log.problems() == [], f"{doc}: " + "\n".join(log.problems())
    assert total > 0, "no notebook in the toc has a solution cell (tag 'solution'); notebook 1's exercises should"


def test_one_search_box_and_a_favicon(browser, base_url):
    """The page names its own icon (no request for a missing /favicon.ico) and shows one search box."""
    page, log = local_only_page(browser, base_url)
    try:
        response = page.goto(f"{base_url}{PAGES[0]}.html")
        assert response is not None and response.ok
        icon = page.locator("link[rel='icon']")
        assert icon.count() == 1, "no favicon named in the page"
        fetched = page.request.get(icon.evaluate("link => link.href"))
        assert fetched.ok and fetched.body().lstrip().startswith(b"<svg"), "the favicon does not load"
        boxes = [box for box in page.locator(".search-button-field").all() if box.is_visible()]
        assert len(boxes) == 1, f"{len(boxes)} search boxes in view"
    finally:
        page.close()
    assert log.problems() == []
