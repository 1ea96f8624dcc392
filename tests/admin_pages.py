"""The admin app's pages as the browser tests see them: which pages exist, who may open them, and the
watcher that fails a page on any console error or failed request.

Each section of the app adds its pages to PAGES; test_admin_pages_browser.py then opens every page as
every role, checks the page's ready marker, its labels, that roles without the permission neither see
the link nor reach the page, and writes the screenshots in docs/screenshots/.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

from playwright.sync_api import Browser, BrowserContext, Page, Request, Response

from usertrail import demo
from usertrail.project_settings import UuidSettings
from usertrail.sessions.processor import SessionProcessor
from usertrail.testing.recordings import synthetic_recording

from conftest import CHROME_UA, LiveServer
from replay_helpers import PASSWORD, add_account, store_recording

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
    # In-page actions: selector -> the permission it needs. Roles holding it see the element, the others do not.
    actions: Mapping[str, str] = field(default_factory=dict)

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


def demo_recording_path(live: LiveServer) -> str:
    """`recordings/<id>` of a recording of the demo's most recently seen end user, stored on first use."""
    rid = live.scalar("SELECT recording_id FROM playback_recordings ORDER BY started_at, recording_id LIMIT 1")
    if rid is None:
        key = live.scalar("SELECT user_key FROM end_users ORDER BY last_seen DESC, user_key LIMIT 1")
        rid = store_recording(
            live,
            synthetic_recording(int(time.time() * 1000), 0.2, cards=2),
            "anon-demo",
            user_id=key.removeprefix("u:"),
        )
    return f"recordings/{rid}"


SETTINGS = "settings.manage"
PAGES: list[AppPage] = [
    AppPage("overview", "overview", "project.view", "#top-pages", actions={"#rejected-link": SETTINGS}),
    AppPage("rejected", "rejected", SETTINGS, "#rejected", nav=False),
    AppPage("recording", "recordings/{id}", "playback.view", "#replay[data-loaded]", nav=False,
            screenshot=False, locate=demo_recording_path,
            actions={"#export": "playback.export", "#delete-recording": "playback.delete"}),
    AppPage("recordings", "recordings", "playback.view", "#recordings", actions={"#quota-form": SETTINGS}),
    AppPage("segments", "segments", "users.view", "#segments", actions={"#new-segment": "segments.manage"}),
    AppPage("segment-new", "segments/new", "segments.manage", "#segment-editor[data-preview-state=counted]", nav=False),
    # Ready once the members are listed and the live count has answered (it is asked 350 ms after loading).
    AppPage("segment", "segments/{id}", "users.view",
            "body:has(#segment-editor[data-preview-state=counted]) #members tbody tr", nav=False, locate=first_segment,
            actions={"#save": "segments.manage", "#delete": "segments.manage"}),
    AppPage("reports", "reports", "users.view", "#items"),
    AppPage("integrations", "integrations", "integrations.manage", "body[data-ready] #jobs"),
    AppPage("integrations-clients", "integrations/api-clients", "integrations.manage", "body[data-ready]", nav=False),
    AppPage("integrations-s3", "integrations/s3", "integrations.manage", "body[data-ready] #s3-sources", nav=False),
    AppPage("integrations-salesforce", "integrations/salesforce", "integrations.manage", "body[data-ready]", nav=False),
    AppPage("integrations-scim", "integrations/scim", "integrations.manage", "body[data-ready] #scim", nav=False),
    AppPage("integrations-log", "integrations/log", "integrations.manage", "#log", nav=False),
    AppPage("attributes", "attributes", "users.view", "#attributes", nav=False,
            actions={"nav.tabs[aria-label=Integrations]": "integrations.manage"}),
    AppPage("activity", "activity", "audit.view", "#chain[data-ok]"),
    AppPage("activity-audit", "activity/audit", "audit.view", "#audit", nav=False),
    AppPage("settings", "settings", "project.view", "#settings-form",
            actions={"#save-settings": SETTINGS, "#quota-form": SETTINGS, "#save-retention": SETTINGS,
                     "#members": "accounts.manage"}),
    AppPage("install", "install", "project.view", "#keys", actions={"#rotate-button": SETTINGS}),
    AppPage("users", "users", "users.view", "#users", actions={"#export-csv": "users.export"}),
    AppPage("user", "users/{key}", "users.view", "#user-segments[data-loaded]", nav=False, locate=demo_user_path,
            actions={"#export-user": "users.export", "#erase-user": "users.erase", "#erase-dialog": "users.erase"}),
]  # fmt: skip


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
    """Collects what must not happen on an app page: console errors, page errors, failed requests, and
    requests to any origin but the server's (pages work without third-party requests)."""

    problems: list[str] = field(default_factory=list)
    in_flight: set[object] = field(default_factory=set)
    origin: str | None = None  # the server's; None: the origin of the first page opened
    no_store: dict[Request, bool] = field(default_factory=dict)  # answered with Cache-Control: no-store
    navigations: int = 0  # main-frame navigations started so far
    started_at: dict[Request, int] = field(default_factory=dict)  # request → navigations when it started

    def attach(self, page: Page) -> Page:
        page.on("request", self._request)
        page.on("requestfinished", self._finished)
        page.on("console", lambda m: self.problems.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)
        return page

    def _request(self, request: Request) -> None:
        self.in_flight.add(request)
        if request.is_navigation_request() and request.frame.parent_frame is None:
            self.navigations += 1
        self.started_at[request] = self.navigations
        url = urlsplit(request.url)
        if url.scheme not in ("http", "https", "ws", "wss"):
            return  # data:, blob:, about:srcdoc: nothing leaves the browser
        origin = f"{url.scheme}://{url.netloc}"
        if self.origin is None and request.is_navigation_request():
            self.origin = origin
        elif origin != self.origin:
            self.problems.append(f"third-party request: {request.url}")

    def _failed(self, request: Request) -> None:
        self.in_flight.discard(request)
        # Chromium reports a `Cache-Control: no-store` answer that a script read to its end through
        # `response.body.getReader()` (the player's recording stream) as ERR_ABORTED, after the 200 and
        # the whole body. The player marks its page ready only once it has the whole stream.
        if self.no_store.pop(request, False) and request.failure == "net::ERR_ABORTED":
            return
        # A fetch still open when the page is left is cancelled by the browser, as for any user who
        # clicks on before a page has finished loading: not a fault of the page.
        if request.failure == "net::ERR_ABORTED" and self.started_at.pop(request, self.navigations) < self.navigations:
            return
        self.problems.append(f"failed: {request.url} {request.failure}")

    def _finished(self, request: Request) -> None:
        self.in_flight.discard(request)
        self.no_store.pop(request, None)
        self.started_at.pop(request, None)

    def _response(self, response: Response) -> None:
        if response.status >= 400:
            self.problems.append(f"HTTP {response.status}: {response.url}")
        elif "no-store" in response.headers.get("cache-control", ""):
            self.no_store[response.request] = True

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
