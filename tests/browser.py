"""Helpers for real-browser tests: Debian's Chromium driven by Playwright, and a page server on another origin."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

# Debian's package (`apt-get install chromium`, done by scripts/test): Playwright's own browser
# download (`playwright install`) cannot reach its host from here.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

T = TypeVar("T")


@contextmanager
def chromium(user_agent: str) -> Iterator[Browser]:
    """A headless Chromium that calls itself `user_agent`; fails (never skips) when it is missing.

    The User-Agent is set for the whole browser, not only per context: requests that outlive their page
    (navigator.sendBeacon on pagehide) carry the browser's own header, and "HeadlessChrome" is dropped
    by the server as a bot.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is not installed: run `.venv/bin/pip install -e '.[test]'` (or scripts/test)")
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: run `apt-get install chromium` (or scripts/test)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=[*CHROMIUM_ARGS, f"--user-agent={user_agent}"]
        )
        try:
            yield browser
        finally:
            browser.close()


class PageServer:
    """Serves HTML pages from memory on 127.0.0.1, on a port (so an origin) of its own, in a thread."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        self.requested: list[str] = []  # every path asked for, in order
        pages, requested = self.pages, self.requested

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requested.append(self.path)
                html = pages.get(self.path.split("?", 1)[0])
                body = (html if html is not None else "<title>Not found</title>").encode()
                self.send_response(200 if html is not None else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def url(self, path: str) -> str:
        return self.origin + path

    def __enter__(self) -> PageServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def poll(
    check: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    sleep: Callable[[float], object] = time.sleep,
) -> T:
    """Call `check` until it returns something truthy or `timeout` seconds passed; return its last value.

    Pass `sleep=lambda s: page.wait_for_timeout(s * 1000)` when `check` reads what Playwright event
    listeners collect: they only run while Playwright's own calls wait.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        sleep(interval)


def wait_until(
    check: Callable[[], T],
    what: str,
    timeout: float = 10.0,
    interval: float = 0.05,
    sleep: Callable[[float], object] = time.sleep,
) -> T:
    """Like `poll`, but the test fails, saying what it waited for, when `check` never became truthy."""
    value = poll(check, timeout, interval, sleep)
    if not value:
        pytest.fail(f"timed out after {timeout:g} s waiting for {what}; last value: {value!r}")
    return value
