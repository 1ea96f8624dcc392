"""Engagement reports through the real HTTP API: WalkMe content events sent to /event/tell, then the
items report, Walk-Thru step funnels and widget use, with date ranges, segments and CSV export."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

from test_segments_api import post
from test_users_api import enable_uuid

from conftest import LiveServer
from samples import now_ms, walkme_event

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
WT, SWT = "124909", "569837"  # the Walk-Thru of the spec's example event, the Smart Walk-Thru of EX1


def tell(live: LiveServer, events: list[dict]) -> None:
    """Send WalkMe events as a JSON array: without the header line there is no clock-skew correction,
    so every event is stored at exactly its `time`."""
    with live.client() as client:
        response = client.post(
            f"/event/tell?key={live.project.write_key}",
            content=json.dumps(events),
            headers={"Content-Type": "application/json"},
        )
    assert response.status_code == 200, response.text


def item(
    user: str,
    t: int,
    type_: str,
    app_type: str,
    oid: str | None,
    name: str | None,
    *,
    pid: str | None = None,
    sid: str | None = None,
    anonymous: bool = False,
    **data,
) -> dict:
    """One WalkMe item event of `user` (identified, or anonymous from the WalkMe cache) at `t`."""
    return walkme_event(
        time=t, type=type_, sId=sid or f"s-{user}", wm_euId=user, wm_euIdSource="Cache" if anonymous else "Identifier",
        data_type=app_type, data_oId=oid, data_oName=name, data_pId=pid or f"{t}-{oid}-{user}",
        **{f"data_{k}": v for k, v in data.items()},
    )  # fmt: skip


def midnight(days_ago: int) -> int:
    return (now_ms() // DAY - days_ago) * DAY


def report(live: LiveServer, path: str, **params):
    with live.admin() as admin:
        return admin.get(f"/api/projects/{live.project.project.id}/reports/{path}", params=params)


def by_id(body: dict) -> dict[str, dict]:
    return {i["object_id"]: i for i in body["items"]}


def test_items_report_plays_completions_users_sorting_and_csv(make_server):
    live = make_server(process_sessions=False)
    enable_uuid(live)
    t = midnight(5) + 9 * HOUR
    wt_jane_1, wt_jane_2 = f"{t}-{WT}-a", f"{t + 20 * MIN}-{WT}-b"
    swt_jane = f"{t}-{SWT}-c"
    tell(live, [
        # Walk-Thru: jane plays twice and completes the first play (its complete event arrives twice,
        # a re-send with another time: one completion per play instance); omar plays and completes.
        item("jane", t, "play", "wt", WT, "Log in", pid=wt_jane_1),
        item("jane", t + 5 * MIN, "complete", "wt", WT, "Log in", pid=wt_jane_1),
        item("jane", t + 6 * MIN, "complete", "wt", WT, "Log in", pid=wt_jane_1),
        item("jane", t + 20 * MIN, "play", "wt", WT, "Sign in", pid=wt_jane_2),  # renamed since: latest name wins
        item("omar", t, "play", "wt", WT, "Log in"),
        item("omar", t + MIN, "complete", "wt", WT, "Log in"),
        # Smart Walk-Thru: complete and goalReach of one play are one completion.
        item("jane", t + HOUR, "play", "bizFlow", SWT, "Reference App Tour", pid=swt_jane),
        item("jane", t + HOUR + MIN, "goalReach", "bizFlow", SWT, "Reference App Tour", pid=swt_jane),
        item("jane", t + HOUR + 2 * MIN, "complete", "bizFlow", SWT, "Reference App Tour", pid=swt_jane),
        # ShoutOut: shown to jane (clicked) and omar (closed), rate 1/2.
        item("jane", t + 2 * HOUR, "play", "shoutout", "5002", "Upgrade to VIP", pid="so-1"),
        item("jane", t + 2 * HOUR + MIN, "click", "shoutout", "5002", "Upgrade to VIP", pid="so-1"),
        item("omar", t + 2 * HOUR, "play", "shoutout", "5002", "Upgrade to VIP", pid="so-2"),
        item("omar", t + 2 * HOUR + MIN, "close", "shoutout", "5002", "Upgrade to VIP", pid="so-2"),
        # Launcher: clicks are plays, no completion.
        *(item(u, t + 3 * HOUR + i * MIN, "click", "launcher", "7001", "Need help?") for i, u in
          enumerate(["jane", "jane", "omar"])),
        item("jane", t + 3 * HOUR, "loaded", "launcher", "7001", "Need help?"),  # not a click
        item("omar", t + 4 * HOUR, "play", "resource", "8001", "Pricing guide"),
        item("jane", t + 5 * HOUR, "play", "survey", "9001", "How are we doing?"),
        item("omar", t + 5 * HOUR, "play", "survey", "9001", "How are we doing?"),
        item("omar", t + 5 * HOUR + MIN, "submitted", "survey", "9001", "How are we doing?"),
        # Not items of this report: a step, a Smart Tip, an item without an id.
        item("jane", t + 10 * MIN, "play", "step", "1394694", "Click Log in", pid=wt_jane_1),
        item("jane", t + 6 * HOUR, "visible", "smartTip", "3001", "Tip"),
        item("jane", t + 6 * HOUR, "play", "wt", None, None),
        # An anonymous visitor who logs in as kim in the same WalkMe session: one user with kim.
        item("dev-9", t + 7 * HOUR, "play", "shoutout", "5002", "Upgrade to VIP", sid="s-kim", anonymous=True),
        item("kim", t + 7 * HOUR + MIN, "play", "shoutout", "5002", "Upgrade to VIP", sid="s-kim"),
    ])  # fmt: skip
    live.app.state.sessions.run(now_ms())  # stitches dev-9 to kim

    response = report(live, "items")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["segment"] is None and body["range"]["to"] - body["range"]["from"] == 30 * DAY
    items = by_id(body)
    assert set(items) == {WT, SWT, "5002", "7001", "8001", "9001"}
    assert items[WT] == {
        "app_type": "wt",
        "label": "Walk-Thru",
        "object_id": WT,
        "name": "Sign in",
        "plays": 3,
        "unique_users": 2,
        "completions": 2,
        "completion_rate": 0.6667,
        "last_event_ts": t + 20 * MIN,
    }
    assert (items[SWT]["plays"], items[SWT]["completions"], items[SWT]["completion_rate"]) == (1, 1, 1.0)
    assert (items["5002"]["plays"], items["5002"]["unique_users"], items["5002"]["completions"]) == (4, 3, 1)
    assert items["5002"]["completion_rate"] == 0.25
    assert (items["7001"]["plays"], items["7001"]["unique_users"]) == (3, 2)
    assert items["7001"]["completions"] is None and items["7001"]["completion_rate"] is None
    assert (items["8001"]["label"], items["8001"]["plays"], items["8001"]["completion_rate"]) == ("Resource", 1, None)
    assert (items["9001"]["plays"], items["9001"]["completions"], items["9001"]["completion_rate"]) == (2, 1, 0.5)

    # Sorting: plays (descending) by default; ties by app type and id; missing rates last either way.
    assert [i["object_id"] for i in body["items"]] == ["5002", "7001", WT, "9001", SWT, "8001"]
    by_rate = report(live, "items", sort="completion_rate", order="asc").json()["items"]
    assert [i["object_id"] for i in by_rate] == ["5002", "9001", WT, SWT, "7001", "8001"]
    by_name = report(live, "items", sort="name").json()["items"]
    assert [i["name"] for i in by_name][:2] == ["How are we doing?", "Need help?"]
    only = report(live, "items", app_type="wt,launcher").json()["items"]
    assert {i["object_id"] for i in only} == {WT, "7001"}

    exported = report(live, "items", format="csv")
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    assert "attachment" in exported.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [r["object_id"] for r in rows] == ["5002", "7001", WT, "9001", SWT, "8001"]
    assert rows[2]["name"] == "Sign in" and rows[2]["completion_rate"] == "0.6667"
    assert rows[1]["completions"] == "" and rows[1]["completion_rate"] == ""

    for params, path in (
        ({"app_type": "wt,smartTip"}, "app_type"),
        ({"sort": "colour"}, "sort"),
        ({"order": "up"}, "order"),
        ({"format": "xml"}, "format"),
    ):
        bad = report(live, "items", **params)
        assert bad.status_code == 400 and bad.json()["path"] == path, (params, bad.text)
    with live.client() as anonymous:
        assert anonymous.get(f"/api/projects/{live.project.project.id}/reports/items").status_code == 401
    definitions = report(live, "definitions").json()
    assert {"app_type": "bizFlow", "label": "Smart Walk-Thru", "plays": ["play"],
            "completions": ["complete", "goalReach"]} in definitions["items"]  # fmt: skip


def test_date_range_edges_and_errors(make_server):
    live = make_server(process_sessions=False)
    day = midnight(3)
    name = "Need help?"
    tell(live, [
        item("ann", day - 1, "click", "launcher", "7001", name),  # the last ms of the day before
        item("ann", day, "click", "launcher", "7001", name),  # the first ms of the day
        item("ann", day + DAY - 1, "click", "launcher", "7001", name),  # its last ms
        item("ann", day + DAY, "click", "launcher", "7001", name),  # the next day
        item("ann", midnight(31), "click", "launcher", "7002", "Old"),  # outside the default 30 days
        item("ann", midnight(29), "click", "launcher", "7003", "Recent"),
    ])  # fmt: skip
    iso = _iso(day)

    def plays(**params) -> int:
        response = report(live, "items", **params)
        assert response.status_code == 200, response.text
        return sum(i["plays"] for i in response.json()["items"] if i["object_id"] == "7001")

    assert plays(**{"from": iso, "to": iso}) == 2  # a date `to` includes its whole day
    assert plays(**{"from": str(day), "to": str(day + DAY)}) == 2  # ms: [from, to)
    assert plays(**{"from": str(day), "to": str(day + DAY - 1)}) == 1
    assert plays(**{"from": str(day - 1), "to": str(day)}) == 1
    assert plays(**{"from": f"{iso}T00:00:00Z", "to": f"{iso}T23:59:59.999+00:00"}) == 1  # the last ms is `to`
    assert plays(**{"from": f"{iso}T01:00:00+01:00", "to": iso}) == 2  # an offset: 00:00 UTC
    assert plays(**{"from": iso}) == 3  # to: now
    default = {i["object_id"] for i in report(live, "items").json()["items"]}
    assert default == {"7001", "7003"}

    for params, path in (
        ({"from": "2026-13-01"}, "from"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-11-22T25:00"}, "to"),
        ({"from": iso, "to": _iso(day - DAY)}, "from"),  # from after to
        ({"from": str(day), "to": str(day)}, "from"),  # empty
    ):
        bad = report(live, "items", **params)
        assert bad.status_code == 400 and bad.json()["path"] == path, (params, bad.text)
        assert report(live, "widget", **params).status_code == 400
    missing = report(live, "items", segment="seg_nope")
    assert missing.status_code == 404 and missing.json()["path"] == "segment"


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d")


def wt_step(user: str, t: int, step: str, play: str, sid: str | None = None, anonymous: bool = False) -> dict:
    """A Walk-Thru step played: app type `step`, linked to its Walk-Thru by the play instance id."""
    return item(user, t, "play", "step", step, f"Step {step}", pid=play, sid=sid, anonymous=anonymous)


def test_walkthru_funnel_restart_out_of_order_and_segment(make_server):
    live = make_server(process_sessions=False)
    enable_uuid(live)
    t = midnight(4) + 8 * HOUR
    s1, s2, s3 = "1394694", "1394695", "1394696"
    play = f"{t}-{WT}-889838df"
    other = f"{t}-124910-2a1b"  # another Walk-Thru's play
    tell(live, [
        # A: jane plays the three steps in order.
        item("jane", t, "play", "wt", WT, "Log in", pid=play),
        *(wt_step("jane", t + i * MIN, s, play) for i, s in enumerate([s1, s2, s3], 1)),
        # B: omar restarts after step 2, then finishes: counted once.
        *(wt_step("omar", t + i * MIN, s, play) for i, s in enumerate([s1, s2, s1, s2, s3], 1)),
        # C: lee plays step 3 before step 2: reaches step 2 only.
        *(wt_step("lee", t + i * MIN, s, play) for i, s in enumerate([s1, s3, s2], 1)),
        # D: jane's next session, two hours later: step 1 only.
        wt_step("jane", t + 2 * HOUR, s1, play),
        # E: ana never plays step 1.
        *(wt_step("ana", t + i * MIN, s, play) for i, s in enumerate([s2, s3], 1)),
        # Steps of another Walk-Thru, and of a Smart Walk-Thru whose owner is given by owId, are not ours.
        wt_step("ana", t + 5 * MIN, s1, other),
        item("ana", t + 6 * MIN, "play", "bizFlowStep", s1, "x", pid=f"{t}-{SWT}-g", owId=int(SWT),
             owType="bizFlow"),
        # F: kim's anonymous visit (stitched by the shared WalkMe session) starts; kim finishes it.
        wt_step("dev-9", t + MIN, s1, play, sid="s-kim", anonymous=True),
        wt_step("kim", t + 2 * MIN, s2, play, sid="s-kim"),
    ])  # fmt: skip
    live.app.state.sessions.run(now_ms())

    response = report(live, f"items/wt/{WT}/funnel", steps=f"{s1},{s2},{s3}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["order"] == "given" and body["flow_id"] == WT
    steps = body["steps"]
    assert [s["step_id"] for s in steps] == [s1, s2, s3]
    assert [s["reached"] for s in steps] == [5, 4, 2]  # A B C D F; A B C F; A B
    assert [s["played"] for s in steps] == [5, 5, 4]  # in any order: E plays steps 2 and 3
    assert [s["conversion"] for s in steps] == [None, 0.8, 0.5]
    assert [s["conversion_from_first"] for s in steps] == [1.0, 0.8, 0.4]
    assert [s["drop_off"] for s in steps] == [0.2, 0.5, None]
    assert steps[0]["name"] == f"Step {s1}" and steps[0]["position"] == 1

    # Without steps=: the observed order (mean position of each step's first play in a session).
    observed = report(live, f"items/wt/{WT}/funnel").json()
    assert observed["order"] == "observed" and [s["step_id"] for s in observed["steps"]] == [s1, s2, s3]
    assert [s["reached"] for s in observed["steps"]] == [5, 4, 2]
    reversed_ = report(live, f"items/wt/{WT}/funnel", steps=f"{s3},{s2}").json()["steps"]
    assert [s["reached"] for s in reversed_] == [4, 1]  # C (3 then 2); E plays 2 before 3

    exported = report(live, f"items/wt/{WT}/funnel", steps=f"{s1},{s2},{s3}", format="csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [(r["step_id"], r["reached"], r["drop_off"]) for r in rows] == [(s1, "5", "0.2"), (s2, "4", "0.5"),
                                                                           (s3, "2", "")]  # fmt: skip

    # Only the segment's members: kim (with the anonymous visit) and jane.
    assert post(live, "/users/u:kim/attributes", {"Plan": "VIP"}, "PATCH").status_code == 200
    assert post(live, "/users/u:jane/attributes", {"Plan": "VIP"}, "PATCH").status_code == 200
    created = post(live, "/segments", {"name": "VIP", "rules": {"rules": [
        {"attribute": "Plan", "operator": "is", "value": "VIP"}]}})  # fmt: skip
    assert created.status_code == 201, created.text
    segment = created.json()["id"]
    vip = report(live, f"items/wt/{WT}/funnel", steps=f"{s1},{s2},{s3}", segment=segment).json()
    assert vip["segment"] == {"id": segment, "name": "VIP", "members": 2}
    assert [s["reached"] for s in vip["steps"]] == [3, 2, 1]  # A D F; A F; A

    # The date range applies: only the first hour of the day.
    early = report(live, f"items/wt/{WT}/funnel", steps=s1, **{"from": str(t), "to": str(t + HOUR)}).json()
    assert [s["reached"] for s in early["steps"]] == [4]  # A B C F, not D

    for path, params, where in (
        (f"items/shoutout/{WT}/funnel", {}, "app_type"),
        (f"items/wt/{WT}/funnel", {"steps": f"{s1},{s1}"}, "steps"),
        (f"items/wt/{WT}/funnel", {"steps": f"{s1},,{s2}"}, "steps"),
        (f"items/wt/{WT}/funnel", {"segment": "seg_0"}, "segment"),
    ):
        bad = report(live, path, **params)
        assert bad.status_code in (400, 404) and bad.json()["path"] == where, (path, params, bad.text)


def test_smart_walkthru_funnel_by_owner_id(make_server):
    live = make_server(process_sessions=False)
    enable_uuid(live)
    t = midnight(2) + 10 * HOUR
    play = f"{t}-{SWT}-548c5973"

    def swt_step(user: str, at: int, step: str) -> dict:
        # As in WalkMe's own example (EX1): the owner flow in owId / owName / owType.
        return item(user, at, "play", "bizFlowStep", step, f"Step {step}", pid=play, aoId=int(step), oType=0,
                    owId=int(SWT), owName="Reference App Tour", owType="bizFlow", total=51, status=6)  # fmt: skip

    tell(live, [
        swt_step("jane", t, "5515782"), swt_step("jane", t + MIN, "5515783"), swt_step("jane", t + 2 * MIN, "5515782"),
        swt_step("omar", t, "5515782"),
        item("omar", t + MIN, "play", "step", "5515783", "A Walk-Thru step"),  # not a bizFlowStep
    ])  # fmt: skip
    live.app.state.sessions.run(now_ms())
    body = report(live, f"items/bizFlow/{SWT}/funnel").json()
    assert [(s["step_id"], s["reached"], s["played"]) for s in body["steps"]] == [("5515782", 2, 2), ("5515783", 1, 1)]
    assert body["steps"][0]["drop_off"] == 0.5
    assert report(live, f"items/wt/{SWT}/funnel").json()["steps"] == []  # no Walk-Thru steps for it


def test_widget_opens_searches_terms_and_segment(make_server):
    live = make_server(process_sessions=False)
    enable_uuid(live)
    day1, day2 = midnight(3), midnight(2)
    tell(live, [
        item("jane", day1 + HOUR, "open", "player", None, "Menu", pInit={"type": 1}),
        item("jane", day1 + 2 * HOUR, "open", "player", None, "Menu"),
        item("omar", day1 + 3 * HOUR, "open", "player", None, "Menu"),
        item("jane", day1 + HOUR + MIN, "search", "widgetSearch", None, "billing"),
        item("omar", day1 + 3 * HOUR + MIN, "search", "widgetSearch", None, "billing"),
        item("omar", day1 + 3 * HOUR + 2 * MIN, "search", "widgetSearch", None, "invoice"),
        item("jane", day1 + 4 * HOUR, "close", "player", None, "Menu"),  # not an open
        item("dev-9", day2 + HOUR, "open", "player", None, "Menu", sid="s-kim", anonymous=True),
        item("kim", day2 + HOUR + MIN, "search", "widgetSearch", None, "Billing", sid="s-kim"),
    ])  # fmt: skip
    live.app.state.sessions.run(now_ms())
    params = {"from": _iso(day1), "to": _iso(day2 + DAY)}
    body = report(live, "widget", **params).json()
    assert body["totals"] == {"opens": 4, "searches": 4, "unique_users": 3}
    assert [d["day"] for d in body["days"]] == [_iso(day1), _iso(day2), _iso(day2 + DAY)]
    assert body["days"][0] == {"day": _iso(day1), "opens": 3, "searches": 3, "unique_users": 2}
    assert body["days"][1] == {"day": _iso(day2), "opens": 1, "searches": 1, "unique_users": 1}  # dev-9 is kim
    assert body["days"][2]["opens"] == 0
    assert body["top_search_terms"] == [
        {"term": "billing", "searches": 2, "unique_users": 2},
        {"term": "Billing", "searches": 1, "unique_users": 1},
        {"term": "invoice", "searches": 1, "unique_users": 1},
    ]
    assert report(live, "widget", terms="1", **params).json()["top_search_terms"][0]["term"] == "billing"
    terms = report(live, "widget/search-terms", limit="2", format="csv", **params)
    assert list(csv.reader(io.StringIO(terms.text))) == [
        ["term", "searches", "unique_users"],
        ["billing", "2", "2"],
        ["Billing", "1", "1"],
    ]
    days = list(csv.DictReader(io.StringIO(report(live, "widget", format="csv", **params).text)))
    assert [(d["day"], d["opens"], d["searches"]) for d in days] == [
        (_iso(day1), "3", "3"),
        (_iso(day2), "1", "1"),
        (_iso(day2 + DAY), "0", "0"),
    ]
    assert report(live, "widget", terms="101").json()["path"] == "terms"

    assert post(live, "/users/u:kim/attributes", {"Plan": "VIP"}, "PATCH").status_code == 200
    segment = post(live, "/segments", {"name": "VIP", "rules": {"rules": [
        {"attribute": "Plan", "operator": "is", "value": "VIP"}]}}).json()["id"]  # fmt: skip
    vip = report(live, "widget", segment=segment, **params).json()
    assert vip["totals"] == {"opens": 1, "searches": 1, "unique_users": 1}
    assert vip["top_search_terms"] == [{"term": "Billing", "searches": 1, "unique_users": 1}]
    vip_items = report(live, "items", segment=segment).json()["items"]
    assert vip_items == []

    # The segment filter needs UUID settings, like every segment route; the reports themselves do not.
    with live.admin() as admin:
        for env in ("production", "test"):
            admin.patch(
                f"/api/projects/{live.project.project.id}/environments/{env}", json={"uuid": {"provider": "none"}}
            )
    assert report(live, "widget", segment=segment).status_code == 409
    assert report(live, "widget", **params).json()["totals"]["opens"] == 4


def test_items_report_within_a_segment_on_whole_days_and_partial_days(make_server):
    """A segment narrows the items report to its members and the anonymous ids they own, with exact plays,
    unique users and completions; whole days are read from the rollup, a partial day from the events."""
    live = make_server(process_sessions=False)
    enable_uuid(live)
    day = midnight(5)
    t = day + 9 * HOUR
    tell(live, [
        # jane (a member): two plays, the first completed.
        item("jane", t, "play", "wt", WT, "Log in", pid="p-jane-1"),
        item("jane", t + 5 * MIN, "complete", "wt", WT, "Log in", pid="p-jane-1"),
        item("jane", t + 20 * MIN, "play", "wt", WT, "Log in", pid="p-jane-2"),
        # kim (a member) starts anonymously as dev-9 in the WalkMe session she signs in to: two plays as dev-9,
        # the first completed after she signed in.
        item("dev-9", t + 2 * HOUR, "play", "wt", WT, "Log in", pid="p-kim-1", sid="s-kim", anonymous=True),
        item("kim", t + 2 * HOUR + 5 * MIN, "complete", "wt", WT, "Log in", pid="p-kim-1", sid="s-kim"),
        item("dev-9", t + 3 * HOUR, "play", "wt", WT, "Log in", pid="p-kim-2", sid="s-kim", anonymous=True),
        item("kim", t + 3 * HOUR + MIN, "play", "shoutout", "5002", "Upgrade", pid="so-kim", sid="s-kim"),
        # omar (not a member): a completed play at each time the members play.
        *(x for at in (t, t + 20 * MIN, t + 2 * HOUR) for x in (
            item("omar", at, "play", "wt", WT, "Log in", pid=f"p-omar-{at}"),
            item("omar", at + MIN, "complete", "wt", WT, "Log in", pid=f"p-omar-{at}"))),
    ])  # fmt: skip
    live.app.state.sessions.run(now_ms())  # closes the sessions and stitches dev-9 to kim
    for user in ("u:jane", "u:kim"):
        assert post(live, f"/users/{user}/attributes", {"Plan": "VIP"}, "PATCH").status_code == 200
    created = post(live, "/segments", {"name": "VIP", "rules": {"rules": [
        {"attribute": "Plan", "operator": "is", "value": "VIP"}]}})  # fmt: skip
    assert created.status_code == 201, created.text
    segment = created.json()["id"]

    def counts(**params) -> dict[str, tuple[int, int, int | None]]:
        response = report(live, "items", **params)
        assert response.status_code == 200, response.text
        return {i["object_id"]: (i["plays"], i["unique_users"], i["completions"]) for i in response.json()["items"]}

    whole_day = {"from": _iso(day), "to": _iso(day)}  # whole UTC days: the rollup
    assert counts(**whole_day) == {WT: (7, 3, 5), "5002": (1, 1, 0)}
    vip = report(live, "items", segment=segment, **whole_day).json()
    assert vip["segment"] == {"id": segment, "name": "VIP", "members": 2}
    assert {i["object_id"]: (i["plays"], i["unique_users"], i["completions"]) for i in vip["items"]} == {
        WT: (4, 2, 2),  # jane 2 + dev-9 2; jane's and kim's first plays completed
        "5002": (1, 1, 0),
    }
    assert by_id(vip)[WT]["completion_rate"] == 0.5

    # From 10 minutes in to 2 h 10 min in (ms, so partial days: the events): jane's second play, dev-9's
    # first and kim's completion of it; omar's plays at 20 min and 2 h are not the segment's.
    partial = {"from": str(t + 10 * MIN), "to": str(t + 2 * HOUR + 10 * MIN)}
    assert counts(**partial) == {WT: (4, 3, 3)}
    assert counts(segment=segment, **partial) == {WT: (2, 2, 1)}
    # A range of a partial day and a whole day together: both sources, one answer.
    mixed = {"from": str(t + 10 * MIN), "to": _iso(day + DAY)}
    assert counts(segment=segment, **mixed) == {WT: (3, 2, 1), "5002": (1, 1, 0)}
