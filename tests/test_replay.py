"""The replay's server side on both engines: list filters (API and page), permissions of the pages and the
export, the activity log, the export file's content and CSP, the replay frame's CSP."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

import usertrail.web
from usertrail.playback.replay import FRAME_CSP, PAGE_CSP, escape_json_for_script
from usertrail.store.database import write_transaction
from usertrail.store.schema import identity_links, segment_members

from conftest import LiveServer
from playback_helpers import events_at
from replay_helpers import PASSWORD, add_account, store_recording
from samples import walkme_body, walkme_event

MINUTE = 60_000


@pytest.fixture
def live(make_server) -> LiveServer:
    server = make_server()
    add_account(server, "ann@example.com", "analyst")
    add_account(server, "vic@example.com", "viewer")
    add_account(server, "nobody@example.com", None)
    return server


@contextlib.contextmanager
def signed_in(live: LiveServer, email: str) -> Iterator[httpx.Client]:
    with live.client(follow_redirects=False) as client:
        answer = client.post("/api/auth/login", json={"email": email, "password": PASSWORD})
        assert answer.status_code == 200, answer.text
        yield client


def recording(live: LiveServer, anonymous_id: str, start: int, minutes: float, href: str) -> str:
    """A recording of `minutes` (events every 10 s) on page `href`."""
    events = events_at(start, href=href)
    events += [
        {"type": 3, "data": {"source": 1, "positions": [{"x": 1, "y": 2, "id": 2, "timeOffset": 0}]}, "timestamp": t}
        for t in range(start + 10_000, start + int(minutes * MINUTE) + 1, 10_000)
    ]
    return store_recording(live, events, anonymous_id)


def tell(live: LiveServer, anonymous_id: str, ts: int, event_type: str, item: str) -> None:
    event = walkme_event(time=ts, type=event_type, wm_euId=anonymous_id, wm_euIdSource="Cache", data_oName=item)
    with live.client() as client:
        answer = client.post(
            f"/event/tell?key={live.project.write_key}",
            content=walkme_body([event], client_ts=ts),
            headers={"Content-Type": "text/plain"},
        )
    assert answer.status_code == 200, answer.text


def test_the_list_filters_by_user_url_duration_segment_and_walkme_events(live):
    pid = live.project.project.id
    now = int(time.time() * 1000)
    short = recording(live, "anon-1", now - 10 * MINUTE, 1, "https://shop.example.com/cart")
    long = recording(live, "anon-2", now - 8 * MINUTE, 5, "https://shop.example.com/checkout")
    linked = recording(live, "anon-3", now - 6 * MINUTE, 2, "https://shop.example.com/home")
    # WalkMe events of anon-2 during its recording (and one of anon-1 after its recording ended).
    tell(live, "anon-2", now - 7 * MINUTE, "play", "Checkout help")
    tell(live, "anon-1", now - 2 * MINUTE, "play", "Checkout help")
    with live.admin() as admin:
        segment = admin.post(
            f"/api/projects/{pid}/segments",
            json={
                "name": "Buyers",
                "rules": {"rules": [{"attribute": "Total sessions", "operator": "gt", "value": 3}]},
            },
        ).json()["id"]
    with write_transaction(live.engine) as conn:
        conn.execute(
            sa.insert(segment_members),
            [{"project_id": pid, "user_key": k, "segment_id": segment, "since": 0} for k in ("a:anon-2", "u:member")],
        )
        conn.execute(
            sa.insert(identity_links).values(
                project_id=pid, user_key="a:anon-3", person_key="u:member", link_ts=now, link_event_id="e1"
            )
        )

    def ids(**params) -> list[str]:
        with live.admin() as admin:
            answer = admin.get(f"/api/projects/{pid}/playback/recordings", params=params)
        assert answer.status_code == 200, answer.text
        return [r["recording_id"] for r in answer.json()["items"]]

    assert ids() == [linked, long, short]
    assert ids(user="a:anon-1") == [short]
    assert ids(url="checkout") == [long]
    assert ids(min_duration_ms=3 * MINUTE) == [long]
    assert ids(max_duration_ms=3 * MINUTE) == [linked, short]
    assert ids(segment=segment) == [linked, long]
    assert ids(walkme_type="play") == [long]
    assert ids(walkme_item="Checkout help") == [long]
    assert ids(walkme_type="close") == []
    with live.admin() as admin:
        bad = admin.get(f"/api/projects/{pid}/playback/recordings", params={"segment": "seg_nope"})
    assert bad.status_code == 400 and bad.json()["path"] == "segment"

    # The page shows the same, from the same filters in its own form.
    with signed_in(live, "vic@example.com") as vic:
        page = vic.get(f"/app/projects/{pid}/recordings", params={"walkme_type": "play", "min_duration": "60"})
        assert page.status_code == 200
        assert re.findall(r'data-recording="([^"]+)"', page.text) == [long]
        assert page.headers["content-security-policy"] == PAGE_CSP
        page = vic.get(f"/app/projects/{pid}/recordings", params={"segment": segment, "url": "home"})
        assert re.findall(r'data-recording="([^"]+)"', page.text) == [linked]
        bad_page = vic.get(f"/app/projects/{pid}/recordings", params={"min_duration": "soon"})
        assert bad_page.status_code == 400 and "min_duration" in bad_page.text

        # The player page lists the WalkMe events of the recording's time range only.
        player = vic.get(f"/app/projects/{pid}/recordings/{long}")
        assert player.status_code == 200
        assert re.findall(r'data-label="([^"]+)"', player.text) == ["play wt “Checkout help”"]
        assert "/export" not in player.text  # a viewer cannot export: no button
        other = vic.get(f"/app/projects/{pid}/recordings/{short}")
        assert "data-label=" not in other.text
        assert vic.get(f"/app/projects/{pid}/recordings/rec_gone").status_code == 404


def test_the_list_filters_by_start_time_and_the_page_by_whole_days(live):
    pid = live.project.project.id
    now = int(time.time() * 1000)
    early = recording(live, "anon-1", now - 10 * MINUTE, 1, "https://shop.example.com/a")
    late = recording(live, "anon-2", now - 5 * MINUTE, 1, "https://shop.example.com/b")
    starts = {early: "2026-03-10T12:00:00+00:00", late: "2026-03-12T18:30:00+00:00"}
    with write_transaction(live.engine) as conn:
        for rid, at in starts.items():
            conn.execute(
                sa.text("UPDATE playback_recordings SET started_at = :at WHERE recording_id = :r"),
                {"at": int(dt.datetime.fromisoformat(at).timestamp() * 1000), "r": rid},
            )

    def ids(**params) -> list[str]:
        with live.admin() as admin:
            answer = admin.get(f"/api/projects/{pid}/playback/recordings", params=params)
        assert answer.status_code == 200, answer.text
        return [r["recording_id"] for r in answer.json()["items"]]

    between = int(dt.datetime(2026, 3, 11, tzinfo=dt.UTC).timestamp() * 1000)
    assert ids(since="2026-03-11") == [late] and ids(until="2026-03-11") == [early]
    assert ids(since=str(between)) == [late] and ids(until=str(between)) == [early]
    # `since` is inclusive, `until` exclusive.
    assert ids(since="2026-03-10T12:00:00Z", until="2026-03-12T18:30:00.001Z") == [late, early]
    assert ids(since="2026-03-10T12:00:00Z", until="2026-03-12T18:30:00Z") == [early]
    assert ids(since="2026-03-12T19:00:00+01:00") == [late]  # a zone counts: 18:00 UTC
    with signed_in(live, "vic@example.com") as vic:

        def listed(**params) -> list[str]:
            page = vic.get(f"/app/projects/{pid}/recordings", params=params)
            assert page.status_code == 200, page.text
            return re.findall(r'data-recording="([^"]+)"', page.text)

        # `to` is inclusive: the whole of 12 March, 18:30 too.
        assert listed(**{"from": "2026-03-12", "to": "2026-03-12"}) == [late]
        assert listed(**{"from": "2026-03-10", "to": "2026-03-11"}) == [early]
        assert listed(to="2026-03-09") == [] and listed(**{"from": "2026-03-13"}) == []


def test_the_player_frame_is_sandboxed_and_the_vendored_bundles_carry_version_and_licence(live):
    pid = live.project.project.id
    rid = recording(live, "anon-1", int(time.time() * 1000), 1, "https://shop.example.com/a")
    with signed_in(live, "vic@example.com") as vic:
        page = vic.get(f"/app/projects/{pid}/recordings/{rid}").text
    frames = re.findall(r"<iframe [^>]*>", page)
    assert len(frames) == 1 and 'id="replay-frame"' in frames[0], frames
    assert re.search(r'\ssandbox="allow-scripts allow-same-origin"', frames[0]), frames[0]
    vendor = Path(usertrail.web.__file__).parent / "static" / "vendor"
    for folder, bundle in (("rrweb", "record.min.js"), ("rrweb-player", "rrweb-player.min.js")):
        assert (vendor / folder / "VERSION").read_text().strip() == "2.1.6", folder
        licence = (vendor / folder / "LICENSE").read_text()
        assert "MIT" in licence or "Permission is hereby granted" in licence, folder
        assert (vendor / folder / bundle).stat().st_size > 10_000, folder


def test_pages_need_a_sign_in_and_playback_view(live):
    pid = live.project.project.id
    rid = recording(live, "anon-1", int(time.time() * 1000) - MINUTE, 1, "https://shop.example.com/")
    with live.client(follow_redirects=False) as anonymous:
        to_login = anonymous.get(f"/app/projects/{pid}/recordings/{rid}")
        assert to_login.status_code == 303
        assert to_login.headers["location"] == f"/app/login?next=%2Fapp%2Fprojects%2F{pid}%2Frecordings%2F{rid}"
        login = anonymous.get("/app/login")
        assert login.status_code == 200 and 'id="login"' in login.text
        assert anonymous.get("/app").status_code == 303
        events = anonymous.get(f"/api/projects/{pid}/playback/recordings/{rid}/events")
        assert events.status_code == 401
    with signed_in(live, "nobody@example.com") as nobody:
        for path in (f"/app/projects/{pid}/recordings", f"/app/projects/{pid}/recordings/{rid}"):
            page = nobody.get(path)
            assert page.status_code == 403 and "you have no role on project" in page.text
        api = nobody.get(f"/api/projects/{pid}/playback/recordings/{rid}/events")
        assert api.status_code == 403 and api.json()["permission"] == "playback.view"
        assert nobody.get(f"/api/projects/{pid}/playback/recordings/{rid}/export").status_code == 403
    # The frame holds no data, so it needs no sign-in; it is framed only by our own pages.
    with live.client() as client:
        frame = client.get("/app/replay-frame")
    assert frame.status_code == 200 and frame.headers["content-security-policy"] == FRAME_CSP
    assert "frame-ancestors 'self'" in FRAME_CSP and "connect-src 'none'" in FRAME_CSP
    assert live.scalar("SELECT count(*) FROM activity_log") == 0


def test_export_is_one_self_contained_file_and_is_audited(live):
    pid = live.project.project.id
    start = int(time.time() * 1000) - MINUTE
    hostile = events_at(start, href="https://shop.example.com/</script><script>alert(1)</script>")
    rid = store_recording(live, hostile, "anon-1")
    with signed_in(live, "vic@example.com") as vic:
        refused = vic.get(f"/api/projects/{pid}/playback/recordings/{rid}/export")
        assert refused.status_code == 403 and refused.json()["permission"] == "playback.export"
    with signed_in(live, "ann@example.com") as ann:
        exported = ann.get(f"/api/projects/{pid}/playback/recordings/{rid}/export")
        assert ann.get(f"/api/projects/{pid}/playback/recordings/rec_nope/export").status_code == 404
    assert exported.status_code == 200
    assert exported.headers["content-disposition"] == f'attachment; filename="recording-{rid}.html"'
    assert exported.headers["content-type"] == "text/html; charset=utf-8"
    html = exported.text
    # The events are in the file, and no recorded text can end their element early.
    data = re.search(r'<script type="application/json" id="ut-events">(.*?)</script>', html, re.S).group(1)
    assert json.loads(data) == hostile
    assert "</script><script>alert(1)" not in html
    # Only the two inline scripts run: their hashes are the CSP's, nothing else is allowed.
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', html).group(1)
    assert exported.headers["content-security-policy"] == csp.replace("&#x27;", "'")
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    assert len(scripts) == 2
    for source in scripts:
        digest = base64.b64encode(hashlib.sha256(source.encode()).digest()).decode()
        assert f"sha256-{digest}" in csp
    assert "connect-src" not in csp and "default-src &#x27;none&#x27;" in csp
    assert "http://" not in html.split('id="ut-events">')[0]  # nothing is loaded from anywhere
    # One export entry, by the analyst; the refused attempt left none.
    rows = live.rows("SELECT action, actor_email, recording_id FROM activity_log ORDER BY seq")
    assert [tuple(r) for r in rows] == [("export", "ann@example.com", rid)]
    with live.admin() as admin:
        assert admin.get(f"/api/projects/{pid}/playback/recordings/{rid}/export").status_code == 200
    assert live.scalar("SELECT count(*) FROM activity_log WHERE action = 'export'") == 2


def test_json_for_a_script_element_is_escaped():
    raw = json.dumps(["</script><!-- <b>"]).encode()
    escaped = escape_json_for_script(raw)
    assert b"<" not in escaped and json.loads(escaped) == ["</script><!-- <b>"]
