"""The replay page in a real Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from usertrail.testing.recordings import synthetic_recording

from browser import chromium
from conftest import CHROME_UA, LiveServer
from replay_helpers import PASSWORD, add_account, store_recording

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

HOUR_MS = 3_600_000
T0 = 1_800_000_000_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium(CHROME_UA) as launched:
        yield launched


@pytest.fixture
def live(make_server) -> LiveServer:
    return make_server(playback_chunk_interval_ms=HOUR_MS)


def signed_in(browser: Browser, live: LiveServer, email: str, **options) -> BrowserContext:
    context = browser.new_context(user_agent=CHROME_UA, viewport={"width": 1400, "height": 1000}, **options)
    answer = context.request.post(f"{live.base_url}/api/auth/login", data={"email": email, "password": PASSWORD})
    assert answer.status == 200, answer.text()
    return context


def test_smoke(live, browser):
    add_account(live, "vic@example.com", "viewer")
    rid = store_recording(live, synthetic_recording(T0, 1.0, pages=2, cards=12))
    context = signed_in(browser, live, "vic@example.com")
    page = context.new_page()
    messages = []
    page.on("console", lambda m: messages.append(m.text))
    page.goto(f"{live.base_url}/app/projects/{live.project.project.id}/recordings/{rid}")
    page.on("pageerror", lambda e: messages.append("PAGEERROR " + str(e)))
    for f in ("frameattached",):
        page.on(f, lambda fr: messages.append("frame " + fr.url))
    try:
        page.wait_for_selector("#replay[data-first-frame-ms]", timeout=8000, state="attached")
    except Exception:
        print("STATUS", page.text_content("#status"), messages)
        page.screenshot(path="/tmp/replay-smoke.png")
        raise
    print(page.get_attribute("#replay", "data-first-frame-ms"), page.get_attribute("#replay", "data-markers"))
    print(messages)
    page.screenshot(path="/tmp/replay-smoke.png")
    context.close()
