"""Session Playback through the HTTP API: who is recorded, chunk intake, encrypted storage, quota, reads."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import sqlalchemy as sa
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from cli_runner import Ran, run_cli
from usertrail.playback import quota
from usertrail.playback.crypto import CryptoError, KeyRing, new_master_key, open_chunk, parse_master_keys
from usertrail.playback.quota import next_reset, period_start
from usertrail.testing.postgres import free_port
from usertrail.web.app import run_retention

from conftest import CHROME_UA, LiveServer, http_client
from playback_helpers import (
    ANDROID_UA,
    CHROME_70_UA,
    EDGE_18_UA,
    EDGE_UA,
    FIREFOX_64_UA,
    FIREFOX_UA,
    IPHONE_UA,
    SAFARI_7_UA,
    SAFARI_8_UA,
    SAFARI_12_0_UA,
    SAFARI_12_1_UA,
    SAFARI_17_UA,
    configure,
    enable_playback,
    events_at,
    recording_events,
    send_chunk,
    start,
)
from samples import now_ms, walkme_body, walkme_event


def api(live: LiveServer, method: str, path: str, **kwargs):
    with live.admin() as admin:
        return admin.request(method, f"/api/projects/{live.project.project.id}{path}", **kwargs)


def ms(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp() * 1000)


def test_nobody_is_recorded_by_default_nor_with_segments_chosen(live):
    assert start(live) == {"record": False, "reason": "tracking_level", "method": "automatic"}
    assert configure(live, {"tracking_level": "playback"}).status_code == 200
    assert start(live)["reason"] == "no_segment"
    # A chosen segment that does not exist matches nobody.
    assert configure(live, {"playback": {"segment_ids": ["seg_admins"]}}).status_code == 200
    assert start(live)["reason"] == "not_in_segment"
    assert configure(live, {"playback": {"global_capture": True}}).status_code == 200
    answer = start(live)
    assert answer["record"] is True and answer["recording_id"].startswith("rec_")
    assert answer["options"]["block_class"] == "wm-hide"
    assert live.scalar("SELECT count(*) FROM playback_recordings") == 1


def test_users_in_a_chosen_segment_are_recorded(make_server):
    live = make_server(process_sessions=False)
    assert configure(live, {"uuid": {"provider": "variable", "source": "currentUser.id"}}).status_code == 200
    start_ts = now_ms() - 3 * 3_600_000  # a closed session: ana has an End User Object
    body = walkme_body([walkme_event(time=start_ts, wm_euId="ana", wm_euIdSource="Identifier")])
    with live.client() as client:
        assert client.post(f"/event/tell?key={live.project.write_key}", content=body).status_code == 200
    live.app.state.sessions.run(now_ms())
    rules = {"rules": [{"attribute": "Total sessions", "operator": "gte", "value": 1}]}
    segment = api(live, "POST", "/segments", json={"name": "Returning", "rules": rules}).json()
    enable_playback(live, global_capture=False, segment_ids=[segment["id"]])
    assert start(live, userId="ana")["record"] is True
    # bob's first session has not closed: segment rules cannot be asserted for him.
    assert start(live, userId="bob", anonymousId="anon-2", sessionId="s-2")["reason"] == "not_in_segment"


@pytest.mark.parametrize(
    ("agent", "recorded"),
    [
        (CHROME_UA, True),
        (FIREFOX_UA, True),
        (EDGE_UA, True),
        (SAFARI_17_UA, True),
        (SAFARI_12_1_UA, True),
        # Too old to run rrweb 2.1.6 (globalThis, async functions) or the snippet (fetch): docs/playback.md.
        (SAFARI_12_0_UA, False),
        (SAFARI_8_UA, False),
        (SAFARI_7_UA, False),
        (EDGE_18_UA, False),
        (CHROME_70_UA, False),
        (FIREFOX_64_UA, False),
        (IPHONE_UA, False),
        (ANDROID_UA, False),
        ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 HeadlessChrome/124.0.0.0 Safari/537.36", False),
    ],
)
def test_supported_browsers(live, agent, recorded):
    enable_playback(live)
    answer = start(live, headers={"User-Agent": agent})
    assert answer["record"] is recorded
    if not recorded:
        assert answer["reason"] == "unsupported_browser"


def test_excluded_ips_and_domains(make_server):
    live = make_server(trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),))
    enable_playback(
        live, excluded_ips=["10.1.2.3", "192.168.*", "172.16.0.0/12"], excluded_domains=["*.internal.example.com"]
    )
    for ip, recorded in [("10.1.2.3", False), ("192.168.7.9", False), ("172.20.1.1", False), ("8.8.8.8", True)]:
        answer = start(live, headers={"X-Forwarded-For": ip})
        assert answer["record"] is recorded, ip
        assert recorded or answer["reason"] == "excluded_ip"
    assert start(live, url="https://hr.internal.example.com/x")["reason"] == "excluded_domain"
    assert start(live, url="https://internal.example.com/x")["record"] is True


def test_settings_are_validated_with_their_path(live):
    cases = [
        ({"playback": {"excluded_ips": ["10.0.0.1", "nonsense"]}}, "$.playback.excluded_ips[1]"),
        ({"playback": {"excluded_domains": ["ex ample.com"]}}, "$.playback.excluded_domains[0]"),
        ({"playback": {"blocked_selectors": ["x { color: red }"]}}, "$.playback.blocked_selectors[0]"),
        ({"playback": {"method": "sometimes"}}, "$.playback.method"),
        ({"playback": {"global_capture": "yes"}}, "$.playback.global_capture"),
        ({"playback": {"quota": 5}}, "$.playback"),
    ]
    for patch, path in cases:
        response = configure(live, patch)
        assert response.status_code == 400, patch
        assert response.json()["path"] == path, response.json()
    assert api(live, "PUT", "/playback/quota", json={"quota": -1}).json()["path"] == "$.quota"
    assert api(live, "PUT", "/playback/quota", json={"quota": 3, "x": 1}).json()["path"] == "$.x"


def test_manual_method_records_only_after_the_page_asks(live):
    enable_playback(live, method="manual")
    assert start(live) == {"record": False, "reason": "manual", "method": "manual"}
    assert api(live, "GET", "/playback/usage").json()["used"] == 0
    answer = start(live, trigger="manual")
    assert answer["record"] is True
    assert api(live, "GET", "/playback/usage").json()["used"] == 1
    # The next page of the tab resumes the recording without asking again.
    again = start(live, resume=answer["token"])
    assert (again["record"], again["recording_id"], again["resumed"]) == (True, answer["recording_id"], True)


def test_chunks_are_stored_once_encrypted_and_read_back_in_order(live, tmp_path: Path):
    enable_playback(live)
    answer = start(live)
    token, rid = answer["token"], answer["recording_id"]
    t0 = 1_800_000_000_000
    first = events_at(t0, typed="*******")
    second = [{"type": 3, "data": {"source": 3, "id": 1, "x": 0, "y": 400}, "timestamp": t0 + 5000}]
    third = [{"type": 3, "data": {"source": 2, "type": 2, "id": 2, "x": 5, "y": 6}, "timestamp": t0 + 9000}]
    # Sent out of order, one of them twice and plain JSON: stored once each, read back by sequence number.
    assert send_chunk(live, token, 1, second).json()["stored"] is True
    assert send_chunk(live, token, 0, first).json()["stored"] is True
    again = send_chunk(live, token, 0, first, enc="json")
    assert again.status_code == 200 and again.json() == {
        "ok": True,
        "recording_id": rid,
        "seq": 0,
        "stored": False,
        "duplicate": True,
    }
    assert send_chunk(live, token, 2, third, enc="json").status_code == 200
    assert live.scalar("SELECT count(*) FROM playback_chunks") == 3
    assert recording_events(live, rid) == first + second + third
    assert recording_events(live, rid, "ndjson") == first + second + third

    meta = api(live, "GET", f"/playback/recordings/{rid}").json()
    assert meta["chunks"] == 3 and meta["events"] == 6 and meta["duration_ms"] == 9000
    assert meta["urls"] == ["https://app.example.com/home"]
    assert meta["user_key"] == "a:anon-1" and meta["browser"] == "Chrome"
    # What is on disk is neither the JSON nor a recognisable part of it.
    blobs = [p for p in (tmp_path / "playback").rglob("*") if p.is_file()]
    assert len(blobs) == 3
    for blob in blobs:
        data = blob.read_bytes()
        assert data.startswith(b"UTC1") and b"app.example.com" not in data and b"href" not in data


def test_bad_chunks_are_refused_with_path_and_reason(live):
    enable_playback(live)
    token = start(live)["token"]
    t0 = 1_800_000_000_000
    cases = [
        (b"not json", "json", 400, "$"),
        (b"[]", "json", 400, "$"),
        (json.dumps([{"type": 9, "data": {}, "timestamp": t0}]).encode(), "json", 400, "$[0].type"),
        (json.dumps([{"type": 3, "data": {}, "timestamp": "now"}]).encode(), "json", 400, "$[0].timestamp"),
        (
            json.dumps(events_at(t0, typed="secret")).encode(),
            "json",
            400,
            "$[1].data.node.childNodes[0].attributes.value",
        ),
        (b"\x1f\x8b\x08garbage", "raw", 400, "enc"),
    ]
    for body, enc, status, path in cases:
        response = send_chunk(live, token, 0, body, enc=enc)
        assert (response.status_code, response.json()["path"]) == (status, path), response.json()
    assert send_chunk(live, "x.y", 0, events_at(t0)).status_code == 401
    assert send_chunk(live, token, -1, events_at(t0)).json()["path"] == "seq"
    with live.client() as client:
        response = client.post(
            "/v1/playback/chunks",
            params={"key": "wk_nope", "token": token, "seq": "0", "enc": "json"},
            content=b"[]",
        )
    assert response.status_code == 401
    assert live.scalar("SELECT count(*) FROM playback_chunks") == 0


def page_with(*nodes: dict, ts: int = 1_800_000_000_000) -> list[dict]:
    """Meta and a full snapshot whose document holds `nodes` (element nodes with ids from 10)."""
    return [
        {"type": 4, "data": {"href": "https://app.example.com/home", "width": 1280, "height": 720}, "timestamp": ts},
        {"type": 2, "data": {"node": {"type": 0, "id": 1, "childNodes": list(nodes)}}, "timestamp": ts + 1},
    ]


def element(node_id: int, tag: str, children: list | None = None, **attributes) -> dict:
    return {"type": 2, "id": node_id, "tagName": tag, "attributes": attributes, "childNodes": children or []}


def mutation(ts: int = 1_800_000_000_100, **data) -> dict:
    return {
        "type": 3,
        "data": {"source": 0, "texts": [], "attributes": [], "removes": [], "adds": [], **data},
        "timestamp": ts,
    }


def typed(node_id: int, text: str) -> dict:
    return {
        "type": 3,
        "data": {"source": 5, "id": node_id, "text": text, "isChecked": False},
        "timestamp": 1_800_000_000_200,
    }


def test_the_server_refuses_private_values_and_blocked_content(live):
    # With an allow-list the server cannot tell which inputs it allows, but passwords and blocked elements it can.
    enable_playback(live, allowed_input_selectors=["#name"], blocked_selectors=["#card", "div.secret"])
    token = start(live)["token"]
    password = element(10, "input", type="password", value="hunter2")
    shown = element(10, "input", type="text", value="hunter2", **{"data-rr-is-password": "true"})
    masked_password = element(10, "input", type="password", value="*******")
    iban = {"type": 3, "textContent": "DE89 3704"}
    refused = [
        (page_with(password), "$[1].data.node.childNodes[0].attributes.value"),
        (page_with(shown), "$[1].data.node.childNodes[0].attributes.value"),
        (
            [*page_with(masked_password), mutation(attributes=[{"id": 10, "attributes": {"value": "hunter2"}}])],
            "$[2].data.attributes[0].attributes.value",
        ),
        ([*page_with(masked_password), typed(10, "hunter2")], "$[2].data.text"),
        # rrweb keeps a blocked element's class and size only; anything more was not blocked by the recorder.
        (page_with(element(11, "div", [iban], **{"class": "wm-hide"})), "$[1].data.node.childNodes[0].childNodes"),
        (page_with(element(11, "div", [iban], id="card")), "$[1].data.node.childNodes[0].childNodes"),
        (page_with(element(11, "div", [iban], **{"class": "secret big"})), "$[1].data.node.childNodes[0].childNodes"),
        (
            page_with(element(11, "div", **{"class": "wm-hide", "rr_width": "10px", "title": "DE89 3704"})),
            "$[1].data.node.childNodes[0].attributes.title",
        ),
        (
            [
                *page_with(element(11, "div", **{"class": "x", "rr_width": "10px", "rr_height": "5px"})),
                mutation(adds=[{"parentId": 11, "nextId": None, "node": {"type": 3, "id": 12, "textContent": "DE89"}}]),
            ],
            "$[2].data.adds[0].parentId",
        ),
        (
            [*page_with(element(11, "div", **{"class": "wm-hide"})), mutation(texts=[{"id": 11, "value": "DE89"}])],
            "$[2].data.texts[0]",
        ),
        (
            mutation(adds=[{"parentId": 1, "nextId": None, "node": element(20, "input", type="password", value="pw")}]),
            "$[0].data.adds[0].node.attributes.value",
        ),
    ]
    for events, path in refused:
        chunk = events if isinstance(events, list) else [events]
        response = send_chunk(live, token, 0, chunk)
        assert (response.status_code, response.json()["path"]) == (400, path), (json.dumps(chunk), response.json())
    assert live.scalar("SELECT count(*) FROM playback_chunks") == 0
    accepted = [
        page_with(element(10, "input", type="text", value="Ada Lovelace", id="name"), masked_password),
        [
            *page_with(masked_password),
            typed(10, "*******"),
            mutation(attributes=[{"id": 10, "attributes": {"value": "**"}}]),
        ],
        page_with(element(11, "div", **{"class": "wm-hide secret", "rr_width": "300px", "rr_height": "40px"})),
        page_with(element(11, "div", [iban], id="cards")),  # not `#card`
        # A value the page sets on an element that is no input (a progress bar) is not typed text.
        [
            *page_with(element(12, "progress", value="3")),
            mutation(attributes=[{"id": 12, "attributes": {"value": "4"}}]),
        ],
    ]
    for seq, events in enumerate(accepted):
        response = send_chunk(live, token, seq, events)
        assert response.status_code == 200, (json.dumps(events), response.json())


def test_without_an_allow_list_every_typed_value_must_be_masked(live):
    enable_playback(live)
    token = start(live)["token"]
    name = element(10, "input", type="email", value="*****")
    box = element(11, "input", type="checkbox", value="on")
    cases = [
        ([*page_with(name), typed(10, "ada@x")], "$[2].data.text"),
        (
            [*page_with(name), mutation(attributes=[{"id": 10, "attributes": {"value": "ada@x"}}])],
            "$[2].data.attributes[0].attributes.value",
        ),
        (page_with(element(10, "textarea", value="dear diary")), "$[1].data.node.childNodes[0].attributes.value"),
    ]
    for events, path in cases:
        response = send_chunk(live, token, 0, events)
        assert (response.status_code, response.json()["path"]) == (400, path), response.json()
    # A checkbox's value is not typed text; an input event about a node of another chunk is the recorder's job.
    assert send_chunk(live, token, 0, [*page_with(name, box), typed(11, "on")]).status_code == 200
    assert send_chunk(live, token, 1, [typed(10, "*****")]).status_code == 200


def test_oversized_chunks_are_refused(make_server):
    raw = len(json.dumps(events_at(1_800_000_000_000)).encode())  # one small chunk
    live = make_server(
        playback_max_chunk_bytes=1000,
        playback_max_chunk_raw_bytes=5000,
        playback_max_recording_bytes=2 * raw + raw // 2,
    )
    enable_playback(live)
    token = start(live)["token"]
    big = [{"type": 5, "data": {"tag": "x", "payload": {"pad": "a" * 800}}, "timestamp": 1}] * 10
    assert send_chunk(live, token, 0, big, enc="json").status_code == 413
    # Compressed it fits the body limit, but not the limit after inflating.
    response = send_chunk(live, token, 0, big, enc="gzip")
    assert (response.status_code, response.json()["path"]) == (413, "$")
    # The recording as a whole: two small chunks fit, the third would pass the limit.
    for seq in (0, 1):
        assert send_chunk(live, token, seq, events_at(1_800_000_000_000 + seq)).status_code == 200
    third = send_chunk(live, token, 2, events_at(1_800_000_000_002))
    assert (third.status_code, third.json()["error"], third.json()["path"]) == (413, "invalid_chunk", "$")
    assert "would exceed" in third.json()["reason"]
    assert send_chunk(live, token, 0, events_at(1_800_000_000_000)).json()["duplicate"] is True  # no new bytes
    assert live.scalar("SELECT raw_bytes FROM playback_recordings") == 2 * raw
    assert live.scalar("SELECT count(*) FROM playback_chunks") == 2


def test_excluded_after_start_stops_the_upload(live):
    enable_playback(live)
    token = start(live)["token"]
    assert send_chunk(live, token, 0, events_at(1_800_000_000_000)).status_code == 200
    assert configure(live, {"playback": {"excluded_domains": ["app.example.com"]}}).status_code == 200
    live.app.state.collector.forget_cached_settings()
    response = send_chunk(live, token, 1, events_at(1_800_000_001_000))
    assert (response.status_code, response.json()["error"]) == (403, "excluded_domain")


def test_quota_counts_sessions_and_resets_on_update(live):
    enable_playback(live)
    assert api(live, "PUT", "/playback/quota", json={"quota": 2}).json()["used"] == 0
    assert start(live, anonymousId="a", sessionId="s-a")["record"] is True
    # A second tab of the same session is recorded without counting again.
    assert start(live, anonymousId="a", sessionId="s-a")["record"] is True
    assert start(live, anonymousId="b", sessionId="s-b")["record"] is True
    assert start(live, anonymousId="c", sessionId="s-c") == {
        "record": False,
        "reason": "quota_reached",
        "method": "automatic",
    }
    usage = api(live, "GET", "/playback/usage").json()
    assert (usage["quota"], usage["used"], usage["remaining"]) == (2, 2, 0)
    updated = api(live, "PUT", "/playback/quota", json={"quota": 3}).json()
    assert (updated["used"], updated["quota"]) == (0, 3)
    assert start(live, anonymousId="c", sessionId="s-c")["record"] is True
    assert api(live, "PUT", "/playback/quota", json={"quota": 0}).status_code == 200
    assert start(live, anonymousId="d", sessionId="s-d")["reason"] == "quota_reached"


def test_quota_overshoot_is_bounded_by_the_recordings_already_running(live):
    enable_playback(live)
    assert api(live, "PUT", "/playback/quota", json={"quota": 1}).status_code == 200
    running = start(live, anonymousId="a", sessionId="s-a")
    assert start(live, anonymousId="b", sessionId="s-b")["reason"] == "quota_reached"
    # The running recording continues on its next pages, and is not counted again.
    resumed = start(live, anonymousId="a", sessionId="s-a", resume=running["token"], url="https://app.example.com/2")
    assert (resumed["record"], resumed["resumed"], resumed["recording_id"]) == (True, True, running["recording_id"])
    assert send_chunk(live, resumed["token"], 0, events_at(1_800_000_000_000)).status_code == 200
    assert api(live, "GET", "/playback/usage").json()["used"] == 1
    assert live.scalar("SELECT count(*) FROM playback_recordings WHERE counted") == 1
    with live.engine.begin() as conn:  # as if it had started 13 hours ago: past the longest session
        conn.execute(sa.text("UPDATE playback_recordings SET started_at = started_at - :h"), {"h": 13 * 3_600_000})
    late = send_chunk(live, running["token"], 1, events_at(1_800_000_000_000))
    assert (late.status_code, late.json()["error"]) == (409, "recording_closed")
    # The tab's next page falls to a new decision, which the quota refuses.
    again = start(live, anonymousId="a", sessionId="s-a-next", resume=running["token"])
    assert again == {"record": False, "reason": "quota_reached", "method": "automatic"}
    assert live.scalar("SELECT count(*) FROM playback_recordings") == 1


def test_quota_period_rolls_over_in_take_and_usage(live):
    pid = live.project.project.id
    with live.engine.begin() as conn:
        quota.set_quota(conn, pid, 2, ms("2026-01-31T10:00:00"))
        assert quota.take(conn, pid, ms("2026-01-31T11:00:00"))
        assert quota.take(conn, pid, ms("2026-02-27T12:00:00"))
        assert not quota.take(conn, pid, ms("2026-02-27T23:59:59"))
        full = quota.usage(conn, pid, ms("2026-02-27T23:59:59"))
        assert (full.used, full.period_start, full.next_reset) == (
            2,
            ms("2026-01-31T10:00:00"),
            ms("2026-02-28T00:00:00"),
        )
        # 28 February: the 31st clamped to the month's end starts a new period, before and after a take.
        assert quota.usage(conn, pid, ms("2026-02-28T00:00:00")).used == 0
        assert quota.take(conn, pid, ms("2026-02-28T08:00:00"))
        feb = quota.usage(conn, pid, ms("2026-02-28T09:00:00"))
        assert (feb.used, feb.period_start, feb.next_reset) == (1, ms("2026-02-28T00:00:00"), ms("2026-03-31T00:00:00"))
        assert quota.take(conn, pid, ms("2026-03-30T09:00:00"))
        assert not quota.take(conn, pid, ms("2026-03-30T10:00:00"))
        assert quota.take(conn, pid, ms("2026-03-31T00:00:00"))


def test_a_quota_update_makes_its_date_the_new_start(live):
    assert api(live, "PUT", "/playback/quota", json={"quota": 5}).status_code == 200
    day = 86_400_000
    with live.engine.begin() as conn:  # activated 40 days ago: the period has rolled over since
        conn.execute(
            sa.text("UPDATE playback_projects SET quota_anchor = quota_anchor - :d, period_start = period_start - :d"),
            {"d": 40 * day},
        )
    before = api(live, "GET", "/playback/usage").json()
    assert before["period_start"] > before["activated_at"] + 9 * day
    t0 = now_ms()
    after = api(live, "PUT", "/playback/quota", json={"quota": 7}).json()
    t1 = now_ms()
    assert t0 <= after["activated_at"] <= t1 and after["period_start"] == after["activated_at"]
    assert after["next_reset"] == next_reset(after["activated_at"], after["activated_at"])
    assert (after["quota"], after["used"]) == (7, 0)


def test_quota_period_resets_on_the_activation_day():
    anchor = ms("2026-01-31T15:00:00")
    assert period_start(anchor, ms("2026-01-31T20:00:00")) == anchor
    assert period_start(anchor, ms("2026-02-27T23:59:59")) == anchor
    assert period_start(anchor, ms("2026-02-28T00:00:00")) == ms("2026-02-28T00:00:00")
    assert period_start(anchor, ms("2026-03-30T12:00:00")) == ms("2026-02-28T00:00:00")
    assert period_start(anchor, ms("2026-03-31T00:00:01")) == ms("2026-03-31T00:00:00")
    assert period_start(anchor, ms("2026-04-30T08:00:00")) == ms("2026-04-30T00:00:00")
    assert period_start(anchor, ms("2028-02-29T01:00:00")) == ms("2028-02-29T00:00:00")
    assert next_reset(anchor, ms("2026-01-31T20:00:00")) == ms("2026-02-28T00:00:00")
    assert next_reset(anchor, ms("2026-12-31T20:00:00")) == ms("2027-01-31T00:00:00")


@given(
    anchor=st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2090, 1, 1)),
    later=st.timedeltas(min_value=dt.timedelta(0), max_value=dt.timedelta(days=4000)),
)
def test_quota_period_contains_now_and_lasts_at_most_a_month(anchor, later):
    a = int(anchor.replace(tzinfo=dt.UTC).timestamp() * 1000)
    now = a + int(later.total_seconds() * 1000)
    start_ms, end_ms = period_start(a, now), next_reset(a, now)
    assert a <= start_ms <= now < end_ms
    assert end_ms - start_ms <= 31 * 86_400_000
    assert dt.datetime.fromtimestamp(end_ms / 1000, dt.UTC).day == min(
        anchor.day, _days_in(dt.datetime.fromtimestamp(end_ms / 1000, dt.UTC))
    )


def _days_in(moment: dt.datetime) -> int:
    import calendar

    return calendar.monthrange(moment.year, moment.month)[1]


def test_each_recording_has_its_own_key_bound_to_its_place(live, tmp_path: Path):
    enable_playback(live)
    one, two = start(live, anonymousId="one", sessionId="s-1"), start(live, anonymousId="two", sessionId="s-2")
    events = [*events_at(1_800_000_000_000), *(events_at(1_800_000_001_000) * 20)]
    for answer in (one, two):
        assert send_chunk(live, answer["token"], 0, events).status_code == 200
    assert send_chunk(live, one["token"], 1, events).status_code == 200
    pid = live.project.project.id
    ring = KeyRing(parse_master_keys((tmp_path / "master.key").read_text()))
    rows = {
        r.recording_id: r
        for r in live.rows("SELECT recording_id, key_version, wrapped_key, raw_bytes FROM playback_recordings")
    }
    keys = {rid: ring.unwrap(pid, r.key_version, rid, bytes(r.wrapped_key)) for rid, r in rows.items()}
    assert keys[one["recording_id"]] != keys[two["recording_id"]] and all(len(k) == 32 for k in keys.values())
    row = rows[one["recording_id"]]
    for project, version, rid in [
        (pid + 1, row.key_version, row.recording_id),
        (pid, row.key_version + 1, row.recording_id),
    ]:
        with pytest.raises(CryptoError):
            ring.unwrap(project, version, rid, bytes(row.wrapped_key))
    with pytest.raises(CryptoError):  # the wrapped key names its recording
        ring.unwrap(pid, row.key_version, two["recording_id"], bytes(row.wrapped_key))
    with pytest.raises(CryptoError):
        KeyRing(parse_master_keys(new_master_key())).unwrap(
            pid, row.key_version, row.recording_id, bytes(row.wrapped_key)
        )

    folder = tmp_path / "playback" / "recordings" / str(pid) / one["recording_id"]
    blobs = sorted(p for p in folder.rglob("*") if p.is_file())
    assert len(blobs) == 2
    key, sealed = keys[one["recording_id"]], blobs[0].read_bytes()
    seq = next(s for s in (0, 1) if _opens(key, pid, one["recording_id"], s, sealed))
    compressed = open_chunk(key, pid, one["recording_id"], seq, sealed)
    raw = json.dumps(events).encode()
    assert compressed[:4] == bytes.fromhex("28B52FFD")  # zstd's magic number: compressed, then encrypted
    assert len(compressed) < len(raw) / 3
    assert json.loads(zstandard.ZstdDecompressor().decompress(compressed)) == events
    # The associated data binds a blob to its recording and sequence number.
    for other in [
        (pid, one["recording_id"], 1 - seq),
        (pid, two["recording_id"], seq),
        (pid + 1, one["recording_id"], seq),
    ]:
        with pytest.raises(CryptoError):
            open_chunk(key, *other, sealed)
    with pytest.raises(CryptoError):
        open_chunk(keys[two["recording_id"]], pid, one["recording_id"], seq, sealed)


def _opens(key: bytes, project_id: int, recording_id: str, seq: int, blob: bytes) -> bool:
    try:
        open_chunk(key, project_id, recording_id, seq, blob)
    except CryptoError:
        return False
    return True


def test_list_filter_and_delete(live, tmp_path: Path):
    enable_playback(live)
    t0 = 1_800_000_000_000
    ids, tokens = {}, {}
    for name, url, seconds in [("ann", "https://app.example.com/cart", 30), ("bob", "https://app.example.com/home", 5)]:
        answer = start(live, anonymousId=name, sessionId="s-" + name)
        end = {"type": 5, "data": {"tag": "end", "payload": {}}, "timestamp": t0 + seconds * 1000}
        events = [*events_at(t0, href=url), end]
        assert send_chunk(live, answer["token"], 0, events).status_code == 200
        ids[name], tokens[name] = answer["recording_id"], answer["token"]

    def listed(**params) -> list[str]:
        response = api(live, "GET", "/playback/recordings", params=params)
        assert response.status_code == 200, response.text
        return sorted(r["recording_id"] for r in response.json()["items"])

    assert listed() == sorted(ids.values())
    assert listed(user="a:ann") == [ids["ann"]]
    assert listed(url="/cart") == [ids["ann"]]
    assert listed(min_duration_ms=10_000) == [ids["ann"]]
    assert listed(max_duration_ms=10_000) == [ids["bob"]]
    assert listed(since="2000-01-01") == sorted(ids.values())
    assert listed(until="2000-01-01") == []
    assert api(live, "GET", "/playback/recordings", params={"since": "yesterday"}).json()["path"] == "since"

    assert api(live, "DELETE", f"/playback/recordings/{ids['ann']}").status_code == 200
    assert api(live, "GET", f"/playback/recordings/{ids['ann']}").status_code == 404
    assert api(live, "GET", f"/playback/recordings/{ids['ann']}/events").status_code == 404
    assert not (tmp_path / "playback" / "recordings" / str(live.project.project.id) / ids["ann"]).exists()
    assert live.scalar("SELECT count(*) FROM playback_chunks WHERE recording_id = :r", r=ids["ann"]) == 0
    actions = live.rows("SELECT action, recording_id FROM activity_log ORDER BY seq")
    assert [tuple(a) for a in actions] == [("delete", ids["ann"])]
    assert recording_events(live, ids["bob"])[0]["type"] == 4
    # Every view and delete goes to the hash-chained playback activity log (access/activity_log.py).
    log = api(live, "GET", "/activity-log").json()
    assert [(e["action"], e["recording_id"]) for e in log["entries"]] == [("view", ids["bob"]), ("delete", ids["ann"])]
    assert api(live, "GET", "/activity-log/verify").json()["ok"] is True
    # Its upload token no longer stores anything.
    response = send_chunk(live, tokens["ann"], 1, events_at(t0))
    assert (response.status_code, response.json()["error"]) == (404, "recording_not_found")


def test_admin_api_needs_an_admin_token_of_the_project(live):
    with live.client(headers={"Authorization": f"Bearer {live.project.write_key}"}) as client:
        assert client.get(f"/api/projects/{live.project.project.id}/playback/usage").status_code == 403
    with live.client() as client:
        assert client.get(f"/api/projects/{live.project.project.id}/playback/recordings").status_code == 401


def cli(*args: str, data_dir: Path, database_url: str, **extra_env: str) -> Ran:
    env: dict[str, str | None] = {
        "USERTRAIL_DATA_DIR": str(data_dir),
        "USERTRAIL_DATABASE_URL": database_url,
        "USERTRAIL_MASTER_KEY": None,
        "USERTRAIL_PLAYBACK_RETENTION_DAYS": None,
        **extra_env,
    }
    return run_cli(*args, env=env, check=True)


def test_key_rotation_keeps_recordings_readable(make_server, database_url, tmp_path: Path):
    live = make_server()
    enable_playback(live)
    answer = start(live)
    events = events_at(1_800_000_000_000)
    assert send_chunk(live, answer["token"], 0, events).status_code == 200
    key_file = tmp_path / "master.key"
    first_master = key_file.read_text().split()
    assert len(first_master) == 1 and oct(key_file.stat().st_mode & 0o777) == "0o600"
    wrapped_before = live.scalar("SELECT wrapped_key FROM playback_recordings")

    out = cli("playback", "rotate-keys", "--new-master-key", data_dir=tmp_path, database_url=database_url).stdout
    assert "1 recording keys re-wrapped" in out
    keys = key_file.read_text().split()
    assert len(keys) == 2 and keys[1] == first_master[0]
    row = live.rows("SELECT key_version, wrapped_key FROM playback_recordings")[0]
    assert row.key_version == 2 and bytes(row.wrapped_key) != bytes(wrapped_before)
    # The running server meets a master key it has not read yet, and reads the key file again.
    assert recording_events(live, answer["recording_id"]) == events
    assert send_chunk(live, start(live, sessionId="s-2", anonymousId="x")["token"], 0, events).status_code == 200

    cli("playback", "rotate-keys", "--drop-old-master-keys", data_dir=tmp_path, database_url=database_url)
    assert key_file.read_text().split() == [keys[0]]
    assert live.scalar("SELECT min(key_version) FROM playback_recordings") == 3
    # A server started now knows only the new master key, and reads every recording.
    fresh = make_server()
    with http_client(base_url=fresh.base_url, headers={"Authorization": f"Bearer {live.project.admin_token}"}) as c:
        read = c.get(f"/api/projects/{live.project.project.id}/playback/recordings/{answer['recording_id']}/events")
    assert read.status_code == 200 and read.json() == events


def test_retention_deletes_old_recordings_with_their_blobs(live, database_url, tmp_path: Path):
    enable_playback(live)
    old, recent = start(live, anonymousId="old", sessionId="s-old"), start(live, anonymousId="new", sessionId="s-new")
    for answer in (old, recent):
        assert send_chunk(live, answer["token"], 0, events_at(1_800_000_000_000)).status_code == 200
    with live.engine.begin() as conn:  # as if it had started 400 days ago
        conn.execute(
            sa.text("UPDATE playback_recordings SET started_at = started_at - :age WHERE recording_id = :r"),
            {"age": 400 * 86_400_000, "r": old["recording_id"]},
        )
    dry = cli("retention", "--dry-run", data_dir=tmp_path, database_url=database_url).stdout
    assert "1 recordings would be deleted (started over 365 days ago)" in dry
    assert live.scalar("SELECT count(*) FROM playback_recordings") == 2
    done = cli("retention", data_dir=tmp_path, database_url=database_url).stdout
    assert "1 recordings were deleted" in done
    assert [r[0] for r in live.rows("SELECT recording_id FROM playback_recordings")] == [recent["recording_id"]]
    folder = tmp_path / "playback" / "recordings" / str(live.project.project.id)
    assert sorted(p.name for p in folder.iterdir()) == [recent["recording_id"]]


def test_retention_periods_from_flag_environment_and_project(live, database_url, tmp_path: Path):
    enable_playback(live)
    assert configure(live, {"uuid": {"provider": "variable", "source": "currentUser.id"}}).status_code == 200
    ids = {}
    for name in ("a", "b", "c"):
        answer = start(live, anonymousId=name, sessionId="s-" + name)
        assert send_chunk(live, answer["token"], 0, events_at(1_800_000_000_000)).status_code == 200
        ids[name] = answer["recording_id"]
    jane = start(live, anonymousId="anon-j", userId="jane", sessionId="s-j")
    assert send_chunk(live, jane["token"], 0, events_at(1_800_000_000_000)).status_code == 200
    for rid in [*ids.values(), jane["recording_id"]]:
        recording_events(live, rid)  # four views in the activity log

    def age(name: str) -> None:  # as if it had started 40 days ago
        with live.engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE playback_recordings SET started_at = started_at - :age WHERE recording_id = :r"),
                {"age": 40 * 86_400_000, "r": ids[name]},
            )

    def left() -> set[str]:
        return {r[0] for r in live.rows("SELECT recording_id FROM playback_recordings")}

    age("a")
    assert (
        "1 recordings were deleted"
        in cli("retention", "--playback-days", "30", data_dir=tmp_path, database_url=database_url).stdout
    )
    assert left() == {ids["b"], ids["c"], jane["recording_id"]}
    age("b")
    out = cli("retention", data_dir=tmp_path, database_url=database_url, USERTRAIL_PLAYBACK_RETENTION_DAYS="30")
    assert "1 recordings were deleted (started over 30 days ago)" in out.stdout
    assert left() == {ids["c"], jane["recording_id"]}
    # The server's daily run: the installation keeps recordings 365 days, until the project says 30.
    age("c")
    app = live.app.state
    run_retention(app.collector, app.playback.store, app.playback.assets, now_ms())
    assert ids["c"] in left()
    assert api(live, "PUT", "/retention", json={"playback_days": 30}).status_code == 200
    run_retention(app.collector, app.playback.store, app.playback.assets, now_ms())
    assert left() == {jane["recording_id"]}
    # Erasing an end user deletes their recording too; none of this touches the activity log.
    assert api(live, "DELETE", "/users/u:jane").json()["recordings"] == 1
    log = api(live, "GET", "/activity-log").json()["entries"]
    assert sorted(e["recording_id"] for e in log) == sorted([*ids.values(), jane["recording_id"]])
    assert {e["action"] for e in log} == {"view"}
    assert api(live, "GET", "/activity-log/verify").json()["ok"] is True


def test_the_activity_log_has_no_route_that_changes_it(live):
    def paths(routes, prefix: str = ""):
        for route in routes:
            inner = getattr(route, "routes", None)
            if inner is not None:
                yield from paths(inner, prefix + getattr(route, "path", ""))
            else:
                yield prefix + route.path, getattr(route, "methods", None) or set()

    logged = [(path, methods) for path, methods in paths(live.app.routes) if "activity-log" in path]
    assert len(logged) >= 3 and all(methods <= {"GET", "HEAD"} for _, methods in logged), logged
    base = f"/api/projects/{live.project.project.id}/activity-log"
    for path in (base, base + ".csv", base + "/verify", base + "/1"):
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            response = api(live, method, path.removeprefix(f"/api/projects/{live.project.project.id}"))
            assert response.status_code in (404, 405), (method, path, response.status_code)


@pytest.fixture
def s3_endpoint(monkeypatch) -> Iterator[str]:
    """An S3 service (moto, in server mode) on 127.0.0.1 with an empty bucket `recordings`."""
    from moto.server import ThreadedMotoServer

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=url).create_bucket(Bucket="recordings")
    yield url
    server.stop()


def test_s3_engine_round_trip(make_server, s3_endpoint, tmp_path: Path):
    live = make_server(playback_store="s3://recordings/usertrail", s3_endpoint_url=s3_endpoint)
    enable_playback(live)
    answer = start(live)
    events = events_at(1_800_000_000_000)
    assert send_chunk(live, answer["token"], 0, events).status_code == 200
    assert send_chunk(live, answer["token"], 0, events).json()["duplicate"] is True
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    prefix = f"usertrail/recordings/{live.project.project.id}/{answer['recording_id']}/"
    objects = s3.list_objects_v2(Bucket="recordings", Prefix=prefix).get("Contents", [])
    assert len(objects) == 1
    body = s3.get_object(Bucket="recordings", Key=objects[0]["Key"])["Body"].read()
    assert body.startswith(b"UTC1") and b"href" not in body
    assert not (tmp_path / "playback").exists()
    assert recording_events(live, answer["recording_id"]) == events
    assert api(live, "DELETE", f"/playback/recordings/{answer['recording_id']}").status_code == 200
    assert s3.list_objects_v2(Bucket="recordings", Prefix="usertrail/").get("KeyCount") == 0


def test_exporting_and_erasing_an_end_user_covers_their_recordings(live, tmp_path: Path):
    enable_playback(live)
    assert configure(live, {"uuid": {"provider": "variable", "source": "currentUser.id"}}).status_code == 200
    jane = start(live, anonymousId="anon-j", userId="jane")
    other = start(live, anonymousId="anon-o", sessionId="s-o")
    for answer in (jane, other):
        assert send_chunk(live, answer["token"], 0, events_at(1_800_000_000_000)).status_code == 200
    exported = api(live, "GET", "/users/u:jane/export")
    assert exported.status_code == 200, exported.text
    assert [r["recording_id"] for r in exported.json()["recordings"]] == [jane["recording_id"]]
    erased = api(live, "DELETE", "/users/u:jane")
    assert erased.status_code == 200 and erased.json()["recordings"] == 1
    assert [r[0] for r in live.rows("SELECT recording_id FROM playback_recordings")] == [other["recording_id"]]
    folder = tmp_path / "playback" / "recordings" / str(live.project.project.id)
    assert [p.name for p in folder.iterdir()] == [other["recording_id"]]
