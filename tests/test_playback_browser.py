"""Session Playback in a real Chromium: the snippet records with rrweb, the server stores what it may.

Chunks leave the page only when the test says so (`usertrail.flush()`) or when the page goes away
(sendBeacon): the chunk timer is set to an hour, so no test depends on the machine's speed. One test
runs the timer fast instead, and waits for what it sends.
"""

from __future__ import annotations

import base64
import io
import json
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import pytest

from usertrail.web.snippet import snippet_tag

from browser import CHROMIUM, CHROMIUM_ARGS, PageServer, wait_until
from conftest import CHROME_UA, LiveServer, http_client
from playback_helpers import IPHONE_UA, SAFARI_7_UA, configure, recording_events

if TYPE_CHECKING:
    from playwright.sync_api import Page, Route

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

HOUR_MS = 3_600_000
SECRET = "hunter2-typed-secret"
PASSWORD = "pw-Sup3rS3cret"
BLOCKED_TEXT = "IBAN DE89 3704 0044 0532 0130 00"
CARD_TEXT = "Card 4111 1111 1111 1111"
RECORDING = "window.rrwebRecord && sessionStorage.getItem('ut_pb')"


@pytest.fixture
def live(make_server) -> LiveServer:
    return make_server(playback_chunk_interval_ms=HOUR_MS)


def playback_on(live: LiveServer, site: PageServer, **playback) -> None:
    settings = {
        "allowed_origins": [site.origin],
        "tracking_level": "playback",
        "playback": {"global_capture": True, **playback},
    }
    response = configure(live, settings)
    assert response.status_code == 200, response.text


def page_html(live: LiveServer, title: str, body: str) -> str:
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>'
        "<style>body { font-family: sans-serif } .tall { height: 3000px }</style>"
        f"{snippet_tag(live.base_url, live.project.write_key)}</head><body>{body}</body></html>"
    )


def silent_wav() -> str:
    """A data URI of half a second of silence: media the page can play without any network."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(8000)
        w.writeframes(b"\x80" * 4000)
    return "data:audio/wav;base64," + base64.b64encode(out.getvalue()).decode()


FORM = f"""
<h1>Checkout</h1>
<input id="name" type="text" placeholder="Name">
<input id="password" type="password">
<textarea id="note"></textarea>
<button id="buy" onclick="document.getElementById('status').textContent = 'Bought'">Buy</button>
<p id="status">Not bought</p>
<div class="wm-hide" id="iban">{BLOCKED_TEXT}</div>
<div class="card-box" id="card" style="width: 320px; height: 48px">{CARD_TEXT}</div>
<p id="quote">A sentence to select</p>
<audio id="audio" src="{silent_wav()}"></audio>
<iframe id="frame" src="/frame" width="400" height="120"></iframe>
<a id="next" href="/second">Next</a>
<div class="tall"></div>
"""
FRAME = '<!doctype html><html><body><button id="inner">Inside the frame</button></body></html>'


def chunk_rows(live: LiveServer) -> list:
    return live.rows("SELECT recording_id, seq, event_count FROM playback_chunks ORDER BY recording_id, seq")


def start_answer(page: Page, url: str) -> dict:
    with page.expect_response(lambda r: "/v1/playback/start" in r.url) as answer:
        page.goto(url)
    return answer.value.json()


def test_a_session_is_recorded_across_pages_and_iframes_without_typed_text(live, site, browser, tmp_path: Path):
    playback_on(live, site, blocked_selectors=["#card"])
    site.pages["/form"] = page_html(live, "Form", FORM)
    site.pages["/frame"] = FRAME
    site.pages["/second"] = page_html(live, "Second", '<p>Thanks</p><div class="tall"></div>')
    context = browser.new_context(user_agent=CHROME_UA, viewport={"width": 1000, "height": 700}, has_touch=True)
    page = context.new_page()
    chunk_bodies: list[tuple[str, bytes]] = []
    context.on(
        "request",
        lambda r: chunk_bodies.append((r.url, r.post_data_buffer or b"")) if "/v1/playback/chunks" in r.url else None,
    )
    first = start_answer(page, site.url("/form"))
    assert first["record"] is True
    page.wait_for_function(RECORDING)
    page.mouse.move(50, 50)
    page.mouse.move(300, 200, steps=5)
    page.click("#name")
    page.keyboard.type(SECRET)
    page.fill("#password", PASSWORD)
    page.fill("#note", SECRET + " in a textarea")
    page.click("#buy")
    page.tap("#status")  # touch start and end
    page.click("#quote", click_count=3)  # selects the paragraph's text
    # The clicks above are the user activation that lets the page play media.
    page.evaluate("() => { const a = document.getElementById('audio'); return a.play().then(() => a.pause()); }")
    page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    page.frame_locator("#frame").locator("#inner").click()
    page.mouse.wheel(0, 600)
    page.wait_for_function("window.scrollY > 0")
    page.set_viewport_size({"width": 900, "height": 650})
    page.evaluate("usertrail.flush()")
    wait_until(lambda: chunk_rows(live), "the first chunk")

    with page.expect_response(lambda r: "/v1/playback/start" in r.url) as resumed:
        page.click("#next")  # the rest of page 1 leaves by beacon; page 2 continues the recording
    assert resumed.value.json()["recording_id"] == first["recording_id"]
    assert resumed.value.json()["resumed"] is True
    page.wait_for_function(RECORDING)
    page.mouse.wheel(0, 300)
    page.wait_for_function("window.scrollY > 0")
    page.evaluate("usertrail.flush()")

    def seqs() -> list[int] | None:
        rows = chunk_rows(live)
        return [r.seq for r in rows] if len(rows) >= 3 else None

    numbers = wait_until(seqs, "chunks of both pages")
    assert numbers == list(range(len(numbers)))  # one recording, numbered without gaps across the pages
    assert {r.recording_id for r in chunk_rows(live)} == {first["recording_id"]}

    events = recording_events(live, first["recording_id"])
    text = json.dumps(events)
    assert [e["data"]["href"] for e in events if e["type"] == 4] == [site.url("/form"), site.url("/second")]
    assert sum(1 for e in events if e["type"] == 2) == 2  # one full snapshot per page
    sources = {e["data"]["source"] for e in events if e["type"] == 3}
    # mouse move, mouse interaction, scroll, viewport resize, input, media, text selection
    assert {1, 2, 3, 4, 5, 7, 14} <= sources, sources
    interactions = {e["data"]["type"] for e in events if e["type"] == 3 and e["data"]["source"] == 2}
    # click 2, focus 5, blur 6, touch start 7, touch end 9 (rrweb's MouseInteractions)
    assert {2, 5, 6, 7, 9} <= interactions, interactions
    media = {e["data"]["type"] for e in events if e["type"] == 3 and e["data"]["source"] == 7}
    assert {0, 1} <= media, media  # play, pause
    selected = [e["data"]["ranges"] for e in events if e["type"] == 3 and e["data"]["source"] == 14]
    assert any(ranges for ranges in selected), selected
    custom = [e["data"] for e in events if e["type"] == 5 and e["data"]["tag"] == "visibility"]
    assert custom and custom[0]["payload"] == {"state": "visible"}, custom
    assert "Inside the frame" in text  # the same-origin iframe's document is in the recording
    assert "Bought" in text  # the DOM change the click made
    # Typed text is masked, the password too, the wm-hide element is a placeholder.
    inputs = [e["data"]["text"] for e in events if e["type"] == 3 and e["data"]["source"] == 5]
    assert inputs and all(set(t) <= {"*"} for t in inputs), inputs
    # In the recording's texts: its numbers (times, sizes, ids) may hold "4111" by chance.
    recorded = "\n".join(_strings(events))
    for secret in (SECRET, PASSWORD, BLOCKED_TEXT, CARD_TEXT, "hunter2", "4111"):
        assert secret not in recorded
    # rrweb keeps only a blocked element's class and size, for `wm-hide` and the configured selector alike:
    # the replay shows a box of that size.
    for name in ("wm-hide", "card-box"):
        blocked = [n for n in _nodes(events) if n.get("attributes", {}).get("class") == name]
        assert len(blocked) == 1 and not blocked[0].get("childNodes"), blocked
        assert set(blocked[0]["attributes"]) == {"class", "rr_width", "rr_height"}, blocked
    assert [
        n["attributes"]["rr_width"] for n in _nodes(events) if n.get("attributes", {}).get("class") == "card-box"
    ] == ["320px"]

    # Nothing typed is anywhere on disk either (database, WAL, blobs, key file).
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert SECRET.encode() not in data and b"hunter2" not in data and PASSWORD.encode() not in data, path

    meta = live.rows("SELECT urls, chunk_count, user_key FROM playback_recordings")
    assert len(meta) == 1 and json.loads(meta[0].urls) == [site.url("/form"), site.url("/second")]
    # The recording belongs to the same end user as the page events.
    assert {r[0] for r in live.rows("SELECT user_key FROM events")} == {meta[0].user_key}

    # Sending a chunk again stores nothing new.
    url, body = chunk_bodies[0]
    with http_client(timeout=10, headers={"User-Agent": CHROME_UA, "Content-Type": "text/plain"}) as client:
        again = client.post(url, content=body)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert len(chunk_rows(live)) == len(numbers)
    context.close()


def _strings(value: object) -> Iterator[str]:
    """Every string in a JSON value: the values and the keys of its objects, at any depth."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _nodes(events: list) -> Iterator[dict]:
    stack = [e["data"]["node"] for e in events if e["type"] == 2]
    stack += [a["node"] for e in events if e["type"] == 3 and e["data"]["source"] == 0 for a in e["data"]["adds"]]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node.get("childNodes", []))


def test_allowed_inputs_are_recorded_and_passwords_never(live, site, browser):
    playback_on(live, site, allowed_input_selectors=["#name", "#password"])
    site.pages["/form"] = page_html(live, "Form", FORM)
    site.pages["/frame"] = FRAME
    context = browser.new_context(user_agent=CHROME_UA)
    page = context.new_page()
    assert start_answer(page, site.url("/form"))["record"] is True
    page.wait_for_function(RECORDING)
    page.fill("#name", "Ada Lovelace")
    page.fill("#password", PASSWORD)
    page.fill("#note", SECRET)
    page.evaluate("usertrail.flush()")
    wait_until(lambda: chunk_rows(live), "a chunk")
    rid = live.scalar("SELECT recording_id FROM playback_recordings")
    text = json.dumps(recording_events(live, rid))
    assert "Ada Lovelace" in text
    assert PASSWORD not in text and SECRET not in text
    context.close()


@pytest.mark.parametrize("agent", [IPHONE_UA, SAFARI_7_UA])
def test_unsupported_browsers_are_not_recorded(live, site, browser, agent):
    playback_on(live, site)
    site.pages["/form"] = page_html(live, "Form", FORM)
    site.pages["/frame"] = FRAME
    # A browser of its own that calls itself `agent` (--user-agent), from the same Playwright.
    other = browser.browser_type.launch(executable_path=str(CHROMIUM), args=[*CHROMIUM_ARGS, f"--user-agent={agent}"])
    try:
        page = other.new_page()
        assert page.evaluate("navigator.userAgent") == agent
        answer = start_answer(page, site.url("/form"))
        assert answer == {"record": False, "reason": "unsupported_browser", "method": "automatic"}
        assert page.evaluate("typeof window.rrwebRecord") == "undefined"
    finally:
        other.close()
    assert live.scalar("SELECT count(*) FROM playback_recordings") == 0


@pytest.mark.parametrize(
    ("playback", "reason"),
    [
        ({"excluded_ips": ["127.0.0.0/8"]}, "excluded_ip"),
        ({"excluded_domains": ["127.0.0.1"]}, "excluded_domain"),
        ({"global_capture": False}, "no_segment"),
        ({"global_capture": False, "segment_ids": ["seg_1"]}, "not_in_segment"),
    ],
)
def test_excluded_or_unchosen_sessions_are_not_recorded(live, site, browser, playback, reason):
    playback_on(live, site, **playback)
    site.pages["/form"] = page_html(live, "Form", FORM)
    site.pages["/frame"] = FRAME
    context = browser.new_context(user_agent=CHROME_UA)
    page = context.new_page()
    assert start_answer(page, site.url("/form"))["reason"] == reason
    page.click("#buy")
    assert page.evaluate("typeof window.rrwebRecord") == "undefined"
    assert live.scalar("SELECT count(*) FROM playback_recordings") == 0
    context.close()


def test_quota_transitions(live, site, browser):
    playback_on(live, site)
    site.pages["/form"] = page_html(live, "Form", FORM)
    site.pages["/frame"] = FRAME
    project = live.project.project.id
    with live.admin() as admin:
        assert admin.put(f"/api/projects/{project}/playback/quota", json={"quota": 1}).status_code == 200

    def visitor() -> dict:
        context = browser.new_context(user_agent=CHROME_UA)  # a new visitor: own storage, own session
        answer = start_answer(context.new_page(), site.url("/form"))
        context.close()
        return answer

    assert visitor()["record"] is True
    assert visitor()["reason"] == "quota_reached"
    with live.admin() as admin:
        assert admin.get(f"/api/projects/{project}/playback/usage").json()["used"] == 1
        assert admin.put(f"/api/projects/{project}/playback/quota", json={"quota": 2}).json()["used"] == 0
    assert visitor()["record"] is True
    assert live.scalar("SELECT count(*) FROM playback_recordings") == 2


def test_manual_recording_starts_when_the_page_asks(live, site, browser):
    playback_on(live, site, method="manual")
    site.pages["/form"] = page_html(live, "Form", FORM)
    site.pages["/frame"] = FRAME
    context = browser.new_context(user_agent=CHROME_UA)
    page = context.new_page()
    assert start_answer(page, site.url("/form"))["reason"] == "manual"
    with live.admin() as admin:
        assert admin.get(f"/api/projects/{live.project.project.id}/playback/usage").json()["used"] == 0
    assert page.evaluate("usertrail.startPlaybackRecording()") is True
    page.click("#buy")
    page.evaluate("usertrail.flush()")
    wait_until(lambda: chunk_rows(live), "a chunk of the manual recording")
    with live.admin() as admin:
        assert admin.get(f"/api/projects/{live.project.project.id}/playback/usage").json()["used"] == 1
    context.close()


def test_chunks_leave_on_the_timer_and_are_retried_dropped_or_stop_the_recording(make_server, site, browser):
    live = make_server(playback_chunk_interval_ms=300)
    playback_on(live, site)
    site.pages["/form"] = page_html(live, "Form", FORM)
    site.pages["/frame"] = FRAME
    context = browser.new_context(user_agent=CHROME_UA)
    sent: list[tuple[int, str, int]] = []  # every chunk request: seq, enc, the status it got

    def answer(route: Route) -> None:
        query = parse_qs(urlsplit(route.request.url).query)
        seq = int(query["seq"][0])
        first_try = all(s != seq for s, _, _ in sent)
        # seq 0 fails once (503: retried), seq 1 is refused for good (400: dropped), seq 3 is forbidden (403: stop).
        status = {0: 503 if first_try else 0, 1: 400, 3: 403}.get(seq, 0)
        sent.append((seq, query["enc"][0], status or 200))
        if status:
            cors = {"Access-Control-Allow-Origin": site.origin}
            route.fulfill(status=status, headers=cors, json={"error": "test", "path": "$", "reason": "test"})
        else:
            route.continue_()

    context.route("**/v1/playback/chunks*", answer)
    page = context.new_page()
    assert start_answer(page, site.url("/form"))["record"] is True
    page.wait_for_function(RECORDING)
    moves = iter(range(10**6))

    def busy_until(check, what: str):
        """Move the mouse (events for the next chunk) until `check` holds; only the timer sends chunks."""

        def step():
            i = next(moves)
            page.mouse.move(20 + i % 300, 20 + (7 * i) % 300)
            return check()

        return wait_until(step, what, timeout=30, interval=0.1, sleep=lambda s: page.wait_for_timeout(s * 1000))

    busy_until(
        lambda: page.evaluate("JSON.parse(sessionStorage.getItem('ut_pb')) === null"), "the 403 to stop the recording"
    )
    stopped_at = len(sent)
    for _ in range(5):  # five timer periods of activity: a recorder still running would send seq 4
        page.mouse.move(100, 100)
        page.mouse.move(200, 150)
        page.wait_for_timeout(300)
    assert len(sent) == stopped_at and max(s for s, _, _ in sent) == 3, sent
    seqs = [s for s, _, _ in sent]
    assert [s for i, s in enumerate(seqs) if s not in seqs[:i]] == [0, 1, 2, 3]  # numbered without gaps
    assert [st for s, _, st in sent if s == 0][:2] == [503, 200]  # the failed chunk went again, same number
    assert seqs.count(1) == 1 and seqs.count(3) == 1  # refused for good: never sent again
    assert {enc for _, enc, _ in sent} == {"gzip"}
    # Stored without a single usertrail.flush(): the timer's chunks, less the refused one.
    assert [r.seq for r in chunk_rows(live)] == [0, 2]
    context.close()
