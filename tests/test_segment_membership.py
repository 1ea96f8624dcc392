"""Segments over time, through the real HTTP server on both engines: entering a saved segment at a
session close, leaving one when time passes, what rules see of a running session, the snippet's
cached answer, member paging and the saved-segment refusals."""

from __future__ import annotations

import pytest

from test_segments_api import post, session
from test_users_api import api, enable_uuid, send, user_events
from usertrail.segments.membership import refresh_all
from usertrail.web.segments_api import client_cache

from conftest import LiveServer
from samples import now_ms, walkme_event

MIN = 60_000
DAY = 86_400_000


def changes(live: LiveServer, segment_id: str) -> list[tuple[str, str]]:
    found = api(live, f"/segments/{segment_id}/changes").json()["changes"]
    return [(c["user_key"], c["change"]) for c in found]


def create_segment(live: LiveServer, name: str, rules: list[dict], **extra) -> dict:
    response = post(live, "/segments", {"name": name, "rules": {"match": "all", "rules": rules}, **extra})
    assert response.status_code == 201, response.text
    return response.json()


def test_a_second_session_enters_a_segment_and_time_makes_members_leave(make_server):
    live: LiveServer = make_server(process_sessions=False)
    enable_uuid(live)
    pid = live.project.project.id
    now = now_ms()
    send(live, session("ana", now - 3 * DAY))
    send(live, session("bo", now - 5 * DAY))
    live.app.state.sessions.run(now_ms())

    returning = create_segment(live, "Returning", [{"attribute": "Total sessions", "operator": "gte", "value": 2}])
    assert returning["membership"] == {"entered": 0, "left": 0} and changes(live, returning["id"]) == []
    this_week = [{"attribute": "Last seen", "operator": "within_last", "value": 7}]
    recent = create_segment(live, "Active this week", this_week)
    assert recent["membership"] == {"entered": 2, "left": 0}

    # ana's second session closes: the processor re-evaluates her saved segments, and she enters.
    send(live, session("ana", now - 3 * 60 * MIN))
    live.app.state.sessions.run(now_ms())
    assert changes(live, returning["id"]) == [("u:ana", "entered")]
    entered = api(live, f"/segments/{returning['id']}/changes?change=entered&days=1").json()["changes"]
    assert [c["user_key"] for c in entered] == ["u:ana"]
    assert api(live, f"/segments/{returning['id']}").json()["member_count"] == 1
    assert [c["change"] for c in api(live, "/users/u:ana/segments/history").json()["changes"]] == ["entered", "entered"]

    # Time passes: the hourly recompute, run as if three days later, moves bo (last seen 5 days ago) out.
    later = now + 3 * DAY
    assert refresh_all(live.engine, later, [pid]) == (0, 1)
    assert changes(live, recent["id"])[0] == ("u:bo", "left")
    left = api(live, f"/segments/{recent['id']}/changes?change=left").json()["changes"]
    assert [(c["user_key"], c["ts"]) for c in left] == [("u:bo", later)]  # stamped with the recompute's time
    assert api(live, f"/segments/{recent['id']}").json()["member_count"] == 1
    assert refresh_all(live.engine, later, [pid]) == (0, 0)  # nothing left to change


def test_rules_see_the_user_as_of_their_last_closed_session(make_server):
    live: LiveServer = make_server(process_sessions=False)
    enable_uuid(live)
    now = now_ms()
    # One closed session (a page view and three plays) as a viewer, then a running one (two more
    # plays) in which the page says the user became an admin.
    send(live, user_events("rita", now - 3 * 60 * MIN, 4, wm_userVars={"role": "viewer"}))
    send(live, user_events("rita", now - 5 * MIN, 3, step=MIN, wm_userVars={"role": "admin"}))
    live.app.state.sessions.run(now_ms())
    sessions = api(live, "/users/u:rita/sessions").json()["sessions"]
    assert sorted(s["status"] for s in sessions) == ["closed", "open"]
    rita = api(live, "/users/u:rita").json()
    assert rita["attributes"]["Total sessions"]["value"] == 1
    assert rita["custom_attributes"]["role"]["value"] == "viewer"

    def both(rules: list[dict]) -> bool:
        """Whether rita matches, asserting that the SQL and in-process evaluators agree."""
        tree = {"match": "all", "rules": rules}
        preview = post(live, "/segments/preview", {"rules": tree, "sample": 10})
        assert preview.status_code == 200, preview.text
        in_sql = [u["user_key"] for u in preview.json()["sample"]] == ["u:rita"]
        in_process = post(live, "/users/u:rita/segments/evaluate", {"rules": tree}).json()["member"]
        assert in_sql == in_process, rules
        return in_sql

    assert both([{"attribute": "Total sessions", "operator": "eq", "value": 1}])
    # Behaviour counts events up to Last seen: the closed session's three plays, not the running two.
    assert both([{"behaviour": {"event": "play"}, "operator": "did", "times": 3, "days": 1}])
    assert not both([{"behaviour": {"event": "play"}, "operator": "did", "times": 4, "days": 1}])
    # The running session's analytics property is not visible yet.
    assert both([{"attribute": "role", "operator": "is", "value": "viewer"}])
    assert not both([{"attribute": "role", "operator": "is", "value": "admin"}])
    # Custom attributes written by integrations are read live, without waiting for a session close.
    assert post(live, "/users/u:rita/attributes", {"Plan": "VIP"}, "PATCH").status_code == 200
    assert both([{"attribute": "Plan", "operator": "is", "value": "VIP"}])

    # Once the running session closes, everything it carried becomes visible.
    live.app.state.sessions.run(now_ms() + 40 * MIN)
    assert both([{"attribute": "Total sessions", "operator": "eq", "value": 2}])
    assert both([{"behaviour": {"event": "play"}, "operator": "did", "times": 5, "days": 1}])
    assert both([{"attribute": "role", "operator": "is", "value": "admin"}])


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_the_snippets_answer_is_cached_until_it_expires(make_server):
    live: LiveServer = make_server(process_sessions=False, client_segments_cache_s=30)
    assert live.app.state.client_segments.ttl == 30
    clock = Clock()
    live.app.state.client_segments = client_cache(live.settings.client_segments_cache_s, timer=clock)
    enable_uuid(live)
    now = now_ms()
    send(live, session("pia", now - 2 * DAY))
    for days_ago in (3, 2):  # an anonymous visitor (WalkMe's cached id) with two sessions
        start = now - days_ago * DAY
        send(live, [walkme_event(time=start + i * MIN, wm_euId="visitor-7", wm_euIdSource="Cache",
                                 sId=f"visit-{days_ago}") for i in range(3)])  # fmt: skip
    live.app.state.sessions.run(now_ms())
    segment = create_segment(
        live, "Two sessions", [{"attribute": "Total sessions", "operator": "gte", "value": 2}], client_visible=True
    )

    def ask(**params) -> list[dict]:
        with live.client() as client:
            response = client.get("/v1/segments", params={"key": live.project.write_key, **params})
        assert response.status_code == 200, response.text
        return response.json()["segments"]

    member = [{"id": segment["id"], "name": "Two sessions"}]
    assert ask(anonymous_id="visitor-7") == member
    assert ask(anonymous_id="visitor-8") == []
    assert ask(user_id="pia") == []

    send(live, session("pia", now - 3 * 60 * MIN))
    live.app.state.sessions.run(now_ms())
    assert api(live, f"/segments/{segment['id']}").json()["member_count"] == 2  # pia is a member now…
    assert ask(user_id="pia") == []  # …but the snippet's answer is cached
    clock.now += 29
    assert ask(user_id="pia") == []
    clock.now += 2  # past the 30 seconds
    assert ask(user_id="pia") == member
    with live.client() as client:
        neither = client.get("/v1/segments", params={"key": live.project.write_key})
    assert neither.status_code == 400 and neither.json()["path"] == "user_id"


def test_member_paging_and_saved_segment_refusals(make_server):
    live: LiveServer = make_server(process_sessions=False)
    enable_uuid(live)
    now = now_ms()
    for name, hours_ago in (("old", 50), ("mid", 30), ("new", 10)):
        send(live, session(name, now - hours_ago * 60 * MIN))
    live.app.state.sessions.run(now_ms())
    everyone = create_segment(live, "Everyone", [{"attribute": "Total sessions", "operator": "gte", "value": 1}])
    url = f"/segments/{everyone['id']}/members"
    # Last seen, newest first
    assert [u["user_key"] for u in api(live, url).json()["users"]] == ["u:new", "u:mid", "u:old"]
    page = api(live, f"{url}?limit=1&offset=1").json()
    assert page["total"] == 3 and page["offset"] == 1 and [u["user_key"] for u in page["users"]] == ["u:mid"]
    assert [u["user_key"] for u in api(live, f"{url}?limit=2&offset=2").json()["users"]] == ["u:old"]
    for query, parameter in (("offset=-1", "offset"), ("offset=x", "offset"), ("limit=0", "limit")):
        refused = api(live, f"{url}?{query}")
        assert refused.status_code == 400 and refused.json()["path"] == parameter, (query, refused.text)

    good = {"match": "all", "rules": [{"attribute": "Total sessions", "operator": "gte", "value": 1}]}
    refusals = [
        ({"name": "x", "rules": {"rules": [{"attribute": "Total sessions", "operator": "contains", "value": 1}]}},
         "$.rules.rules[0].operator"),
        ({"name": "x", "rules": {"rules": [{"attribute": "Plan", "operator": "is", "value": "VIP"}]}},
         "$.rules.rules[0].attribute"),
        ({"name": "x", "rules": "everyone"}, "$.rules"),
        ({"name": "", "rules": good}, "$.name"),
        ({"name": "   ", "rules": good}, "$.name"),
        ({"rules": good}, "$.name"),
        ({"name": "x"}, "$.rules"),
        ({"name": "x", "rules": good, "colour": "red"}, "$.colour"),
        ({"name": "x", "rules": good, "client_visible": "yes"}, "$.client_visible"),
        ({"name": "x", "rules": good, "description": 3}, "$.description"),
    ]  # fmt: skip
    for body, path in refusals:
        refused = post(live, "/segments", body)
        assert refused.status_code == 400, (body, refused.text)
        assert refused.json()["error"] == "invalid_segment" and refused.json()["path"] == path, (body, refused.json())
    for body, path in (
        ({"rules": {"rules": [{"attribute": "Last seen", "operator": "within_last", "value": -1}]}},
         "$.rules.rules[0].value"),
        ({"name": ""}, "$.name"),
        ({"colour": "red"}, "$.colour"),
        ({"client_visible": 1}, "$.client_visible"),
    ):  # fmt: skip
        patched = post(live, f"/segments/{everyone['id']}", body, "PATCH")
        assert patched.status_code == 400 and patched.json()["path"] == path, (body, patched.text)
    assert api(live, "/segments").json()["segments"][0]["rules"] == good  # nothing was changed

    # Every segment route needs UUID settings, including the preview, members and a user's segments.
    pid = live.project.project.id
    with live.admin() as admin:
        for env in ("production", "test"):
            admin.patch(f"/api/projects/{pid}/environments/{env}", json={"uuid": {"provider": "none"}})
    for response in (
        post(live, "/segments/preview", {"rules": good}),
        api(live, url),
        api(live, "/users/u:new/segments"),
        post(live, "/users/u:new/segments/evaluate", {"rules": good}),
        api(live, "/segments/catalog"),
    ):
        assert response.status_code == 409 and response.json()["error"] == "uuid_settings_required", response.text


@pytest.mark.parametrize("ttl", [0.5, 120.0])
def test_the_cache_ttl_is_a_setting(ttl: float):
    from usertrail.config import Settings

    settings = Settings.from_env({"USERTRAIL_CLIENT_SEGMENTS_CACHE_S": str(ttl)})
    assert settings.client_segments_cache_s == ttl
    assert Settings.from_env(settings.to_env()).client_segments_cache_s == ttl
    assert client_cache(settings.client_segments_cache_s).ttl == ttl
