"""Every admin page, as every role, in Debian's Chromium: it loads without console errors or failed
requests, its controls are labelled, and a role without the page's permission neither sees its link
nor reaches it. The admin's views are written to docs/screenshots/ (linked from the README)."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser

from usertrail.access.permissions import ROLES

from admin_pages import PAGES, SCREENSHOTS, Watcher, demo_server, signed_in, unlabelled_controls
from browser import PageServer
from conftest import LiveServer


@pytest.fixture
def live(make_server) -> LiveServer:
    return demo_server(make_server)


# The pages read through the same stores the API tests run on both engines; one engine suffices here.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_page_for_every_role(live: LiveServer, browser: Browser):
    pid = live.project.project.id
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for role, permissions in ROLES.items():
        context = signed_in(browser, live, role)
        watcher = Watcher(origin=live.base_url)
        page = watcher.attach(context.new_page())
        page.goto(f"{live.base_url}/app")
        landed = page.url
        assert f"/app/projects/{pid}/" in landed, (role, landed)
        nav_links = page.eval_on_selector_all("header nav a", "els => els.map(e => e.getAttribute('href'))")
        for spec in PAGES:
            url = f"{live.base_url}/app/projects/{pid}/{spec.path_on(live)}"
            href = f"/app/projects/{pid}/{spec.path_on(live)}"
            if spec.permission not in permissions:
                assert href not in nav_links, (role, spec.key)
                answer = page.goto(url)
                assert answer is not None and answer.status == 403, (role, spec.key)
                continue
            if spec.nav:
                assert href in nav_links, (role, spec.key, nav_links)
            watcher.problems.clear()
            answer = page.goto(url)
            assert answer is not None and answer.status == 200, (role, spec.key, answer and answer.status)
            page.wait_for_selector(spec.ready, state="attached")
            watcher.settle(page)
            assert watcher.problems == [], (role, spec.key, watcher.problems)
            assert unlabelled_controls(page) == [], (role, spec.key)
            for selector, permission in spec.actions.items():
                shown = page.locator(selector).count() > 0
                assert shown == (permission in permissions), (role, spec.key, selector, permission)
            if role == "admin" and spec.screenshot:
                page.screenshot(path=str(SCREENSHOTS / f"{spec.key}.png"), full_page=False)
        context.close()


def test_the_watcher_reports_requests_to_other_origins(browser: Browser):
    """The sweep's "no third-party requests": a page of one origin loading an image from another is reported."""
    with PageServer() as site, PageServer() as elsewhere:
        site.pages["/page"] = f'<title>page</title><img src="{elsewhere.url("/pixel.png")}" alt="">'
        watcher = Watcher()
        page = watcher.attach(browser.new_page())
        page.goto(site.url("/page"))
        watcher.settle(page)
        page.close()
    assert watcher.origin == site.origin
    assert f"third-party request: {elsewhere.url('/pixel.png')}" in watcher.problems
    assert not [p for p in watcher.problems if p.startswith("third-party") and site.origin in p]
