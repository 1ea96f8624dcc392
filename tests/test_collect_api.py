"""Collection through the real HTTP server, on SQLite and PostgreSQL."""

from __future__ import annotations

import ipaddress
import json

import msgspec

from usertrail.collect.pipeline import hash_identifier
from usertrail.store.events import EventStore

from conftest import CHROME_UA, LiveServer
from samples import SPEC_EVENT, now_ms, walkme_body, walkme_event


def tell(live: LiveServer, events: list[dict], key: str | None = None, **kwargs):
    with live.client(**kwargs.pop("client", {})) as client:
        return client.post(
            f"/event/tell?key={key or live.project.write_key}",
            content=walkme_body(events, kwargs.pop("client_ts", None)),
            headers={"Content-Type": "text/plain", **kwargs.pop("headers", {})},
        )


def native(live: LiveServer, batch: list[dict], key: str | None = None, **envelope):
    with live.client() as client:
        return client.post(
            f"/v1/batch?key={key or live.project.write_key}",
            content=msgspec.json.encode({"batch": batch, **envelope}),
            headers={"Content-Type": "text/plain"},  # what navigator.sendBeacon sends
        )


def patch_env(live: LiveServer, settings: dict, env: str = "production"):
    with live.admin() as admin:
        response = admin.patch(f"/api/projects/{live.project.project.id}/environments/{env}", json=settings)
    assert response.status_code == 200, response.text
    return response


def test_spec_event_stored_with_every_field(live):
    response = tell(live, [SPEC_EVENT], client_ts=SPEC_EVENT["time"] + 1000)
    assert response.status_code == 200 and response.text == "ok"
    [row] = live.rows("SELECT * FROM events")
    assert json.loads(row.payload) == SPEC_EVENT
    assert row.user_key == "a:7302c5a9-9dbf-ef49-e898-8fce4d0add48"
    assert (row.type, row.app_type, row.object_id, row.object_name) == ("play", "wt", "124909", "Log in")
    assert (row.url_host, row.url_path, row.title) == (
        "shopme.walkme.com",
        "/product/pink-alligator/",
        "Pink Alligator - ShopMe",
    )
    assert row.session_hint == SPEC_EVENT["sId"] and row.env == "production" and row.source == "walkme"
    assert (row.browser, row.os, row.device_type) == ("Chrome", "Windows", "desktop")
    assert row.ip_masked == "127.0.0.0"
    # Sent a second after the event by a client whose clock is far behind: time is corrected.
    assert abs(row.ts - (now_ms() - 1000)) < 5_000
    assert row.client_ts == SPEC_EVENT["time"]
    # The client's screen, time zone, frame and WalkMe's recorder versions (env.*, ctx.isIframe, version.*).
    assert (row.screen_width, row.screen_height, row.tz_offset, row.in_iframe) == (1249, 561, -120, False)
    assert (row.lib_version, row.pe_version) == ("20190306-123518-32b80d9f", "5.0.0")


def test_native_client_facts_are_mapped_when_they_are_numbers(live):
    batch = [
        {"type": "page", "anonymousId": "a", "messageId": "1",
         "context": {"screen": {"width": 1440, "height": 900.0, "density": 2}, "timezone": 300}},
        # Free-form elsewhere (Segment sends other shapes): kept in the payload, not refused, not mapped.
        {"type": "page", "anonymousId": "a", "messageId": "2",
         "context": {"screen": "1440x900", "timezone": "America/New_York"}},
        {"type": "page", "anonymousId": "a", "messageId": "3", "context": {"screen": {"width": 1e300}}},
    ]  # fmt: skip
    assert native(live, batch).status_code == 200
    rows = live.rows("SELECT screen_width, screen_height, tz_offset, in_iframe, payload FROM events ORDER BY event_id")
    facts = {json.loads(r.payload)["messageId"]: tuple(r)[:4] for r in rows}
    assert facts == {"1": (1440, 900, 300, None), "2": (None, None, None, None), "3": (None, None, None, None)}
    assert json.loads(rows[0].payload)["context"]["screen"]  # the payload keeps what was sent


def test_json_object_and_array_content_types(live):
    with live.client() as client:
        url = f"/event/tell?key={live.project.write_key}"
        one = client.post(url, json=walkme_event(time=now_ms() - 5000))
        many = client.post(url, json=[walkme_event(time=now_ms() - 4000), walkme_event(time=now_ms() - 3000)])
    assert (one.status_code, one.text, many.status_code) == (200, "ok", 200)
    assert live.scalar("SELECT count(*) FROM events") == 3


def test_resent_events_are_stored_once(live):
    base = now_ms()
    events = [walkme_event(time=base - i) for i in range(5)]
    assert tell(live, events).status_code == 200
    assert tell(live, events).status_code == 200
    assert live.scalar("SELECT count(*) FROM events") == 5
    batch = [{"type": "track", "event": "Clicked", "anonymousId": "a1", "messageId": "msg-1"}]
    first, again = native(live, batch), native(live, batch)
    # Both are accepted (durable); indexing recognises the second as a re-send and counts it as a duplicate.
    assert first.json()["accepted"] == 1 and again.json()["accepted"] == 1
    assert live.scalar("SELECT count(*) FROM events WHERE source = 'native'") == 1
    with live.admin() as admin:
        drops = admin.get(f"/api/projects/{live.project.project.id}/drops").json()
    assert drops["by_reason"]["duplicate"] == 6


def test_native_batch_and_clock_skew(live):
    client_now = now_ms() - 3_600_000  # the browser's clock is an hour slow
    response = native(
        live,
        [
            {
                "type": "identify",
                "userId": "jane",
                "anonymousId": "anon-1",
                "traits": {"role": "admin"},
                "timestamp": client_now - 2000,
            },
            {
                "type": "track",
                "event": "Report exported",
                "anonymousId": "anon-1",
                "userId": "jane",
                "properties": {"format": "csv"},
                "timestamp": client_now - 1000,
                "context": {"page": {"url": "https://app.example.com/reports?id=4", "title": "Reports"}},
            },
        ],
        sentAt=client_now,
    )
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 2
    # Default UUID settings (WalkMe ID) allow no identified id: "jane" never reaches storage.
    rows = live.rows("SELECT * FROM events ORDER BY ts")
    assert all("jane" not in (r.payload + str(r.user_id) + r.user_key) for r in rows)
    patch_env(live, {"uuid": {"provider": "variable", "source": "currentUser.id"}})
    later = now_ms()
    native(
        live,
        [{"type": "page", "name": "Home", "anonymousId": "anon-1", "userId": "jane", "timestamp": later - 500}],
        sentAt=later,
    )
    with live.admin() as admin:
        events = admin.get(f"/api/projects/{live.project.project.id}/users/u:jane/events").json()["events"]
    assert [e["type"] for e in events] == ["page"]
    assert events[0]["id_source"] == "variable"
    assert abs(events[0]["ts"] - (later - 500)) < 5_000
    track = next(r for r in rows if r.type == "track")
    assert (track.name, track.url_host, track.url_path, track.title) == (
        "Report exported",
        "app.example.com",
        "/reports",
        "Reports",
    )
    assert abs(track.ts - (now_ms() - 1000)) < 10_000  # skew-corrected: not an hour ago


def test_partial_batch_stores_valid_events_and_keeps_rejected_ones(live):
    good = walkme_event(time=now_ms() - 10)
    bad = walkme_event(time=now_ms() - 5, data_oId={"nested": True})
    response = tell(live, [good, bad])
    assert response.status_code == 400
    body = response.json()
    assert body["accepted"] == 1 and body["rejected"] == 1
    [error] = body["errors"]
    assert (error["index"], error["path"]) == (2, "$.data.oId")
    assert live.scalar("SELECT count(*) FROM events") == 1
    pid = live.project.project.id
    with live.admin() as admin:
        [item] = admin.get(f"/api/projects/{pid}/rejected").json()["items"]
        assert json.loads(item["payload"]) == bad and item["path"] == "$.data.oId"
        assert item["reason"] == error["code"] == "invalid" and item["message"] == error["reason"]
        assert item["message"].startswith("Expected `"), item["message"]
        assert admin.get(f"/api/projects/{pid}/drops").json()["rejected_pending"] == 1
        fixed = json.dumps(walkme_event(time=bad["time"], data_oId=999))
        result = admin.post(
            f"/api/projects/{pid}/rejected/reprocess", json={"ids": [item["id"]], "payloads": {item["id"]: fixed}}
        ).json()
        assert result["results"] == [{"id": item["id"], "status": "stored"}]
        assert admin.get(f"/api/projects/{pid}/rejected").json()["items"] == []
        done = admin.get(f"/api/projects/{pid}/rejected?status=reprocessed").json()["items"]
        assert [d["id"] for d in done] == [item["id"]]
    assert live.scalar("SELECT count(*) FROM events WHERE object_id = '999'") == 1


def test_a_whole_body_refused_unread_is_reprocessed_as_the_batch_it_was(live):
    """A request over the events-per-batch limit, and one that is not JSON, are kept whole (index -1);
    re-processing reads them as batches again: the events go their ways, a bad one as a row of its own."""
    pid = live.project.project.id
    base = now_ms() - 60_000
    too_many = [walkme_event(time=base + i, data_oId=i) for i in range(501)]
    too_many[7] = walkme_event(time=base + 7, data_oId={"nested": True})  # still invalid when re-read
    too_many[9] = walkme_event(time=base + 9, type="pageChange", data={})  # above the tracking level below
    patch_env(live, {"tracking_level": "engagement"})
    # Sent by a client whose clock is a minute slow: its header's send time says so.
    assert tell(live, too_many, client_ts=base + 1_000).status_code == 400
    malformed = json.dumps([walkme_event(time=base + 600, data_oId=600)])[:-3]
    with live.client() as client:
        url = f"/event/tell?key={live.project.write_key}"
        assert client.post(url, content=malformed, headers={"Content-Type": "application/json"}).status_code == 400
    assert live.scalar("SELECT count(*) FROM events") == 0
    with live.admin() as admin:
        kept = admin.get(f"/api/projects/{pid}/rejected").json()["items"]
        assert [k["batch_index"] for k in kept] == [-1, -1] and "per batch" in kept[0]["message"]
        ids = [k["id"] for k in kept]
        # The malformed one is fixed by the admin; the other is sent through as it was.
        fixed = json.dumps([walkme_event(time=base + 600, data_oId=600)])
        results = admin.post(f"/api/projects/{pid}/rejected/reprocess", json={"ids": ids, "payloads": {ids[1]: fixed}})
        assert results.json()["results"] == [
            {"id": ids[0], "status": "stored", "batch": {"stored": 499, "dropped": 1, "rejected": 1}},
            {"id": ids[1], "status": "stored", "batch": {"stored": 1, "dropped": 0, "rejected": 0}},
        ]
        [again] = admin.get(f"/api/projects/{pid}/rejected").json()["items"]
        assert (again["batch_index"], again["path"]) == (8, "$.data.oId")  # line 8: the header is line 0
        assert admin.get(f"/api/projects/{pid}/drops").json()["by_reason"] == {"above_tracking_level": 1}
    assert live.scalar("SELECT count(*) FROM events") == 500
    # The header's send time still corrects the clock skew of the re-read events.
    skews = live.rows("SELECT DISTINCT ts - client_ts AS skew FROM events WHERE object_id <> '600'")
    assert len(skews) == 1 and 58_000 <= skews[0].skew <= 61_000, skews


def test_unknown_environment_is_kept_and_reprocessed_after_the_fix(live):
    staged = walkme_event(time=now_ms() - 10, wm_env=3)
    response = tell(live, [staged])
    assert response.status_code == 400
    assert response.json()["errors"][0]["code"] == "unknown_environment"
    pid = live.project.project.id
    with live.admin() as admin:
        created = admin.put(f"/api/projects/{pid}/environments/stage", json={"walkme_env": 3})
        assert created.status_code == 200, created.text
        [item] = admin.get(f"/api/projects/{pid}/rejected").json()["items"]
        result = admin.post(f"/api/projects/{pid}/rejected/reprocess", json={"ids": [item["id"]]}).json()
    assert result["results"][0]["status"] == "stored"
    assert live.scalar("SELECT env FROM events") == "stage"


def test_request_level_errors(live):
    pid = live.project.project.id
    with live.client() as client:
        url = f"/event/tell?key={live.project.write_key}"
        malformed = client.post(url, content=b"[{", headers={"Content-Type": "application/json"})
        assert malformed.status_code == 400 and malformed.json()["path"] == "$"
        too_many = client.post(url, content=walkme_body([SPEC_EVENT] * 501), headers={"Content-Type": "text/plain"})
        assert too_many.status_code == 400 and "per batch" in too_many.json()["reason"]
        huge = client.post(url, content=b"x" * 1_100_000, headers={"Content-Type": "text/plain"})
        assert huge.status_code == 413
        no_key = client.post("/event/tell", content=walkme_body([walkme_event(wm_uId="unknown")]))
        assert no_key.status_code == 401 and no_key.json()["path"] == "key"
        bad_key = client.post("/event/tell?key=wk_nope", content=walkme_body([SPEC_EVENT]))
        assert bad_key.status_code == 401
        unknown_field = client.post(
            f"/v1/batch?key={live.project.write_key}",
            json={"batch": [{"type": "track", "event": "x", "anonymousId": "a", "colour": 1}]},
        )
        assert unknown_field.status_code == 400
        assert unknown_field.json()["errors"][0]["path"] == "$.batch[0]"
        assert "colour" in unknown_field.json()["errors"][0]["reason"]
    # A body that could not be read at all is still kept, whole.
    with live.admin() as admin:
        kept = admin.get(f"/api/projects/{pid}/rejected").json()["items"]
    assert any(item["payload"] == "[{" for item in kept)


def test_keys_never_cross_projects(live):
    other = live.projects.create("other project")
    mine = live.project
    assert tell(live, [walkme_event(time=now_ms() - 1)], key=other.write_key).status_code == 200
    assert live.scalar("SELECT project_id FROM events") == other.project.id
    with live.admin(mine.admin_token) as admin:
        assert admin.get(f"/api/projects/{other.project.id}").status_code == 403
        assert admin.get(f"/api/projects/{other.project.id}/users/a:x/events").status_code == 403
        assert admin.get(f"/api/projects/{mine.project.id}/stats").json()["events"] == 0
    with live.admin(other.admin_token) as admin:
        assert admin.get(f"/api/projects/{other.project.id}/stats").json()["events"] == 1
    with live.admin(mine.write_key) as writer:  # a write key cannot read
        assert writer.get(f"/api/projects/{mine.project.id}/stats").status_code == 403
    with live.client() as anonymous:
        assert anonymous.get(f"/api/projects/{mine.project.id}/stats").status_code == 401


def test_walkme_recorder_without_key_routes_by_account_id(live):
    account = "3210be7ad82f403298f7c4da065ec657"
    routed = live.projects.create("walkme account", walkme_account_id=account)
    with live.client() as client:
        response = client.post(
            "/event/tell",
            content=walkme_body([walkme_event(time=now_ms() - 3)]),
            headers={"Content-Type": "text/plain"},
        )
    assert response.status_code == 200
    assert live.scalar("SELECT project_id FROM events") == routed.project.id
    # Another account's events cannot ride along into this project: the request is refused whole.
    other = "0123456789abcdef0123456789abcdef"
    live.projects.create("another walkme account", walkme_account_id=other)
    mixed = [walkme_event(time=now_ms() - 2), walkme_event(time=now_ms() - 1, wm_uId=other)]
    with live.client() as client:
        response = client.post("/event/tell", content=walkme_body(mixed), headers={"Content-Type": "text/plain"})
    assert response.status_code == 400 and response.json()["path"] == "$.wm.uId"
    assert other in response.json()["reason"] and "index 2" in response.json()["reason"]
    assert live.scalar("SELECT count(*) FROM events") == 1
    assert live.scalar("SELECT count(*) FROM rejected_events") == 0


def test_tracking_level_and_drop_counts(live):
    patch_env(live, {"tracking_level": "engagement"})
    page = walkme_event(type="pageChange", time=now_ms() - 20, data={})
    play = walkme_event(time=now_ms() - 10)
    assert tell(live, [page, play]).status_code == 200
    assert [r.type for r in live.rows("SELECT type FROM events")] == ["play"]
    with live.admin() as admin:
        drops = admin.get(f"/api/projects/{live.project.project.id}/drops").json()
    assert drops["by_reason"] == {"above_tracking_level": 1}
    assert drops["rows"][0]["env"] == "production"


def test_url_and_title_collection_off(live):
    patch_env(live, {"collect_url": False, "collect_title": False})
    tell(live, [walkme_event(time=now_ms() - 10)])
    native(
        live,
        [
            {
                "type": "page",
                "anonymousId": "a",
                "name": "x",
                "context": {"page": {"url": "https://app.example.com/secret/42", "title": "Secret"}},
                "properties": {"url": "https://app.example.com/secret/42", "title": "Secret"},
            }
        ],
    )
    for row in live.rows("SELECT * FROM events"):
        assert row.url_host is None and row.url_path is None and row.title is None
        assert "secret" not in row.payload.lower() and "pink" not in row.payload.lower()
        assert "shopme.walkme.com" not in row.payload


def test_identified_ids_follow_uuid_settings(live):
    identified = walkme_event(time=now_ms() - 10, wm_euIdSource="Identifier", wm_euId="jane@example.com")
    tell(live, [identified])  # default provider walkme_id: no identified ids kept
    row = live.rows("SELECT * FROM events")[0]
    assert "jane" not in row.payload and "jane" not in row.user_key and row.user_id is None
    assert row.user_key == "a:" + hash_identifier("jane@example.com", "")
    patch_env(live, {"uuid": {"provider": "variable", "source": "user.email", "hash": True, "salt": "s1"}})
    tell(live, [walkme_event(time=now_ms() - 5, wm_euIdSource="Identifier", wm_euId="jane@example.com")])
    hashed = hash_identifier("jane@example.com", "s1")
    row = live.rows("SELECT * FROM events WHERE user_id IS NOT NULL")[0]
    assert row.user_id == hashed and row.user_key == "u:" + hashed and row.id_source == "variable"
    assert json.loads(row.payload)["wm"]["euId"] == hashed
    patch_env(live, {"uuid": {"hash": False}})
    tell(live, [walkme_event(time=now_ms() - 3)])  # anonymous id while the provider has none
    fallback = live.rows("SELECT * FROM events WHERE user_key LIKE 'a:7302%'")[0]
    assert fallback.id_source == "anonymous_fallback"


def test_forwarded_for_is_not_believed_without_trusted_proxies(live):
    """The server's own uvicorn options (config.UVICORN_OPTIONS) leave the client address to
    enrich/ip.py: a local client cannot claim another address, country or security-log entry."""
    assert tell(live, [walkme_event()], headers={"X-Forwarded-For": "8.8.8.8"}).status_code == 200
    [row] = live.rows("SELECT ip_masked, country FROM events")
    assert (row.ip_masked, row.country) == ("127.0.0.0", None)
    assert live.scalar("SELECT count(*) FROM security_log WHERE ip = '8.8.8.8'") == 0


def test_traffic_rules(make_server):
    live = make_server(trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),))
    patch_env(
        live,
        {
            "traffic": {
                "excluded_ips": ["81.2.69.160", "10.0.*", "192.168.0.0/16"],
                "excluded_domains": ["*.internal.example.com"],
                "excluded_user_agents": ["QA-Robot"],
            }
        },
    )
    ts = now_ms()
    for i, ip in enumerate(["81.2.69.160", "10.0.7.7", "192.168.44.1", "8.8.8.8"]):
        tell(live, [walkme_event(time=ts - 100 + i)], headers={"X-Forwarded-For": ip})
    internal = walkme_event(time=ts - 50, ctx_location={"hostname": "qa.internal.example.com", "pathname": "/"})
    tell(live, [internal], headers={"X-Forwarded-For": "8.8.8.8"})
    tell(live, [walkme_event(time=ts - 40)], headers={"X-Forwarded-For": "8.8.8.8", "User-Agent": "QA-Robot 1.0"})
    tell(live, [walkme_event(time=ts - 30)], headers={"X-Forwarded-For": "8.8.8.8", "User-Agent": "Googlebot/2.1"})
    [row] = live.rows("SELECT * FROM events")
    assert (row.country, row.ip_masked) == ("US", "8.8.8.0")
    with live.admin() as admin:
        drops = admin.get(f"/api/projects/{live.project.project.id}/drops").json()["by_reason"]
    assert drops == {"excluded_ip": 3, "excluded_domain": 1, "excluded_user_agent": 1, "bot": 1}
    # The full IP is kept only in the security log, which is purged after its retention.
    assert "8.8.8.8" not in {r.ip_masked for r in live.rows("SELECT ip_masked FROM events")}
    assert live.scalar("SELECT count(*) FROM security_log WHERE ip = '8.8.8.8'") == 4
    assert EventStore(live.engine).purge_security_log(now_ms() + 1) >= 7
    assert live.scalar("SELECT count(*) FROM security_log") == 0


def test_settings_validation_names_the_field(live):
    pid = live.project.project.id
    with live.admin() as admin:
        url = f"/api/projects/{pid}/environments/production"
        unknown = admin.patch(url, json={"tracking_levle": "dxa"})
        assert unknown.status_code == 400 and "tracking_levle" in unknown.json()["reason"]
        wrong = admin.patch(url, json={"tracking_level": "everything"})
        assert wrong.status_code == 400 and wrong.json()["path"] == "$.tracking_level"
        bad_ip = admin.patch(url, json={"traffic": {"excluded_ips": ["10.0.0.1", "nope"]}})
        assert bad_ip.status_code == 400 and bad_ip.json()["path"] == "$.traffic.excluded_ips[1]"
        clash = admin.put(f"/api/projects/{pid}/environments/qa", json={"walkme_env": 0})
        assert clash.status_code == 400 and clash.json()["path"] == "$.walkme_env"
        project = admin.get(f"/api/projects/{pid}").json()
    assert set(project["environments"]) == {"production", "test"}
    assert project["environments"]["production"]["tracking_level"] == "dxa"
    assert 'data-key="wk_' in project["snippets"]["test"]


def test_cors_only_for_configured_origins(live):
    patch_env(live, {"allowed_origins": ["https://app.example.com"]})
    live.app.state.collector.forget_cached_settings()
    body = msgspec.json.encode({"batch": [{"type": "track", "event": "x", "anonymousId": "a"}]})
    key = live.project.write_key
    with live.client() as client:
        ok = client.post(f"/v1/batch?key={key}", content=body, headers={"Origin": "https://app.example.com"})
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == "https://app.example.com"
        refused = client.post(f"/v1/batch?key={key}", content=body, headers={"Origin": "https://evil.example"})
        assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers
        preflight = client.options(
            f"/v1/batch?key={key}",
            headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
        assert client.options(f"/v1/batch?key={key}", headers={"Origin": "https://evil.example"}).status_code == 403
    assert live.scalar("SELECT count(*) FROM events") == 1


def test_key_rotation_with_grace(live):
    pid, old = live.project.project.id, live.project.write_key
    with live.admin() as admin:
        rotated = admin.post(f"/api/projects/{pid}/keys/rotate", json={"kind": "write", "grace_seconds": 0})
    assert rotated.status_code == 201
    new = rotated.json()["key"]
    live.app.state.collector.forget_cached_settings()
    assert tell(live, [walkme_event(time=now_ms() - 2)], key=old).status_code == 401
    assert tell(live, [walkme_event(time=now_ms() - 1)], key=new).status_code == 200
    with live.admin() as admin:
        graceful = admin.post(f"/api/projects/{pid}/keys/rotate", json={"kind": "write"}).json()
    assert graceful["previous_keys_expire_in_seconds"] == 86_400
    live.app.state.collector.forget_cached_settings()
    assert tell(live, [walkme_event(time=now_ms())], key=new).status_code == 200


def test_snippet_and_config(live):
    with live.client() as client:
        js = client.get("/snippet.js")
        assert js.status_code == 200 and "usertrail" in js.text
        config = client.get(f"/v1/config?key={live.project.write_key}&env=test").json()
        assert config["uuid"]["provider"] == "walkme_id" and config["environment"] == "test"
        assert client.get("/v1/config?key=nope").status_code == 401


PYTHON_REQUESTS = "python-requests/2.31.0"
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def test_walkme_env_names_the_browser_when_a_server_forwards_the_events(live):
    """No browser sent the request (an HTTP library's User-Agent, or none): the WalkMe event's own
    `env.*` give browser, version, OS and device. A browser's request keeps its parsed User-Agent, and
    an event without `env` from an HTTP library is a bot."""
    t = now_ms()
    phone_env = {
        "browser": {"name": "Mobile Safari", "version": "17.4"},
        "os": {"name": "iOS"},
        "mobile": True,
        "screen": {"height": 844, "width": 390},
        "timezone": -60,
    }
    phone = walkme_event(time=t - 50, wm_euId="phone", env=phone_env)
    bare = {k: v for k, v in walkme_event(time=t - 40, wm_euId="bare").items() if k != "env"}
    server = {"headers": {"User-Agent": PYTHON_REQUESTS}}
    forwarded = tell(live, [walkme_event(time=t - 60), phone, bare], client=server)
    assert forwarded.status_code == 200 and forwarded.text == "ok"
    assert tell(live, [walkme_event(time=t - 30, wm_euId="no-ua")], client={"headers": {"User-Agent": ""}}).text == "ok"
    assert tell(live, [walkme_event(time=t - 20, wm_euId="browser")]).text == "ok"  # Chrome 124 sent it
    assert tell(live, [walkme_event(time=t - 10, wm_euId="crawler")], client={"headers": {"User-Agent": GOOGLEBOT}})
    rows = {r.user_key[2:]: r for r in live.rows("SELECT * FROM events")}
    columns = {k: (r.browser, r.browser_version, r.os, r.device_type, bool(r.is_mobile)) for k, r in rows.items()}
    spec_browser = ("Chrome", "72.0.3626.121", "Windows", "desktop", False)
    assert columns == {
        SPEC_EVENT["wm"]["euId"]: spec_browser,
        "phone": ("Mobile Safari", "17.4", "iOS", "mobile", True),
        "no-ua": spec_browser,
        "browser": ("Chrome", "124.0.0", "Windows", "desktop", False),
    }
    # Screen, time zone, iframe flag and library version are kept only in the payload.
    assert json.loads(rows["phone"].payload)["env"] == phone_env
    with live.admin() as admin:
        drops = admin.get(f"/api/projects/{live.project.project.id}/drops").json()["by_reason"]
    assert drops == {"bot": 2}  # the event without `env` from python-requests, and Googlebot's


def test_walkme_env_ctx_and_version_are_type_checked(live):
    t = now_ms()
    wrong = [
        walkme_event(time=t - 4, version={"lib": 20190306, "pe": "5.0.0"}),
        walkme_event(time=t - 3, version="5.0.0"),
        walkme_event(time=t - 2, ctx_isIframe="no"),
        walkme_event(time=t - 1, env={**SPEC_EVENT["env"], "timezone": "CET"}),
    ]
    response = tell(live, [*wrong, walkme_event(time=t)])
    assert response.status_code == 400
    assert [(e["index"], e["path"]) for e in response.json()["errors"]] == [
        (1, "$.version.lib"),
        (2, "$.version"),
        (3, "$.ctx.isIframe"),
        (4, "$.env.timezone"),
    ]
    assert response.json()["accepted"] == 1


def test_bots_are_stored_when_drop_bots_is_off(live):
    """HTTP libraries count as bots (server-side senders name the browser: native `context.userAgent`,
    WalkMe `env`); with `traffic.drop_bots` off, Googlebot's and curl's events are stored."""
    curl = {"headers": {"User-Agent": "curl/8.5.0"}}
    batch = [{"type": "track", "event": "Signed up", "anonymousId": "server-side"}]
    assert tell(live, [walkme_event(time=now_ms() - 9)], client={"headers": {"User-Agent": GOOGLEBOT}}).text == "ok"
    with live.client(**curl) as client:
        url = f"/v1/batch?key={live.project.write_key}"
        assert client.post(url, json={"batch": batch}).json()["dropped"] == {"bot": 1}
        named = [{**batch[0], "messageId": "m2", "context": {"userAgent": CHROME_UA}}]
        assert client.post(url, json={"batch": named}).json()["accepted"] == 1
    assert [r.browser for r in live.rows("SELECT browser FROM events")] == ["Chrome"]
    patch_env(live, {"traffic": {"drop_bots": False}})
    live.app.state.collector.forget_cached_settings()
    assert tell(live, [walkme_event(time=now_ms() - 5)], client={"headers": {"User-Agent": GOOGLEBOT}}).text == "ok"
    with live.client(**curl) as client:
        assert client.post(f"/v1/batch?key={live.project.write_key}", json={"batch": batch}).json()["accepted"] == 1
    stored = {(r.browser, r.device_type) for r in live.rows("SELECT browser, device_type FROM events")}
    assert stored == {("Chrome", "desktop"), ("Googlebot", "bot"), ("curl", "bot")}


def test_a_body_over_the_byte_limit_is_refused_whole(make_server):
    """413 before the body is read to its end: nothing of it is stored or kept (the sender still has it)."""
    from usertrail.config import Limits

    live = make_server(limits=Limits(max_body_bytes=4_000))
    pid = live.project.project.id
    fits = walkme_body([walkme_event(time=now_ms() - 2)])
    assert len(fits) < 4_000
    padded = fits + b"\n" + b" " * (4_000 - len(fits) - 1)
    assert len(padded) == 4_000 and tell_raw(live, padded).status_code == 200  # exactly at the limit
    too_big = walkme_body([walkme_event(time=now_ms() - 1)] * 6)
    assert len(too_big) > 4_000
    over = tell_raw(live, too_big)
    assert over.status_code == 413
    assert over.json()["path"] == "$" and "exceeds 4000" in over.json()["reason"]
    native_over = tell_raw(live, msgspec.json.encode({"batch": [{"type": "track", "event": "x" * 5_000}]}), "/v1/batch")
    assert native_over.status_code == 413
    assert live.scalar("SELECT count(*) FROM events") == 1
    with live.admin() as admin:
        assert admin.get(f"/api/projects/{pid}/rejected?status=all").json()["items"] == []


def tell_raw(live: LiveServer, body: bytes, path: str = "/event/tell"):
    with live.client() as client:
        return client.post(f"{path}?key={live.project.write_key}", content=body, headers={"Content-Type": "text/plain"})


def test_another_projects_admin_token_changes_nothing(live):
    """A foreign project's admin token cannot change settings, rotate keys or re-process rejected events."""
    mine, other = live.project, live.projects.create("other project")
    pid = mine.project.id
    assert tell(live, [walkme_event(time=now_ms(), wm_env=5)]).status_code == 400  # a rejected event of mine
    with live.admin() as admin:
        before = admin.get(f"/api/projects/{pid}").json()
        [rejected] = admin.get(f"/api/projects/{pid}/rejected").json()["items"]
    keys_before = live.rows("SELECT * FROM api_keys ORDER BY project_id, key_id")
    with live.admin(other.admin_token) as foreign:
        attempts = [
            foreign.patch(f"/api/projects/{pid}/environments/production", json={"tracking_level": "engagement"}),
            foreign.put(f"/api/projects/{pid}/environments/stage", json={"walkme_env": 5}),
            foreign.post(f"/api/projects/{pid}/keys/rotate", json={"kind": "write", "grace_seconds": 0}),
            foreign.post(f"/api/projects/{pid}/keys/rotate", json={"kind": "admin"}),
            foreign.post(f"/api/projects/{pid}/rejected/reprocess", json={"ids": [rejected["id"]]}),
            foreign.post(f"/api/projects/{pid}/rejected/discard", json={"ids": [rejected["id"]]}),
            # Its own project's routes with my rejected event's id: not found there.
            foreign.post(f"/api/projects/{other.project.id}/rejected/reprocess", json={"ids": [rejected["id"]]}),
            foreign.post(f"/api/projects/{other.project.id}/rejected/discard", json={"ids": [rejected["id"]]}),
        ]
    assert [a.status_code for a in attempts[:6]] == [403] * 6
    assert attempts[6].json()["results"] == [{"id": rejected["id"], "status": "not_found"}]
    live.app.state.collector.forget_cached_settings()
    with live.admin() as admin:
        assert admin.get(f"/api/projects/{pid}").json() == before
        assert admin.get(f"/api/projects/{pid}/rejected").json()["items"] == [rejected]
    assert live.rows("SELECT * FROM api_keys ORDER BY project_id, key_id") == keys_before
    assert tell(live, [walkme_event(time=now_ms())]).status_code == 200  # my write key still works


def test_the_hourly_maintenance_purges_the_security_log_after_its_retention(make_server):
    """`run_hourly` is the maintenance loop's hourly body; the retention is USERTRAIL_SECURITY_LOG_RETENTION_DAYS."""
    from usertrail.web.app import run_hourly

    live = make_server(security_log_retention_days=2)
    assert tell(live, [walkme_event(time=now_ms())]).status_code == 200
    [logged] = live.rows("SELECT ts, ip FROM security_log")
    assert logged.ip == "127.0.0.1"
    collector = live.app.state.collector
    assert run_hourly(collector, logged.ts + 2 * 86_400_000) == 0  # exactly two days old: kept
    assert run_hourly(collector, logged.ts + 2 * 86_400_000 + 1) == 1
    assert live.scalar("SELECT count(*) FROM security_log") == 0
