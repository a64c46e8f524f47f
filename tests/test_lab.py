"""The learner's own path: JupyterLab started headless, notebook 1 opened in Chromium, Run All Cells, and the
patch-size explorer answering its slider (with no book-only note in view); every exercise solution folded.

Needs /usr/bin/chromium; run with `pytest -m browser tests/test_lab.py` (about a minute).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest
from browser_support import chromium, free_port, local_only_page

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = "notebooks/01_pixels_to_patches.ipynb"
SCREENSHOT = REPO / "book" / "_build" / "screenshots" / "jupyterlab_01_pixels_to_patches.png"  # test artifact
IMAGE_SIZE = 224  # notebook 1 explores ViTConfig().image_size

# Settings for this throw-away server only: no autosave (running cells must not rewrite the committed notebook),
# every cell kept in the page (so each prompt can be read), no requests for news or updates.
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
}


def wait_for_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    """Poll `url` until it answers 200; fail with the server's log if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"jupyter lab exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"jupyter lab did not answer {url} within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server rooted at the repository, on a free port, stopped (with its kernels) afterwards."""
    tmp_path = tmp_path_factory.mktemp("lab")
    settings = tmp_path / "settings"
    for name, values in LAB_SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(values))
    port = free_port()
    log = tmp_path / "lab.log"
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTER_CONFIG_DIR=str(tmp_path / "config"))
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
               "--ServerApp.token=", "--ServerApp.password=", "--allow-root", f"--ServerApp.root_dir={REPO}",
               "--ServerApp.disable_check_xsrf=True",  # lets the tests shut kernels down over the REST API
               f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    with open(log, "w") as log_file:
        # Its own session, so stopping it can reach the kernels it started and nothing else.
        server = subprocess.Popen(command, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}/"
        wait_for_http(base + "api/status", server, log)
        yield base
    finally:
        server.send_signal(signal.SIGTERM)  # the server shuts its kernels down on SIGTERM
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        try:
            os.killpg(server.pid, signal.SIGKILL)  # any kernel left behind in the server's session
        except ProcessLookupError:
            pass


# The execution prompts ("[ ]:", "[*]:", "[3]:") of the code cells whose code is in view: a folded cell (an
# exercise's solution) shows a placeholder instead, and its prompt stays blank while it runs.
PROMPTS_JS = """() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')]
  .filter(c => !c.querySelector('.jp-InputPlaceholder'))
  .map(c => (c.querySelector('.jp-InputPrompt') || {textContent: ''}).textContent.trim())"""
ERROR_OUTPUTS_JS = """() => [...document.querySelectorAll(
  '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
  .map(o => o.innerText).filter(t => /Traceback|\\w*Error\\b/.test(t))"""


def kernels(base: str) -> list[dict]:
    with urllib.request.urlopen(base + "api/kernels", timeout=5) as response:
        return json.load(response)


def kernels_idle(base: str) -> bool:
    """True when the server runs exactly one kernel and it is idle (started and ready)."""
    running = kernels(base)
    return len(running) == 1 and running[0]["execution_state"] == "idle"


def wait_for_idle_kernel(base: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not kernels_idle(base):
        if time.monotonic() > deadline:
            pytest.fail(f"no single idle kernel after {timeout} s: {kernels(base)}")
        time.sleep(0.5)


def open_in_lab(page, base: str, notebook: str) -> None:
    """Open a notebook in JupyterLab and keep the kernel it proposes (the venv's Python 3), as a learner does;
    returns once that kernel is idle."""
    page.goto(f"{base}lab/tree/{notebook}")
    page.wait_for_selector(".jp-Notebook .jp-CodeCell")
    select = page.locator(".jp-Dialog", has_text="Select Kernel").locator("button", has_text="Select")
    deadline = time.monotonic() + 60
    while not kernels_idle(base) and time.monotonic() < deadline:
        if select.count():
            select.click()
        page.wait_for_timeout(300)
    wait_for_idle_kernel(base)


def menu(page, top: str, item: str) -> None:
    """Click a JupyterLab menu entry, e.g. Run > Run All Cells."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{re.escape(top)}$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{re.escape(item)}$")).click()


def patch_slider(page):
    """The patch-size explorer's slider (an ipywidgets SelectionSlider labelled "patch size")."""
    label = page.locator(".widget-label", has_text="patch size")
    return page.locator(".jp-Notebook .widget-slider", has=label).first


def explorer_state(page) -> tuple[int, str, str]:
    """(patch size on the explorer's slider readout, text of its info line, address of its picture)."""
    label = page.locator(".widget-label", has_text="patch size")
    explorer = page.locator(".jp-Notebook .widget-vbox", has=page.locator(".widget-slider", has=label)).last
    readout = patch_slider(page).locator(".widget-readout").inner_text().strip()
    picture = explorer.locator("img").first.get_attribute("src") or ""
    info = explorer.locator(".widget-html:not(:has(.tinyvit-live-note))").first  # not the book-only note
    return int(readout), info.inner_text(), picture


def test_notebook_runs_in_jupyterlab_and_the_patch_explorer_responds(lab):
    wait_for_no_kernel(lab)  # a kernel left by another test would confuse the idle checks
    saved = (REPO / NOTEBOOK).read_bytes()
    with chromium() as browser:
        page, log = local_only_page(browser, lab, viewport=(1400, 1000))
        page.set_default_timeout(30_000)
        try:
            open_in_lab(page, lab, NOTEBOOK)

            # The saved notebook already shows execution counts: clear them here (not on disk) first.
            menu(page, "Edit", "Clear Outputs of All Cells")
            try:
                page.wait_for_function(f"() => ({PROMPTS_JS})().every(p => p === '[ ]:')")
            except Exception:  # noqa: BLE001 - reported with the prompts the page shows
                pytest.fail(f"execution counts still shown after clearing: {page.evaluate(PROMPTS_JS)}")
            menu(page, "Run", "Run All Cells")

            # Done when every code cell shows an execution count ("[*]" is running, "[ ]" has not run), or
            # when a cell failed (Run All stops there).
            page.wait_for_function(f"""() => {{
                const prompts = ({PROMPTS_JS})();
                const finished = prompts.length > 0 && prompts.every(p => /^\\[\\d+\\]:$/.test(p));
                return finished || ({ERROR_OUTPUTS_JS})().length > 0;
            }}""", timeout=240_000)
            assert page.evaluate(ERROR_OUTPUTS_JS) == []
            prompts = page.evaluate(PROMPTS_JS)
            counts = [int(p.strip("[]:")) for p in prompts]
            assert counts == sorted(counts) and len(set(counts)) == len(counts), f"cells ran out of order: {prompts}"

            # The explorer renders live (a kernel-backed widget) at the chapter's patch size; the note that
            # only the static book shows ("Live in JupyterLab: ...") is in the page but takes no room here.
            patch, info, picture = explorer_state(page)
            assert patch == 16 and "197 tokens" in info, info
            notes = page.locator(".jp-Notebook .tinyvit-live-note")
            assert notes.count() >= 1 and not any(note.is_visible() for note in notes.all())

            # Move the slider one step with the keyboard, as a learner might; the kernel recomputes the text.
            patch_slider(page).locator(".noUi-handle").focus()
            page.keyboard.press("ArrowRight")
            page.wait_for_function("""() => [...document.querySelectorAll('.jp-Notebook .widget-html')]
                .some(e => e.innerText.includes('tokens') && !e.innerText.includes('197 tokens'))""", timeout=30_000)
            wait_for_idle_kernel(lab)  # the picture is redrawn after the text
            new_patch, new_info, new_picture = explorer_state(page)
            tokens = (IMAGE_SIZE // new_patch) ** 2 + 1
            assert new_patch > patch and f"{tokens:,} tokens" in new_info, (new_patch, new_info)
            assert new_picture != picture, "the patch grid picture was not redrawn"
        finally:
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))
            page.close()
    assert log.problems() == [], "\n".join(log.problems())
    assert (REPO / NOTEBOOK).read_bytes() == saved, "running the notebook in JupyterLab changed the committed file"


def wait_for_no_kernel(base: str, timeout: float = 60) -> None:
    """Shut down every kernel of the server, again until none is left (one still starting may refuse)."""
    deadline = time.monotonic() + timeout
    while running := kernels(base):
        if time.monotonic() > deadline:
            pytest.fail(f"kernels still running after {timeout} s: {running}")
        for kernel in running:
            request = urllib.request.Request(f"{base}api/kernels/{kernel['id']}", method="DELETE")
            with contextlib.suppress(urllib.error.HTTPError):  # 404: stopped already; 500: still starting
                urllib.request.urlopen(request, timeout=10).close()
        time.sleep(0.5)


def solution_notebooks() -> dict[str, list[int]]:
    """notebooks/NN_*.ipynb -> the indices of its exercise solution cells (tag `solution`)."""
    found = {}
    for path in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        indices = [i for i, cell in enumerate(cells) if "solution" in cell.metadata.get("tags", [])]
        if indices:
            found[str(path.relative_to(REPO))] = indices
    return found


CELLS_JS = """() => [...document.querySelectorAll('.jp-Notebook .jp-Cell')].map(cell => {
  const editor = cell.querySelector('.jp-InputArea-editor');
  const placeholder = cell.querySelector('.jp-InputPlaceholder');
  return {editor: !!editor && editor.checkVisibility(), placeholder: !!placeholder && placeholder.checkVisibility(),
          text: (cell.querySelector('.jp-Cell-inputWrapper') || cell).innerText};
})"""


def test_solutions_are_folded_in_jupyterlab(lab):
    """Opened as a learner opens it, each notebook shows its solution cells folded (jupyter.source_hidden): a
    placeholder bar where the code would be, the code itself out of view; a click on the bar unfolds it."""
    notebooks = solution_notebooks()
    assert notebooks, "no notebook has a solution cell (tag 'solution'); notebook 1's exercises should"
    with chromium() as browser:
        for notebook, indices in notebooks.items():
            cells = nbformat.read(REPO / notebook, as_version=4).cells
            page, log = local_only_page(browser, lab, viewport=(1280, 800))
            page.set_default_timeout(30_000)
            try:
                page.goto(f"{lab}lab/tree/{notebook}?reset")  # ?reset: only this notebook open, not the last ones
                try:
                    page.wait_for_function(f"() => document.querySelectorAll('.jp-Notebook .jp-Cell').length "
                                           f"=== {len(cells)}")
                except Exception:  # noqa: BLE001 - reported with what the page shows instead
                    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(SCREENSHOT.with_name("jupyterlab_solutions.png")))
                    count = page.evaluate("() => document.querySelectorAll('.jp-Notebook .jp-Cell').length")
                    pytest.fail(f"{notebook}: JupyterLab shows {count} cells, the file has {len(cells)}")
                shown = page.evaluate(CELLS_JS)
                for index in indices:
                    # JupyterLab's placeholder previews a folded cell's first line; the rest stays out of view.
                    lines = [line.strip() for line in cells[index].source.splitlines() if line.strip()]
                    assert shown[index]["placeholder"] and not shown[index]["editor"], (
                        f"{notebook}: solution cell {index} is not folded: {lines[0]!r}")
                    assert len(lines) < 2 or lines[-1] not in shown[index]["text"], (
                        f"{notebook}: solution cell {index} shows its code")
                exercise = next((i for i, c in enumerate(cells) if "exercise" in c.metadata.get("tags", [])), None)
                if exercise is not None:  # the learner's own cell stays open
                    assert shown[exercise]["editor"], f"{notebook}: exercise cell {exercise} is folded"
                # One click on the placeholder unfolds a solution, as a learner who wants it would.
                cell = page.locator(".jp-Notebook .jp-Cell").nth(indices[0])
                cell.locator(".jp-InputPlaceholder").click()
                cell.locator(".jp-InputArea-editor").wait_for(state="visible")
            finally:
                page.close()
            wait_for_no_kernel(lab)
            assert log.page_errors == [], f"{notebook}: {log.page_errors}"
            assert log.blocked == [], f"{notebook}: requests outside JupyterLab: {log.blocked}"
