"""The replay page in a real Chromium: a page recorded by the real snippet is replayed as it looked
(screenshots compared), recorded scripts never run and the replay fetches nothing, the controls and the
timeline work, the export plays offline, and who may see what.

Chunks leave the recorded page only when the test says so (`usertrail.flush()`); the chunk timer is an
hour. A moment to compare is taken only once the recording provably holds everything before it (the
test waits until the server has the events), so no test depends on the machine's speed.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PIL import Image, ImageChops

from usertrail.testing.recordings import synthetic_recording
from usertrail.web.snippet import snippet_tag

from browser import PageServer, wait_until
from conftest import CHROME_UA, LiveServer
from playback_helpers import configure, recording_events
from replay_helpers import PASSWORD, add_account, store_recording
from samples import walkme_body, walkme_event

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

HOUR_MS = 3_600_000
VIEWPORT = {"width": 1000, "height": 700}
# A pixel differs when a channel differs by more than this (of 255): rendering the same DOM twice gives
# identical pixels here, so this only forgives anti-aliasing, should the replay iframe be composited apart.
CHANNEL_TOLERANCE = 40
# The share of differing pixels allowed between the page and its replay. What legitimately differs is
# rrweb's mouse cursor drawn over the replay (a 20×20 px dot: 0.06 % of 1000×700) and the text caret.
# Two moments of the same page differ by several percent (checked below), so 1 % still tells them apart.
MAX_DIFFERING = 0.01


@pytest.fixture
def live(make_server) -> LiveServer:
    server = make_server(playback_chunk_interval_ms=HOUR_MS)
    add_account(server, "vic@example.com", "viewer")
    add_account(server, "ann@example.com", "analyst")
    add_account(server, "nobody@example.com", None)
    return server


def signed_in(browser: Browser, live: LiveServer, email: str, **options) -> BrowserContext:
    context = browser.new_context(user_agent=CHROME_UA, viewport={"width": 1400, "height": 1000}, **options)
    answer = context.request.post(f"{live.base_url}/api/auth/login", data={"email": email, "password": PASSWORD})
    assert answer.status == 200, answer.text()
    return context


def player_url(live: LiveServer, rid: str) -> str:
    return f"{live.base_url}/app/projects/{live.project.project.id}/recordings/{rid}"


def open_player(page: Page, live: LiveServer, rid: str) -> None:
    """The player page, once it shows the first frame and every chunk has reached the player."""
    page.goto(player_url(live, rid))
    page.wait_for_selector("#replay[data-first-frame-ms][data-loaded]", state="attached", timeout=20_000)


def seek(page: Page, offset: int) -> None:
    """Move the timeline to `offset` ms, as a user dragging it would, and wait for the replay to be there."""
    page.fill("#scrubber", str(offset))
    page.wait_for_function(f"() => document.getElementById('replay').dataset.offset === '{offset}'")


def replay_screenshot(page: Page) -> Image.Image:
    """The replayed page's iframe, at the recorded viewport's size (its box may be a fraction of a pixel more)."""
    shot = page.frame_locator("#replay-frame").locator(".replayer-wrapper iframe").screenshot()
    return Image.open(io.BytesIO(shot)).crop((0, 0, VIEWPORT["width"], VIEWPORT["height"]))


def differing(a: Image.Image, b: Image.Image) -> float:
    """The share of pixels where some channel differs by more than CHANNEL_TOLERANCE, at the best alignment.

    The replayed page sits inside rrweb's centred, scaled wrapper, which can put it a fraction of a pixel
    off the screenshot's grid: the pictures are compared shifted by up to one pixel each way (over the
    area both cover), and the best of those nine counts.
    """
    assert a.size == b.size, (a.size, b.size)
    w, h = a.size
    a, b = a.convert("RGB"), b.convert("RGB")
    best = 1.0
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            box_a = (max(0, dx), max(0, dy), w + min(0, dx), h + min(0, dy))
            box_b = (max(0, -dx), max(0, -dy), w + min(0, -dx), h + min(0, -dy))
            diff = ImageChops.difference(a.crop(box_a), b.crop(box_b))
            worst = ImageChops.lighter(ImageChops.lighter(diff.getchannel(0), diff.getchannel(1)), diff.getchannel(2))
            over = worst.point(lambda v: 255 if v > CHANNEL_TOLERANCE else 0).histogram()[255]
            best = min(best, over / ((w - 1) * (h - 1)))
    return best


# --- a real page, recorded by the real snippet, replayed --------------------------------------------

IBAN, CARD = "IBAN DE89 3704 0044 0532 0130 00", "Card 4111 1111 1111 1111"
ROWS = "".join(f'<div class="row r{i % 4}">Row {i}: {"lorem ipsum dolor " * (1 + i % 3)}</div>' for i in range(60))


def recorded_page(live: LiveServer, site: PageServer) -> str:
    # The page's own script counts its runs at the page server; a replay must never add one.
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>Shop</title>'
        "<style>body { font: 16px sans-serif; margin: 0 } h1 { background: #234; color: #fff; margin: 0;"
        " padding: 12px } .row { padding: 10px 16px } .r0 { background: #fde } .r1 { background: #def }"
        " .r2 { background: #efd } .r3 { background: #ffe } input { font-size: 18px } button { font-size: 16px }"
        " *:focus { outline: none }</style>"
        f"{snippet_tag(live.base_url, live.project.write_key)}</head><body>"
        '<h1 id="title">Checkout</h1><p><input id="name" placeholder="Name"> <button id="buy">Buy</button>'
        ' <span id="status">Not bought</span></p>'
        f"<script>new Image().src = '{site.origin}/beacon?from=' + encodeURIComponent(location.href);"
        "var n = 0; document.getElementById('buy').addEventListener('click', function () {"
        " n += 1; document.getElementById('status').textContent = 'Bought ' + n + ' time(s)'; });</script>"
        # Below both compared moments: blocked elements, replayed as empty boxes of their size.
        f'{ROWS}<div class="wm-hide" style="width: 300px; height: 40px">{IBAN}</div>'
        f'<div class="card-box" id="card" style="width: 320px; height: 48px">{CARD}</div>'
        '<a id="next" href="/second">Next page</a></body></html>'
    )


def test_the_replay_shows_what_the_page_showed(live, site, browser):
    pid = live.project.project.id
    response = configure(
        live,
        {
            "allowed_origins": [site.origin],
            "tracking_level": "playback",
            "playback": {
                "global_capture": True,
                "allowed_input_selectors": ["#name"],
                "blocked_selectors": ["#card"],
            },
        },
    )
    assert response.status_code == 200, response.text
    site.pages["/shop"] = recorded_page(live, site)
    site.pages["/second"] = recorded_page(live, site).replace("Checkout", "Second page")
    site.pages["/beacon"] = "ok"
    original = browser.new_context(user_agent=CHROME_UA, viewport=VIEWPORT)
    page = original.new_page()
    with page.expect_response(lambda r: "/v1/playback/start" in r.url) as started:
        page.goto(site.url("/shop"))
    rid = started.value.json()["recording_id"]
    page.wait_for_function("() => window.rrwebRecord && sessionStorage.getItem('ut_pb')")

    def recorded(check) -> bool:
        page.evaluate("usertrail.flush()")
        return any(check(e) for e in recording_events(live, rid))

    def scrolled_to(y: int):
        return lambda e: e["type"] == 3 and e["data"].get("source") == 3 and e["data"].get("y") == y

    def moment(check, what: str) -> tuple[int, Image.Image]:
        """Once the server holds the event `check` finds: the page's clock and a screenshot of it."""
        wait_until(lambda: recorded(check), what, timeout=20)
        return page.evaluate("Date.now()"), Image.open(io.BytesIO(page.screenshot()))

    # Moment 1: a click that changed the DOM, typed text, a scroll.
    page.click("#buy")
    page.click("#name")
    page.keyboard.type("Ada")
    page.click("#title")  # the field loses focus: no caret in either picture
    page.mouse.wheel(0, 400)
    page.wait_for_function("() => window.scrollY === 400")
    m1, shot1 = moment(scrolled_to(400), "the scroll in the recording")
    # Moment 2: more typing, another click, further down.
    page.click("#name")
    page.keyboard.type(" Lovelace")
    page.click("#buy")
    page.click("#title")
    page.mouse.wheel(0, 900)
    page.wait_for_function("() => window.scrollY === 900")  # clicking the title scrolled back to the top first
    m2, shot2 = moment(scrolled_to(900), "the second scroll in the recording")
    with page.expect_response(lambda r: "/v1/playback/start" in r.url):
        page.click("#next")  # a page change for the timeline
    page.wait_for_function("() => window.rrwebRecord && sessionStorage.getItem('ut_pb')")
    page.mouse.wheel(0, 200)
    page.wait_for_function("() => window.scrollY === 200")
    wait_until(lambda: recorded(scrolled_to(200)), "the scroll on the second page")
    original.close()

    def beacons() -> list[str]:
        return [path for path in site.requested if path.startswith("/beacon")]

    assert len(beacons()) == 2  # the page's script ran once per page, for real

    # Sign in through the form, find the recording in the list, open it.
    viewer = browser.new_context(user_agent=CHROME_UA, viewport={"width": 1400, "height": 1000})
    app = viewer.new_page()
    problems: list[str] = []
    app.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    app.on("pageerror", lambda e: problems.append(str(e)))
    app.goto(f"{live.base_url}/app/projects/{pid}/recordings")
    assert app.url.startswith(f"{live.base_url}/app/login?next=")
    app.fill("input[name=email]", "vic@example.com")
    app.fill("input[name=password]", PASSWORD)
    app.click("#login button[type=submit]")
    app.wait_for_url(f"{live.base_url}/app/projects/{pid}/recordings")
    app.fill("input[name=url]", "/second")
    app.click("#filters button[type=submit]")
    app.click(f"tr[data-recording='{rid}'] a")
    app.wait_for_selector("#replay[data-first-frame-ms][data-loaded]", state="attached", timeout=20_000)
    start = int(app.get_attribute("#replay", "data-start-time"))

    seek(app, m1 - start)
    replay1 = replay_screenshot(app)
    seek(app, m2 - start)
    replay2 = replay_screenshot(app)
    d1, d2, apart = differing(shot1, replay1), differing(shot2, replay2), differing(shot1, replay2)
    assert d1 < MAX_DIFFERING and d2 < MAX_DIFFERING, (d1, d2)
    assert apart > 5 * MAX_DIFFERING, apart  # the comparison can tell two moments apart
    inner = app.frame_locator("#replay-frame").frame_locator(".replayer-wrapper iframe")
    assert inner.locator("#status").text_content() == "Bought 2 time(s)"
    assert inner.locator("#name").input_value() == "Ada Lovelace"
    # The wm-hide element and the one of the configured selector: a box of the same size, without its text.
    # rrweb sizes the box from the recorded size. (Nothing is measured by script in that frame: its sandbox
    # blocks scripts, and Chromium logs each attempt, which Playwright's bounding_box() makes.)
    for selector, (width, height) in ((".wm-hide", (300, 40)), (".card-box", (320, 48))):
        box = inner.locator(selector)
        assert box.get_attribute("style") == f"width: {width}px; height: {height}px;", selector
        assert box.inner_html() == "", selector
    assert inner.locator("#card").count() == 0  # not even its id is kept
    assert IBAN not in app.content() and CARD not in inner.locator("body").inner_html()

    # The timeline: two page starts, the clicks, each a button that seeks there.
    kinds = app.eval_on_selector_all("#markers .marker", "els => els.map(e => e.dataset.kind)")
    assert kinds.count("page") == 2 and kinds.count("click") >= 6, kinds
    second = app.locator("#markers .marker-page").nth(1)
    second.click()
    offset = second.get_attribute("data-offset")
    app.wait_for_function(f"() => document.getElementById('replay').dataset.offset === '{offset}'")
    wait_until(lambda: inner.locator("#title").text_content() == "Second page", "the second page in the replay")

    assert len(beacons()) == 2  # the recorded script never ran in the replay
    assert not problems, problems
    views = live.rows("SELECT action, actor_email FROM activity_log WHERE actor_email IS NOT NULL")
    assert [tuple(v) for v in views] == [("view", "vic@example.com")]
    viewer.close()


# --- hostile recordings: nothing recorded runs, nothing is fetched ------------------------------------


def hostile_nodes(origin: str) -> list[dict]:
    """What a crafted recording could hold (ids from 10**6 up): scripts, handlers, remote resources."""
    beacon = f"{origin}/beacon"
    code = (
        f"new Image().src='{beacon}?script'; fetch('{beacon}?fetch'); top.postMessage('pwned','*');"
        " top.document.title='pwned';"
    )

    def el(i: int, tag: str, attributes: dict, children: list | None = None) -> dict:
        return {"type": 2, "tagName": tag, "attributes": attributes, "childNodes": children or [], "id": 10**6 + i}

    return [
        el(1, "script", {}, [{"type": 3, "textContent": code, "id": 10**6 + 2}]),
        el(3, "img", {"src": "data:,x", "onerror": code, "onload": code}),
        el(4, "img", {"src": f"{beacon}?img"}),
        el(5, "link", {"rel": "stylesheet", "href": f"{beacon}?css"}),
        el(
            6, "a", {"href": f"javascript:{code}", "id": "js-link"}, [{"type": 3, "textContent": "go", "id": 10**6 + 7}]
        ),
        el(8, "iframe", {"srcdoc": f"<script>{code}</script>"}),
        el(9, "div", {"style": f"background-image: url({beacon}?bg); width: 50px; height: 50px"}),
        el(10, "video", {"src": f"{beacon}?video", "autoplay": ""}),
    ]


def test_recorded_scripts_never_run_and_the_replay_fetches_nothing(live, site, browser):
    site.pages["/beacon"] = "ok"
    events = synthetic_recording(int(time.time() * 1000), 0.5, cards=4, extra_body=hostile_nodes(site.origin))
    rid = store_recording(live, events)
    context = signed_in(browser, live, "vic@example.com")
    blocked: list[str] = []
    context.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
    page = context.new_page()
    messages: list[str] = []
    page.expose_function("utSawMessage", lambda data: messages.append(data))
    page.add_init_script(
        "window.addEventListener('message', e => { if (typeof e.data === 'string') utSawMessage(e.data) })"
    )
    open_player(page, live, rid)
    page.click("#play")
    page.wait_for_function("() => Number(document.getElementById('replay').dataset.offset) > 1000", timeout=20_000)
    inner = page.frame_locator("#replay-frame").frame_locator(".replayer-wrapper iframe")
    assert inner.locator("img").count() >= 2  # the nodes are there, inert
    inner.locator("#js-link").click(force=True)
    # While the replay runs fast, a real click once waited 30 s for the busy renderer (2 loaded cores):
    # pausing sends the same click event to the button without waiting for input to be processed.
    page.locator("#play").dispatch_event("click")
    assert page.title() == f"Recording {rid} · usertrail"
    beacons = [path for path in site.requested if path.startswith("/beacon")]
    assert beacons == [] and messages == [], (beacons, messages)
    # The sandbox stopped the scripts; the CSP stopped the image, stylesheet and video loads.
    for what in ("img", "css", "bg", "video"):
        assert any(f"/beacon?{what}'" in text for text in blocked), (what, blocked)
    context.close()


# --- controls, timeline, WalkMe events -------------------------------------------------------------


def test_speed_skipping_and_walkme_markers(live, browser):
    start = int(time.time() * 1000) - 20 * 60_000
    # Two minutes of activity, four idle minutes, then more activity: 6 minutes in all.
    events = synthetic_recording(start, 6, cards=8, idle_from_s=60, idle_s=240)
    rid = store_recording(live, events, "anon-w")
    for offset, item in ((20_000, "Onboarding"), (330_000, "Checkout help")):
        event = walkme_event(time=start + offset, type="play", wm_euId="anon-w", wm_euIdSource="Cache", data_oName=item)
        with live.client() as client:
            answer = client.post(
                f"/event/tell?key={live.project.write_key}",
                content=walkme_body([event], client_ts=start + offset),
                headers={"Content-Type": "text/plain"},
            )
        assert answer.status_code == 200
    context = signed_in(browser, live, "vic@example.com")
    page = context.new_page()
    open_player(page, live, rid)
    replay = page.locator("#replay")
    assert page.locator("#markers .marker-walkme").count() == 2
    walkme = page.locator("#marker-list [data-kind='walkme']")
    assert "Checkout help" in walkme.nth(1).text_content()
    walkme.nth(1).click()
    assert replay.get_attribute("data-offset") == "330001"

    def rate(speed: int) -> float:
        """Replay ms per wall-clock ms over a stretch of play, both measured in the browser."""
        seek(page, 5_000)
        page.click(f"button[data-speed='{speed}']")
        page.wait_for_function(f"() => document.getElementById('replay').dataset.speed === '{speed}'")
        page.click("#play")
        page.wait_for_function("() => document.getElementById('replay').dataset.state === 'playing'")
        first = page.evaluate("[Number(document.getElementById('replay').dataset.offset), performance.now()]")
        page.wait_for_function(f"() => Number(document.getElementById('replay').dataset.offset) > {first[0] + 2000}")
        last = page.evaluate("[Number(document.getElementById('replay').dataset.offset), performance.now()]")
        # While the replay runs fast, a real click once waited 30 s for the busy renderer (2 loaded cores):
        # pausing sends the same click event to the button without waiting for input to be processed.
        page.locator("#play").dispatch_event("click")
        return (last[0] - first[0]) / (last[1] - first[1])

    page.uncheck("#skip")
    page.wait_for_function("() => document.getElementById('replay').dataset.skipInactive === '0'")
    slow, fast = rate(1), rate(8)
    assert 0.5 < slow < 1.6 and fast > 4 * slow, (slow, fast)

    # Skipping inactivity: played into the idle stretch, the replay jumps over it.
    page.check("#skip")
    page.click("[data-speed='1']")
    seek(page, 58_000)  # two seconds before the idle stretch
    page.click("#play")
    page.wait_for_function("() => document.getElementById('replay').dataset.skipping === '1'", timeout=20_000)
    page.wait_for_function("() => Number(document.getElementById('replay').dataset.offset) > 300000", timeout=30_000)
    context.close()


# --- export ------------------------------------------------------------------------------------


def test_the_export_plays_offline_and_is_logged(live, browser, tmp_path: Path):
    events = synthetic_recording(int(time.time() * 1000) - 60_000, 0.5, pages=2, cards=6)
    rid = store_recording(live, events)
    viewer = signed_in(browser, live, "vic@example.com")
    page = viewer.new_page()
    open_player(page, live, rid)
    assert page.locator("#export").count() == 0
    viewer.close()

    analyst = signed_in(browser, live, "ann@example.com", accept_downloads=True)
    page = analyst.new_page()
    open_player(page, live, rid)
    with page.expect_download() as download:
        page.click("#export")
    saved = tmp_path / "export.html"
    download.value.save_as(saved)
    analyst.close()
    entries = live.rows("SELECT action, actor_email FROM activity_log ORDER BY seq")
    assert [tuple(e) for e in entries] == [
        ("view", "vic@example.com"),
        ("view", "ann@example.com"),
        ("export", "ann@example.com"),
    ]

    offline = browser.new_context(user_agent=CHROME_UA, viewport={"width": 1400, "height": 1000}, offline=True)
    requests: list[str] = []
    offline.on("request", lambda r: requests.append(r.url))
    file_page = offline.new_page()
    problems: list[str] = []
    file_page.on("pageerror", lambda e: problems.append(str(e)))
    file_page.goto(saved.as_uri())
    file_page.wait_for_selector("html[data-ready]", state="attached")
    assert file_page.evaluate("usertrailExport.events") == len(events)
    file_page.evaluate("usertrailExport.player.goto(20000, false)")
    inner = file_page.frame_locator(".replayer-wrapper iframe")
    wait_until(lambda: inner.locator("h3").count() == 6, "the exported replay's first page")
    assert json.loads(file_page.locator("#ut-events").text_content())[0]["type"] == 4
    assert requests == [saved.as_uri()] and not problems, (requests, problems)
    offline.close()


def test_without_playback_view_the_page_and_api_answer_403(live, browser):
    rid = store_recording(live, synthetic_recording(int(time.time() * 1000), 0.2, cards=2))
    context = signed_in(browser, live, "nobody@example.com")
    page = context.new_page()
    answer = page.goto(player_url(live, rid))
    assert answer.status == 403
    assert "you have no role on project" in page.text_content("#error-reason")
    api = context.request.get(
        f"{live.base_url}/api/projects/{live.project.project.id}/playback/recordings/{rid}/events"
    )
    assert api.status == 403 and api.json()["permission"] == "playback.view"
    assert live.scalar("SELECT count(*) FROM activity_log") == 0
    context.close()
