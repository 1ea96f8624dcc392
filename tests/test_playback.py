"""Session Playback through the HTTP API: who is recorded, chunk intake, encrypted storage, quota, reads."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from cli_runner import Ran, run_cli
from usertrail.playback.quota import next_reset, period_start
from usertrail.testing.postgres import free_port

from conftest import CHROME_UA, LiveServer
from playback_helpers import (
    ANDROID_UA,
    FIREFOX_UA,
    IPHONE_UA,
    SAFARI_7_UA,
    SAFARI_8_UA,
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
        (SAFARI_8_UA, True),
        (SAFARI_7_UA, False),
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


def test_oversized_chunks_are_refused(make_server):
    live = make_server(playback_max_chunk_bytes=1000, playback_max_chunk_raw_bytes=5000)
    enable_playback(live)
    token = start(live)["token"]
    big = [{"type": 5, "data": {"tag": "x", "payload": {"pad": "a" * 800}}, "timestamp": 1}] * 10
    assert send_chunk(live, token, 0, big, enc="json").status_code == 413
    # Compressed it fits the body limit, but not the limit after inflating.
    response = send_chunk(live, token, 0, big, enc="gzip")
    assert (response.status_code, response.json()["path"]) == (413, "$")


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


def cli(*args: str, data_dir: Path, database_url: str) -> Ran:
    env = {"USERTRAIL_DATA_DIR": str(data_dir), "USERTRAIL_DATABASE_URL": database_url, "USERTRAIL_MASTER_KEY": None}
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
    with httpx.Client(base_url=fresh.base_url, headers={"Authorization": f"Bearer {live.project.admin_token}"}) as c:
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
