"""The admin app's pages as the browser tests see them: which pages exist, who may open them, and the
watcher that fails a page on any console error or failed request.

Each section of the app adds its pages to PAGES; test_admin_pages_browser.py then opens every page as
every role, checks the page's ready marker, its labels, that roles without the permission neither see
the link nor reach the page, and writes the screenshots in docs/screenshots/.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from playwright.sync_api import Browser, BrowserContext, Page

from usertrail import demo
from usertrail.project_settings import UuidSettings
from usertrail.sessions.processor import SessionProcessor

from conftest import CHROME_UA, LiveServer
from replay_helpers import PASSWORD, add_account

SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
ROLE_EMAILS = {"admin": "ada@example.com", "analyst": "ann@example.com", "viewer": "vic@example.com"}


@dataclass(frozen=True)
class AppPage:
    """One page: its path under `/app/projects/{id}/`, the permission it needs and a selector that is
    present once the page is ready (its data shown, its script done)."""

    key: str
    path: str
    permission: str
    ready: str
    nav: bool = True  # reached from the navigation (not a detail page)
    screenshot: bool = True
    locate: Callable[[LiveServer], str] | None = None  # the path of a page that needs an id from the demo data

    def path_on(self, live: LiveServer) -> str:
        """The page's path under `/app/projects/{id}/` on this server."""
        return self.locate(live) if self.locate else self.path


def first_segment(live: LiveServer) -> str:
    """The demo's saved segment, as the segment editor's path."""
    return f"segments/{live.app.state.segments.list(live.project.project.id)[0].id}"


def demo_user_path(live: LiveServer) -> str:
    """`users/<key>` of the demo's most recently seen end user."""
    key = live.scalar("SELECT user_key FROM end_users ORDER BY last_seen DESC, user_key LIMIT 1")
    return f"users/{quote(key, safe='')}"


PAGES: list[AppPage] = [
    AppPage("overview", "overview", "project.view", "#top-pages"),
    AppPage("rejected", "rejected", "settings.manage", "#rejected", nav=False),
    AppPage("recordings", "recordings", "playback.view", "#recordings"),
    AppPage("segments", "segments", "users.view", "#segments"),
    AppPage("segment-new", "segments/new", "segments.manage", "#segment-editor[data-preview-state=counted]", nav=False),
    AppPage("segment", "segments/{id}", "users.view", "#members tbody tr", nav=False, locate=first_segment),
    AppPage("reports", "reports", "users.view", "#items"),
    AppPage("integrations", "integrations", "integrations.manage", "body[data-ready] #jobs"),
    AppPage("integrations-clients", "integrations/api-clients", "integrations.manage", "body[data-ready]", nav=False),
    AppPage("integrations-s3", "integrations/s3", "integrations.manage", "body[data-ready] #s3-sources", nav=False),
    AppPage("integrations-salesforce", "integrations/salesforce", "integrations.manage", "body[data-ready]", nav=False),
    AppPage("integrations-scim", "integrations/scim", "integrations.manage", "body[data-ready] #scim", nav=False),
    AppPage("integrations-log", "integrations/log", "integrations.manage", "#log", nav=False),
    AppPage("attributes", "attributes", "users.view", "#attributes", nav=False),
    AppPage("activity", "activity", "audit.view", "#chain[data-ok]"),
    AppPage("activity-audit", "activity/audit", "audit.view", "#audit", nav=False),
    AppPage("settings", "settings", "project.view", "#settings-form"),
    AppPage("install", "install", "project.view", "#keys"),
    AppPage("users", "users", "users.view", "#users"),
    AppPage("user", "users/{key}", "users.view", "#user-segments[data-loaded]", nav=False, locate=demo_user_path),
]


def demo_server(make_server, users: int = 40, weeks: int = 3) -> LiveServer:
    """A server filled like `usertrail serve --demo` (smaller), sessions closed, one account per role."""
    live = make_server(trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),), process_sessions=False)
    pid = live.project.project.id
    production = live.projects.environments(pid)["production"]
    production.uuid = UuidSettings(provider="variable", source="currentUser.id")
    live.projects.save_environment(pid, "production", production)
    totals = demo.send(live.base_url, live.project.write_key, users=users, weeks=weeks, seed=11)
    assert totals["failed_requests"] == 0, totals
    SessionProcessor(live.engine).run(now=int(time.time() * 1000), max_rounds=1000)
    for role, email in ROLE_EMAILS.items():
        add_account(live, email, role)
    with live.admin() as admin:
        frequent = {"match": "all", "rules": [{"attribute": "Total sessions", "operator": "gte", "value": 3}]}
        answer = admin.post(f"/api/projects/{pid}/segments", json={"name": "Frequent visitors", "rules": frequent})
    assert answer.status_code == 201, answer.text
    return live


@dataclass
class Watcher:
    """Collects what must not happen on an app page: console errors, page errors, failed requests."""

    problems: list[str] = field(default_factory=list)
    in_flight: set[object] = field(default_factory=set)

    def attach(self, page: Page) -> Page:
        page.on("request", lambda r: self.in_flight.add(r))
        page.on("requestfinished", lambda r: self.in_flight.discard(r))
        page.on("requestfailed", lambda r: self.in_flight.discard(r))
        page.on("console", lambda m: self.problems.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: self.problems.append(f"failed: {r.url} {r.failure}"))
        page.on(
            "response",
            lambda r: self.problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None,
        )
        return page

    def settle(self, page: Page, timeout_s: float = 30.0) -> None:
        """Wait for the page's load event and until none of its requests is still open: what
        `networkidle` checks, without its fixed 500 ms of silence per page."""
        page.wait_for_load_state("load")
        deadline = time.monotonic() + timeout_s
        while self.in_flight:
            assert time.monotonic() < deadline, f"requests still open: {[r.url for r in self.in_flight]}"
            page.wait_for_timeout(10)


def signed_in(browser: Browser, live: LiveServer, role: str) -> BrowserContext:
    """A browser context signed in as the account holding `role` on the live server's project."""
    context = browser.new_context(user_agent=CHROME_UA, viewport={"width": 1400, "height": 900})
    answer = context.request.post(
        f"{live.base_url}/api/auth/login", data={"email": ROLE_EMAILS[role], "password": PASSWORD}
    )
    assert answer.status == 200, answer.text()
    return context


def unlabelled_controls(page: Page) -> list[str]:
    """Form controls with no accessible name (no <label>, aria-label or aria-labelledby)."""
    return page.evaluate(
        """() => Array.from(document.querySelectorAll('input, select, textarea, button'))
            .filter(el => el.type !== 'hidden' && !el.closest('[hidden]'))
            .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                          && !el.getAttribute('aria-labelledby') && !(el.tagName === 'BUTTON' && el.textContent.trim())
                          && !(el.type === 'submit' && el.value))
            .map(el => el.outerHTML.slice(0, 120))"""
    )


def light_server(make_server, **settings) -> LiveServer:
    """A server for flow tests that need no demo traffic: UUID settings on, one account per role."""
    live = make_server(trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),), **settings)
    pid = live.project.project.id
    production = live.projects.environments(pid)["production"]
    production.uuid = UuidSettings(provider="variable", source="currentUser.id")
    live.projects.save_environment(pid, "production", production)
    for role, email in ROLE_EMAILS.items():
        add_account(live, email, role)
    return live
