"""End users through the real HTTP API: attributes after a session closes, sessions, stream, export, erase."""

from __future__ import annotations

import re
import time
from urllib.parse import quote

import msgspec

from cli_runner import run_cli

from conftest import LiveServer
from samples import now_ms, walkme_body, walkme_event

MIN = 60_000
UA_FIREFOX = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0"


def send(live: LiveServer, events: list[dict], ip: str = "81.2.69.160", ua: str | None = None) -> None:
    headers = {"Content-Type": "text/plain", "X-Forwarded-For": ip}
    if ua:
        headers["User-Agent"] = ua
    with live.client() as client:
        response = client.post(f"/event/tell?key={live.project.write_key}", content=walkme_body(events),
                               headers=headers)  # fmt: skip
    assert response.status_code == 200, response.text


def enable_uuid(live: LiveServer) -> None:
    with live.admin() as admin:
        response = admin.patch(
            f"/api/projects/{live.project.project.id}/environments/production",
            json={"uuid": {"provider": "variable", "source": "currentUser.id"}},
        )
    assert response.status_code == 200


def user_events(key: str, start: int, count: int, step: int = 2 * MIN, **changes) -> list[dict]:
    return [
        walkme_event(time=start + i * step, wm_euId=key, wm_euIdSource="Identifier", type="play" if i else "pageChange",
                     sId=f"sess-{key}-{start}", **changes)
        for i in range(count)
    ]  # fmt: skip


def api(live: LiveServer, path: str, method: str = "GET"):
    with live.admin() as admin:
        return admin.request(method, f"/api/projects/{live.project.project.id}{path}")


def test_end_user_objects_through_the_api(make_server):
    import ipaddress

    live = make_server(process_sessions=False, trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),))
    assert api(live, "/users").status_code == 200  # WalkMe ID is a UUID provider
    with live.admin() as admin:
        pid = live.project.project.id
        for env in ("production", "test"):
            admin.patch(f"/api/projects/{pid}/environments/{env}", json={"uuid": {"provider": "none"}})
    refused = api(live, "/users")
    assert refused.status_code == 409 and refused.json()["error"] == "uuid_settings_required"
    enable_uuid(live)

    t = now_ms() - 3 * 60 * MIN
    send(live, user_events("jane", t, 5))  # 8 minutes
    send(live, user_events("jane", t + 60 * MIN, 3), ip="8.8.8.8", ua=UA_FIREFOX)  # 4 minutes, later, elsewhere
    send(live, user_events("omar", now_ms() - 5 * MIN, 2))  # still open
    # Eve only loaded a page and stayed idle: an empty session.
    send(live, [walkme_event(time=t + i * MIN, type=kind, wm_euId="eve", wm_euIdSource="Identifier", data={})
                for i, kind in enumerate(["pageChange", "sessionPing", "idle"])])  # fmt: skip
    before = api(live, "/users/u:jane")
    assert before.status_code == 404 and "no such end user" in before.json()["reason"]
    live.app.state.sessions.run(now_ms())

    jane = api(live, "/users/u:jane").json()
    attrs = {k: v["value"] for k, v in jane["attributes"].items()}
    assert list(attrs) == [
        "First seen",
        "Last seen",
        "Total sessions",
        "Average session duration",
        "Total session duration",
        "Average time between sessions",
        "Country",
        "Region/State",
        "City",
        "Browser Name",
        "Browser Version",
    ]
    # Times carry the batch's clock-skew correction (the send happens a few ms after the header is made).
    assert abs(attrs["First seen"] - t) < 2000 and abs(attrs["Last seen"] - (t + 64 * MIN)) < 2000
    assert attrs["Total sessions"] == 2 and attrs["Total session duration"] == 12 * MIN
    assert attrs["Average session duration"] == 6 * MIN
    assert abs(attrs["Average time between sessions"] - 52 * MIN) < 2000
    # Location and browser come from the most recent session (the first was London, Chrome 124).
    assert (attrs["Country"], attrs["Region/State"], attrs["City"]) == ("US", "California", "Mountain View")
    assert (attrs["Browser Name"], attrs["Browser Version"]) == ("Firefox", "125.0")
    assert all(v["source"] == "sessions" and v["updated_at"] for v in jane["attributes"].values())

    omar = api(live, "/users/u:omar")
    assert omar.status_code == 404 and "first session has not closed" in omar.json()["reason"]

    listing = api(live, "/users?sort=First%20seen&order=asc").json()
    assert listing["total"] == 1 and listing["users"][0]["user_key"] == "u:jane"
    assert api(live, "/users?filter=Country:eq:FR").json()["total"] == 0
    assert api(live, "/users?filter=Total%20sessions:gte:2").json()["total"] == 1
    bad = api(live, "/users?filter=Colour:eq:red")
    assert bad.status_code == 400 and "Colour" in bad.json()["reason"]
    assert api(live, "/users?sort=colour").status_code == 400

    sessions = api(live, "/users/u:jane/sessions").json()["sessions"]
    assert [(s["status"], s["events"], s["empty"]) for s in sessions] == [("closed", 3, False), ("closed", 5, False)]
    stream = api(live, f"/users/u:jane/sessions/{sessions[1]['id']}/events").json()
    assert "events" in stream, stream
    assert [e["client_ts"] for e in stream["events"]] == [t + i * 2 * MIN for i in range(5)]
    # An empty session is listed, with its time and status but no data (docs/sessions.md).
    [empty] = api(live, "/users/u:eve/sessions").json()["sessions"]
    assert (empty["status"], empty["empty"], empty["duration_ms"]) == ("closed", True, 2 * MIN)
    assert abs(empty["start"] - t) < 2000  # skew-corrected
    no_data = ("events", "interactions", "page_views", "entry_path", "exit_path", "country", "region", "city",
               "browser", "browser_version", "os", "device_type")  # fmt: skip
    assert {k: empty[k] for k in no_data} == dict.fromkeys(no_data) and empty["client_session_ids"] == []
    assert "first session has not closed" in api(live, "/users/u:eve").json()["reason"]
    live_session = api(live, "/users/u:omar/sessions").json()["sessions"][0]
    assert live_session["status"] == "open"
    assert len(api(live, f"/users/u:omar/sessions/{live_session['id']}/events").json()["events"]) == 2

    exported = api(live, "/users/u:jane/export")
    assert exported.status_code == 200
    document = msgspec.json.decode(exported.content)
    assert len(document["events"]) == 8 and len(document["sessions"]) == 2
    erased = api(live, "/users/u:jane", "DELETE").json()
    assert erased["events"] == 8 and erased["profiles"] == 1
    assert api(live, "/users/u:jane").status_code == 404
    assert live.scalar("SELECT count(*) FROM events WHERE user_key = 'u:jane'") == 0
    assert api(live, "/users/u:jane", "DELETE").status_code == 404
    audit = api(live, "/audit-log").json()["entries"]
    assert [e["action"] for e in audit] == ["end_user.erase", "end_user.export"]
    assert all(e["target"] == "u:jane" and e["actor"].startswith("adm_") for e in audit)


def test_login_stitches_anonymous_events_through_native_api(make_server):
    live = make_server(process_sessions=False)
    enable_uuid(live)
    t = now_ms() - 2 * 60 * MIN
    batch = [
        {"type": "page", "name": "Pricing", "anonymousId": "dev-1", "timestamp": t,
         "context": {"sessionId": "s-1"}},
        {"type": "track", "event": "Clicked sign in", "anonymousId": "dev-1", "timestamp": t + MIN,
         "context": {"sessionId": "s-1"}},
        {"type": "identify", "userId": "kim", "anonymousId": "dev-1", "timestamp": t + 2 * MIN,
         "traits": {"role": "admin"}, "context": {"sessionId": "s-1"}},
        {"type": "track", "event": "Opened report", "userId": "kim", "anonymousId": "dev-1", "timestamp": t + 3 * MIN,
         "context": {"sessionId": "s-1"}},
    ]  # fmt: skip
    with live.client() as client:
        response = client.post(f"/v1/batch?key={live.project.write_key}", json={"batch": batch})
    assert response.status_code == 200
    live.app.state.sessions.run(now_ms())
    kim = api(live, "/users/u:kim").json()
    assert kim["identities"] == ["u:kim", "a:dev-1"]
    assert abs(kim["attributes"]["First seen"]["value"] - t) < 2000
    assert kim["attributes"]["Total sessions"]["value"] == 1
    events = api(live, "/users/u:kim/events").json()["events"]
    assert [e["type"] for e in events] == ["page", "track", "identify", "track"]
    # Asking for the anonymous key answers with its owner.
    assert api(live, "/users/a:dev-1").json()["user_key"] == "u:kim"


def test_background_worker_closes_sessions(make_server):
    live = make_server(session_interval_s=0.2)  # the server's own session loop runs, every 0.2 s when idle
    enable_uuid(live)
    send(live, user_events("ravi", now_ms() - 40 * MIN, 3))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        response = api(live, f"/users/{quote('u:ravi')}")
        if response.status_code == 200:
            break
        time.sleep(0.5)
    assert response.status_code == 200, response.text
    assert response.json()["attributes"]["Total sessions"]["value"] == 1


def test_retention_deletes_inactive_users(make_server):
    live = make_server(process_sessions=False)
    enable_uuid(live)
    old = now_ms() - 200 * 24 * 60 * MIN
    send(live, user_events("gone", old, 3))
    send(live, user_events("active", now_ms() - 2 * 60 * MIN, 3))
    live.app.state.sessions.run(now_ms())
    env = {"USERTRAIL_DATABASE_URL": live.settings.resolved_database_url}
    dry = run_cli("retention", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "u:gone" in dry.stdout and "u:active" not in dry.stdout and "would be deleted" in dry.stdout
    assert api(live, "/users/u:gone").status_code == 200
    real = run_cli("retention", env=env)
    assert re.search(r"1 end users were deleted", real.stdout), real.stdout
    assert api(live, "/users/u:gone").status_code == 404
    [audited] = api(live, "/audit-log?action=end_user.retention_delete").json()["entries"]
    assert (audited["actor"], audited["target"], audited["details"]["days"]) == ("retention", "u:gone", 183)
    assert live.scalar("SELECT count(*) FROM events WHERE user_key = 'u:gone'") == 0
    # The user comes back: a new object whose first seen is the return.
    back = now_ms() - 60 * MIN
    send(live, user_events("gone", back, 2))
    live.app.state.sessions.run(now_ms())
    assert abs(api(live, "/users/u:gone").json()["attributes"]["First seen"]["value"] - back) < 2000


def test_the_daily_retention_job_uses_each_projects_period_and_audits(make_server):
    """`run_retention` is the maintenance loop's daily body: each project's own period, else the
    installation's; every deletion is in the project's audit log."""
    from usertrail.web.app import run_retention

    live = make_server(process_sessions=False, user_retention_days=90)
    enable_uuid(live)
    short = live.projects.create("short retention")
    with live.admin(short.admin_token) as admin:
        pid = short.project.id
        uuid = {"uuid": {"provider": "variable", "source": "currentUser.id"}}
        assert admin.patch(f"/api/projects/{pid}/environments/production", json=uuid).status_code == 200
        assert admin.put(f"/api/projects/{pid}/retention", json={"user_days": 30}).status_code == 200
    t = now_ms() - 2 * 60 * MIN
    send(live, user_events("kept-longer", t, 3))
    with live.client() as client:
        body = walkme_body(user_events("short-lived", t, 3))
        assert client.post(f"/event/tell?key={short.write_key}", content=body).status_code == 200
    live.app.state.sessions.run(now_ms())
    last_end = t + 4 * MIN
    day = 24 * 60 * MIN
    state = live.app.state

    def job(now: int) -> dict:
        return run_retention(state.collector, state.playback.store, state.playback.assets, now)

    mine = live.project.project.id
    assert job(last_end + 30 * day - 10_000)[pid]["end_users"] == []  # not yet 30 days (times are skew-corrected)
    done = job(last_end + 31 * day)
    assert (done[pid]["end_users"], done[mine]["end_users"]) == (["u:short-lived"], [])
    assert job(last_end + 91 * day)[mine]["end_users"] == ["u:kept-longer"]
    assert live.scalar("SELECT count(*) FROM end_users") == 0 and live.scalar("SELECT count(*) FROM events") == 0
    with live.admin(short.admin_token) as admin:
        [entry] = admin.get(f"/api/projects/{pid}/audit-log").json()["entries"]
    assert (entry["actor"], entry["action"], entry["target"]) == ("retention", "end_user.retention_delete",
                                                                  "u:short-lived")  # fmt: skip
    assert entry["details"]["days"] == 30 and abs(entry["details"]["last_session_end"] - last_end) < 2000
    [other] = api(live, "/audit-log").json()["entries"]
    assert (other["target"], other["details"]["days"]) == ("u:kept-longer", 90)
