"""The routes the segment pages added, through the real HTTP API on both engines: the rule catalogue a rule
builder reads (every operator it offers, with a value of the shape it names, is accepted), and the member
counts of the segment list."""

from __future__ import annotations

from test_segments_api import post, session
from test_users_api import api, enable_uuid, send

from conftest import LiveServer
from samples import now_ms

DAY = 86_400_000

# A value of each operand shape the catalogue names, as a rule builder would send it.
SAMPLES = {
    "none": {},
    "text": {"value": "FR"},
    "texts": {"value": ["FR", "DE"]},
    "number": {"value": 3},
    "number_range": {"value": [1, 5]},
    "date": {"value": "2026-11-01"},
    "date_range": {"value": ["2026-11-01", "2026-11-30"]},
    "count_unit": {"value": 7, "unit": "weeks"},
    "days": {"value": 14},
    "boolean": {"value": True},
}


def test_catalog_lists_every_attribute_with_operators_the_parser_accepts(make_server):
    live: LiveServer = make_server(process_sessions=False)
    for env in ("production", "test"):
        post(live, f"/environments/{env}", {"uuid": {"provider": "none"}}, "PATCH")
    refused = api(live, "/segments/catalog")
    assert refused.status_code == 409 and refused.json()["error"] == "uuid_settings_required"
    enable_uuid(live)
    now = now_ms()
    send(live, session("ann", now - 2 * DAY))
    live.app.state.sessions.run(now_ms())
    answer = post(live, "/users/u:ann/attributes", {"Plan": "VIP", "Seats": 12, "Renewal": "2026-12-01", "Trial": True},
                  "PATCH")  # fmt: skip
    assert answer.status_code == 200, answer.text

    response = api(live, "/segments/catalog")
    assert response.status_code == 200, response.text
    catalog = response.json()
    by_name = {a["name"]: a for a in catalog["attributes"]}
    assert [a["name"] for a in catalog["attributes"][:2]] == ["First seen", "Last seen"]
    assert {n: (by_name[n]["kind"], by_name[n]["type"]) for n in ("First seen", "Country", "role", "Plan", "Seats",
                                                                  "Renewal", "Trial")} == {
        "First seen": ("standard", "datetime"),
        "Country": ("standard", "string"),
        "role": ("analytics", "string"),
        "Plan": ("custom", "string"),
        "Seats": ("custom", "number"),
        "Renewal": ("custom", "date"),
        "Trial": ("custom", "boolean"),
    }  # fmt: skip
    assert by_name["Average session duration"]["unit"] == "ms" and "unit" not in by_name["Total sessions"]
    operands = {(n, o["operator"]): o["operand"] for n, a in by_name.items() for o in a["operators"]}
    assert operands[("Country", "is_one_of")] == "texts"
    assert operands[("First seen", "within_last")] == "count_unit"
    assert operands[("Total sessions", "between")] == "number_range"
    assert operands[("Renewal", "between")] == "date_range"
    assert operands[("Seats", "changed_to")] == "number" and operands[("Trial", "was")] == "boolean"
    assert ("Country", "changed_to") not in operands  # change operators read integrations' history only
    assert [o["operator"] for o in catalog["behaviour"]["operators"]] == ["did", "did_not", "stopped"]
    assert "play" in catalog["behaviour"]["event_types"] and catalog["units"] == ["hours", "days", "weeks"]
    assert catalog["limits"] == {"rules": 200, "depth": 8, "list": 1000, "days": 3660}

    # Every operator the catalogue offers, with a value of the shape it names, is a valid rule.
    rules = []
    for (name, op), shape in operands.items():
        sample = dict(SAMPLES[shape])
        if op == "changed_to":
            sample["days"] = 7
        rules.append({"attribute": name, "operator": op, **sample})
    for op in catalog["behaviour"]["operators"]:
        rule = {"behaviour": {"event": "play"}, "operator": op["operator"], "days": 10}
        if "times" in op["fields"]:
            rule["times"] = 2
        if "since_days" in op["fields"]:
            rule["since_days"] = 30
        rules.append(rule)
    # In groups under the 200-rule limit: a refusal names the rule's index in its path.
    limit = catalog["limits"]["rules"] // 2
    for first in range(0, len(rules), limit):
        group = rules[first : first + limit]
        answer = post(live, "/segments/preview", {"rules": {"match": "any", "rules": group}, "sample": 0})
        assert answer.status_code == 200, (first, answer.text)
    assert len(rules) > 100


def test_segment_list_has_member_counts(make_server):
    live: LiveServer = make_server(process_sessions=False)
    enable_uuid(live)
    now = now_ms()
    for key, days_ago in (("ann", 2), ("bob", 3), ("cid", 40)):
        send(live, session(key, now - days_ago * DAY))
    live.app.state.sessions.run(now_ms())
    recent = {"rules": {"rules": [{"attribute": "Last seen", "operator": "within_last", "value": 7}]}}
    assert post(live, "/segments/preview", recent).json()["count"] == 2
    created = post(live, "/segments", {"name": "Recent", **recent})
    assert created.status_code == 201 and created.json()["membership"] == {"entered": 2, "left": 0}
    nobody = post(live, "/segments", {"name": "Nobody", "rules": {"rules": [{"attribute": "Country", "operator": "is",
                                                                               "value": "XX"}]}})  # fmt: skip
    assert nobody.status_code == 201

    listed = {s["name"]: s for s in api(live, "/segments").json()["segments"]}
    assert (listed["Recent"]["member_count"], listed["Nobody"]["member_count"]) == (2, 0)
    assert listed["Recent"]["id"] == created.json()["id"]

    # A rule change recomputes the stored members, and the list follows.
    wider = {"rules": {"rules": [{"attribute": "Last seen", "operator": "within_last", "value": 60}]}}
    assert post(live, f"/segments/{created.json()['id']}", wider, "PATCH").status_code == 200
    listed = {s["name"]: s["member_count"] for s in api(live, "/segments").json()["segments"]}
    assert listed == {"Recent": 3, "Nobody": 0}
