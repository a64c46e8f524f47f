"""Helpers shared by the browser tests (test_book.py, test_lab.py): free ports, a local static server,
Debian's Chromium driven by Playwright, and a page that may only talk to one local origin."""
from __future__ import annotations

import atexit
import contextlib
import functools
import http.server
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; never a browser downloaded by `playwright install`
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass


@contextlib.contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """Serve `root` over http on a free local port; yields the base URL (ending in '/'), stops on exit."""
    if not (root / "index.html").is_file():
        raise FileNotFoundError(f"expected a built site with index.html in {root}, found none")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


_PLAYWRIGHT = None  # one Playwright per test process: its sync API cannot be started twice at once


def _playwright():
    """The process's Playwright, started on first use and stopped when the process exits. Tests in several
    modules (a module's browser fixture still open while another test starts Chromium) share it."""
    global _PLAYWRIGHT
    if _PLAYWRIGHT is None:
        from playwright.sync_api import sync_playwright

        _PLAYWRIGHT = sync_playwright().start()
        atexit.register(_PLAYWRIGHT.stop)
    return _PLAYWRIGHT


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """A headless Chromium (the system one) under Playwright; fails the test with the fix if it is missing."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"browser tests need Chromium at {CHROMIUM}: run `apt-get install -y chromium`")
    browser = _playwright().chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
    try:
        yield browser
    finally:
        browser.close()


@dataclass
class PageLog:
    """What a page did besides rendering: console errors, uncaught exceptions, failed and blocked requests."""
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_responses: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        return ([f"console error: {m}" for m in self.console_errors]
                + [f"uncaught exception: {m}" for m in self.page_errors]
                + [f"HTTP error: {m}" for m in self.failed_responses]
                + [f"request outside the book (blocked): {m}" for m in self.blocked])


def local_only_page(browser, origin: str, viewport=(1280, 900)) -> tuple[object, PageLog]:
    """A new page whose requests outside `origin` (e.g. 'http://127.0.0.1:PORT/') are aborted and logged.

    Only http(s) requests pass through Playwright's router; data: URLs never leave the page."""
    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    log = PageLog()

    def route(route):
        url = route.request.url
        if url.startswith(origin):
            route.continue_()
        else:
            log.blocked.append(url)
            route.abort()

    page.route("**/*", route)
    page.on("console", lambda msg: msg.type == "error" and log.console_errors.append(
        f"{msg.text} ({msg.location.get('url', '?')})"))
    page.on("pageerror", lambda err: log.page_errors.append(str(err)))
    page.on("response", lambda resp: resp.status >= 400 and log.failed_responses.append(
        f"{resp.status} {resp.url}"))
    return page, log
