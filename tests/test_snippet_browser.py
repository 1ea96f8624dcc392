"""The browser snippet (`/snippet.js`) in a real Chromium, on a customer page served from another origin.

Each page's clock is paused (Playwright's fake timers): the snippet's 2 s flush timer and its retries fire
only when a test advances time, so which request carries an event never depends on the machine's speed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from usertrail.collect.service import CollectError, CollectResult, RequestFacts
from usertrail.web.snippet import snippet_tag

from browser import poll, wait_until
from conftest import LiveServer
from samples import now_ms, walkme_body, walkme_event

if TYPE_CHECKING:
    from playwright.sync_api import Page, Route

# The storage engines are covered elsewhere: here the browser, the snippet and the wire are under test.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

EVENT_COLUMNS = "type, name, url_path, title, browser, session_hint, anon_id, user_key, user_id, id_source, payload"
BUY_BUTTON = """<button id="buy" onclick="usertrail.track('Clicked buy', {plan: 'pro'})">Buy</button>"""

# Records every navigator.sendBeacon call in the page origin's localStorage, which outlives the page.
RECORD_BEACONS = """
(() => {
  const send = navigator.sendBeacon.bind(navigator);
  navigator.sendBeacon = (url, data) => {
    const ok = send(url, data);
    const log = JSON.parse(localStorage.getItem("test_beacons") || "[]");
    log.push({ url: String(url), type: data && data.type, ok: ok });
    localStorage.setItem("test_beacons", JSON.stringify(log));
    return ok;
  };
})();
"""

# Counts the batches the page starts and the answers it has handled (after the snippet's own `.then` ran).
COUNT_BATCH_FETCHES = """
(() => {
  window.__batches = { started: 0, settled: 0 };
  const realFetch = window.fetch;
  window.fetch = function (url) {
    const response = realFetch.apply(this, arguments);
    if (String(url).includes("/v1/batch")) {
      window.__batches.started += 1;
      const settled = () => queueMicrotask(() => { window.__batches.settled += 1; });
      response.then(settled, settled);
    }
    return response;
  };
})();
"""


def configure(live: LiveServer, settings: dict) -> None:
    """Change the production environment's settings through the admin API, as a customer would."""
    with live.admin() as admin:
        response = admin.patch(f"/api/projects/{live.project.project.id}/environments/production", json=settings)
    assert response.status_code == 200, response.text


def snippet_page(live: LiveServer, title: str, body: str = "", before: str = "") -> str:
    """A customer page with the tag from the project's settings (`before` runs ahead of the snippet)."""
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>{before}'
        f"{snippet_tag(live.base_url, live.project.write_key)}</head><body>{body}</body></html>"
    )


def plain_page(title: str) -> str:
    """A page of the same site without the snippet: nothing on it sends what an earlier page left queued."""
    return f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title></head><body></body></html>'


def events(live: LiveServer) -> list:
    return live.rows(f"SELECT {EVENT_COLUMNS} FROM events ORDER BY ts, event_id")


def at_least(count: int, rows: list) -> list | None:
    return rows if len(rows) >= count else None


def stored(live: LiveServer, count: int, what: str) -> list:
    """Wait until `count` events are stored, and return exactly those."""
    rows = wait_until(lambda: at_least(count, events(live)), what)
    assert len(rows) == count, rows
    return rows


def queued(page: Page, name: str) -> None:
    """Wait until the snippet holds the event `name` in its queue (kept in localStorage until sent)."""
    page.wait_for_function("name => (localStorage.getItem('ut_queue') || '').includes(name)", arg=name)


def pumping(page: Page) -> Callable[[float], None]:
    """A sleep during which Playwright delivers its events (requests, routes) to the test's handlers."""
    return lambda seconds: page.wait_for_timeout(seconds * 1000)


def test_page_views_and_custom_event_in_one_session(live, site, page):
    configure(live, {"allowed_origins": [site.origin]})
    site.pages["/pricing"] = snippet_page(live, "Pricing", BUY_BUTTON + '<a id="next" href="/checkout">Checkout</a>')
    site.pages["/checkout"] = snippet_page(live, "Checkout")
    page.goto(site.url("/pricing"))
    [first] = stored(live, 1, "the page view of /pricing")
    anonymous_id = page.evaluate("usertrail.anonymousId()")
    page.click("#buy")
    queued(page, "Clicked buy")
    page.click("#next")  # leaving the page hands the queued click to navigator.sendBeacon
    page.wait_for_url(site.url("/checkout"))
    rows = stored(live, 3, "the click and the page view of /checkout")

    by_kind = {(r.type, r.name): r for r in rows}
    assert set(by_kind) == {("page", "Pricing"), ("track", "Clicked buy"), ("page", "Checkout")}
    pricing, click, checkout = by_kind["page", "Pricing"], by_kind["track", "Clicked buy"], by_kind["page", "Checkout"]
    assert pricing == first
    assert (pricing.url_path, pricing.title) == ("/pricing", "Pricing")
    assert (click.url_path, click.title) == ("/pricing", "Pricing")
    assert (checkout.url_path, checkout.title) == ("/checkout", "Checkout")
    assert json.loads(click.payload)["properties"] == {"plan": "pro"}
    assert json.loads(checkout.payload)["context"]["page"]["referrer"] == site.url("/pricing")
    assert pricing.session_hint and {r.session_hint for r in rows} == {pricing.session_hint}
    assert {r.anon_id for r in rows} == {anonymous_id}
    # Default UUID settings (WalkMe ID): the visitor is known by the snippet's anonymous id only.
    assert {(r.user_key, r.user_id) for r in rows} == {("a:" + anonymous_id, None)}
    assert {r.browser for r in rows} == {"Chrome"}


@pytest.mark.parametrize("leave", ["navigate", "close"])
def test_queued_event_leaves_with_send_beacon(live, site, context, page, leave):
    configure(live, {"allowed_origins": [site.origin]})
    context.add_init_script(RECORD_BEACONS)
    site.pages["/pricing"] = snippet_page(live, "Pricing", BUY_BUTTON)
    site.pages["/elsewhere"] = plain_page("Elsewhere")
    fetched: list[str] = []
    context.on(
        "request",
        lambda r: fetched.append(r.post_data or "") if r.resource_type == "fetch" and "/v1/batch" in r.url else None,
    )
    page.goto(site.url("/pricing"))
    stored(live, 1, "the page view")
    page.click("#buy")
    queued(page, "Clicked buy")  # the flush timer would send it in 2 s, but the page's clock is paused
    if leave == "navigate":
        page.goto(site.url("/elsewhere"))
        after = page
    else:
        page.close(run_before_unload=True)  # the visitor closes the tab
        after = context.new_page()
        after.goto(site.url("/elsewhere"))
    rows = stored(live, 2, "the click, sent while its page went away")

    click = next(r for r in rows if r.type == "track")
    assert json.loads(click.payload)["properties"] == {"plan": "pro"}
    storage = "[localStorage.getItem('test_beacons'), localStorage.getItem('ut_queue')]"
    beacons, queue = wait_until(lambda: (s := after.evaluate(storage))[0] and s, "the beacon's record")
    assert json.loads(beacons) == [
        {"url": f"{live.base_url}/v1/batch?key={live.project.write_key}", "type": "text/plain", "ok": True}
    ]
    assert json.loads(queue) == []
    # The page view went by fetch; the click by the beacon alone.
    assert len(fetched) == 1 and '"type":"page"' in fetched[0] and "Clicked buy" not in fetched[0]


@dataclass
class Answer:
    status: int
    origin: str | None
    names: list[str]


def spy_on_collector(live: LiveServer, monkeypatch: pytest.MonkeyPatch) -> list[Answer]:
    """Every collection request the server answers, with its status: a refusal leaves no row to wait for."""
    collector = live.app.state.collector
    original = collector.collect
    answers: list[Answer] = []

    async def collect(facts: RequestFacts, wire_format: str) -> CollectResult:
        names = [e.get("event") or e.get("name") for e in json.loads(facts.body).get("batch", [])]
        try:
            result = await original(facts, wire_format)
        except CollectError as exc:
            answers.append(Answer(exc.status, facts.origin, names))
            raise
        answers.append(Answer(400 if result.errors else 200, facts.origin, names))
        return result

    monkeypatch.setattr(collector, "collect", collect)
    return answers


def test_origin_not_allowed_stores_nothing(live, site, page, monkeypatch):
    configure(live, {"allowed_origins": ["https://app.example.com"]})  # not the page's origin
    answers = spy_on_collector(live, monkeypatch)
    site.pages["/pricing"] = snippet_page(live, "Pricing", BUY_BUTTON)
    site.pages["/elsewhere"] = plain_page("Elsewhere")
    failed: list[str] = []
    page.on("requestfailed", lambda r: failed.append(r.url.split("?")[0]))
    page.goto(site.url("/pricing"))
    wait_until(lambda: answers, "the page view to be refused")
    page.click("#buy")  # the snippet keeps working on the page; its events just never get in
    queued(page, "Clicked buy")
    page.goto(site.url("/elsewhere"))  # the beacon carries the queued page view and click
    wait_until(lambda: any("Clicked buy" in a.names for a in answers), "the beacon to be refused")

    assert {(a.status, a.origin) for a in answers} == {(403, site.origin)}
    assert sorted(n for a in answers for n in a.names) == ["Clicked buy", "Pricing", "Pricing"]
    # Without Access-Control-Allow-Origin the page may read neither the settings nor the answer.
    expected = {f"{live.base_url}/v1/config", f"{live.base_url}/v1/batch"}
    wait_until(lambda: set(failed) == expected, "the browser to refuse the answers", sleep=pumping(page))
    assert live.scalar("SELECT count(*) FROM events") == 0
    assert live.scalar("SELECT count(*) FROM rejected_events") == 0
    assert live.scalar("SELECT count(*) FROM drop_counts") == 0
    with live.admin() as admin:
        drops = admin.get(f"/api/projects/{live.project.project.id}/drops").json()
    assert (drops["by_reason"], drops["rejected_pending"]) == ({}, 0)


def test_user_id_read_from_page_variable(live, site, page):
    configure(live, {"allowed_origins": [site.origin], "uuid": {"provider": "variable", "source": "currentUser.id"}})
    signed_in = '<script>window.currentUser = {id: "jane"};</script>'
    site.pages["/pricing"] = snippet_page(live, "Pricing", BUY_BUTTON, before=signed_in)
    site.pages["/elsewhere"] = plain_page("Elsewhere")
    page.goto(site.url("/pricing"))
    stored(live, 1, "the page view")
    page.click("#buy")
    queued(page, "Clicked buy")
    page.goto(site.url("/elsewhere"))
    rows = stored(live, 2, "the click")

    assert sorted(r.type for r in rows) == ["page", "track"]
    assert {(r.user_key, r.user_id, r.id_source) for r in rows} == {("u:jane", "jane", "variable")}
    assert {r.anon_id for r in rows} == {page.evaluate("localStorage.getItem('ut_aid')")}
    with live.admin() as admin:
        timeline = admin.get(f"/api/projects/{live.project.project.id}/users/u:jane/events").json()["events"]
    assert sorted(e["type"] for e in timeline) == ["page", "track"]


def test_title_not_stored_when_title_collection_is_off(live, site, page):
    configure(live, {"allowed_origins": [site.origin], "collect_url": False, "collect_title": False})
    site.pages["/accounts/4711/overdue"] = snippet_page(live, "Overdue invoices of ACME Corp")
    page.goto(site.url("/accounts/4711/overdue"))
    [row] = stored(live, 1, "the page view")

    assert (row.type, row.url_path, row.title) == ("page", None, None)
    assert "4711" not in row.payload
    assert "ACME" not in row.payload and row.name is None


def test_no_event_lost_when_flushes_overlap(live, site, context, page):
    configure(live, {"allowed_origins": [site.origin]})
    context.add_init_script(COUNT_BATCH_FETCHES)
    site.pages["/pricing"] = snippet_page(live, "Pricing", BUY_BUTTON)
    site.pages["/elsewhere"] = plain_page("Elsewhere")
    held: list[Route] = []  # a slow network: each batch waits until the test lets it through, in order
    context.route("**/v1/batch*", lambda route: held.append(route))
    released = 0

    def all_started_are_held() -> None:
        wait_until(lambda: len(held) == page.evaluate("__batches.started"), "batches to be held", sleep=pumping(page))

    def release_next() -> None:
        nonlocal released
        held[released].continue_()
        released += 1
        page.wait_for_function(f"__batches.settled >= {released}")
        all_started_are_held()

    page.goto(site.url("/pricing"))
    page.wait_for_function("window.__batches && __batches.started >= 1")  # the page view is on its way
    all_started_are_held()
    page.click("#buy")
    page.clock.run_for(2000)  # the flush timer fires while the page view is still on its way
    all_started_are_held()
    release_next()  # the page view's answer arrives
    if released < len(held):
        release_next()  # then the timer batch's
    page.evaluate("usertrail.track('Clicked again')")
    while released < len(held):
        release_next()
    context.unroute("**/v1/batch*")
    page.goto(site.url("/elsewhere"))  # whatever is still queued leaves by beacon

    rows = poll(lambda: at_least(3, events(live)), timeout=3) or events(live)
    assert sorted((r.type, r.name) for r in rows) == [
        ("page", "Pricing"),
        ("track", "Clicked again"),
        ("track", "Clicked buy"),
    ]


def test_snippet_asks_which_client_visible_segments_the_user_is_in(live, site, page):
    configure(live, {"allowed_origins": [site.origin], "uuid": {"provider": "variable", "source": "currentUser.id"}})
    start = now_ms() - 3 * 3_600_000  # a closed session, so the user has an End User Object
    body = walkme_body([walkme_event(time=start, wm_euId="ana", wm_euIdSource="Identifier")])
    with live.client() as client:
        assert client.post(f"/event/tell?key={live.project.write_key}", content=body).status_code == 200
    live.app.state.sessions.run(now_ms())
    rules = {"rules": [{"attribute": "Total sessions", "operator": "gte", "value": 1}]}
    with live.admin() as admin:
        base = f"/api/projects/{live.project.project.id}/segments"
        visible = admin.post(base, json={"name": "Returning", "rules": rules, "client_visible": True}).json()
        assert admin.post(base, json={"name": "Internal", "rules": rules}).status_code == 201
    site.pages["/app"] = snippet_page(live, "App", before="<script>window.currentUser = {id: 'ana'};</script>")
    page.goto(site.url("/app"))
    assert page.evaluate("usertrail.segments()") == [{"id": visible["id"], "name": "Returning"}]
