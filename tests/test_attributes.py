"""Custom attributes: registry, the cap of 100, types, history, pre-provisioning, through the API."""

from __future__ import annotations

import pytest

from test_users_api import api, enable_uuid, send, user_events
from usertrail.profiles.custom import InvalidValue, convert, infer_type
from usertrail.store.attributes import AttributeStore

from conftest import LiveServer
from samples import now_ms


def patch(live: LiveServer, key: str, values: dict):
    with live.admin() as admin:
        return admin.patch(f"/api/projects/{live.project.project.id}/users/{key}/attributes", json=values)


def test_conversion_by_type():
    assert convert("42", "number") == 42.0 and convert(3, "number") == 3.0
    assert convert("2026-11-20", "date") == "2026-11-20"
    assert convert("yes", "boolean") is True and convert(False, "boolean") is False
    assert convert(7, "string") == "7"
    for value, type_ in [
        ("abc", "number"),
        ("20/11/2026", "date"),
        ("maybe", "boolean"),
        (True, "number"),
        ({"a": 1}, "string"),
        ("2026-02-30", "date"),
    ]:
        with pytest.raises(InvalidValue):
            convert(value, type_)
    assert [infer_type(v) for v in (True, 3, "2026-01-01", "VIP")] == ["boolean", "number", "date", "string"]


def test_attributes_through_the_api(make_server):
    live = make_server(process_sessions=False)
    enable_uuid(live)
    # Pre-provisioning: values for a user nobody has seen yet are kept.
    first = patch(live, "u:lena", {"plan": "free", "seats": 3, "renewal": "2027-01-31", "trial": True})
    assert first.status_code == 200, first.text
    assert first.json()["registered"] == ["plan", "seats", "renewal", "trial"]
    assert api(live, "/users/u:lena").status_code == 404  # not an end user until a session closes
    send(live, user_events("lena", now_ms() - 2 * 3_600_000, 3))
    live.app.state.sessions.run(now_ms())
    lena = api(live, "/users/u:lena").json()
    custom = {k: v["value"] for k, v in lena["custom_attributes"].items()}
    assert custom == {"plan": "free", "seats": 3.0, "renewal": "2027-01-31", "trial": True}
    assert lena["custom_attributes"]["plan"]["source"] == "admin_api"

    upgraded = patch(live, "u:lena", {"plan": "VIP", "seats": "ten"})
    assert upgraded.status_code == 400
    body = upgraded.json()
    assert body["applied"] == 1 and body["errors"] == [
        {"record": 0, "field": "seats", "reason": "expected a number, got 'ten'"}
    ]
    history = api(live, "/users/u:lena/attributes/history?name=plan").json()["history"]
    assert [(h["old"], h["new"]) for h in history] == [("free", "VIP"), (None, "free")]
    assert patch(live, "u:lena", {"plan": "VIP"}).json()["changed"] == 0  # same value: no history entry
    assert len(api(live, "/users/u:lena/attributes/history?name=plan").json()["history"]) == 2

    registry = api(live, "/attributes").json()
    assert (registry["cap"], registry["count"]) == (100, 4)
    assert {a["name"]: a["type"] for a in registry["attributes"]} == {
        "plan": "string",
        "renewal": "date",
        "seats": "number",
        "trial": "boolean",
    }
    assert all(a["integrations"] == ["admin_api"] for a in registry["attributes"])

    exported = api(live, "/users/u:lena/export").json()
    assert exported["custom_attributes"]["plan"]["value"] == "VIP" and len(exported["attribute_history"]) >= 5
    assert api(live, "/users/u:lena", "DELETE").status_code == 200
    assert live.scalar("SELECT count(*) FROM custom_attributes WHERE user_key = 'u:lena'") == 0
    assert live.scalar("SELECT count(*) FROM attribute_changes WHERE user_key = 'u:lena'") == 0


def test_the_hundred_and_first_name_is_refused_and_the_rest_applies(engine, project_id_factory):
    store = AttributeStore(engine)
    pid = project_id_factory()
    report = store.write(pid, "csv", [("u:a", {f"attr{i:03d}": i for i in range(99)})])
    assert len(report.registered) == 99 and not report.errors
    batch = [
        ("u:a", {"attr000": 1000, "extra1": "x"}),  # existing name updates; the 100th name fits
        ("u:b", {"extra2": "y", "attr001": 5}),  # the 101st name is refused, attr001 still applies
    ]
    report = store.write(pid, "csv", batch)
    assert report.registered == ["extra1"]
    [error] = report.errors
    assert (error.record, error.field) == (1, "extra2")
    assert "maximum of 100" in error.reason and "attr000" in error.reason and "extra1" in error.reason
    assert store.values(pid, ["u:a"])["attr000"]["value"] == 1000.0
    assert store.values(pid, ["u:b"])["attr001"]["value"] == 5.0
    assert len(store.registry(pid)) == 100
    assert [h["new"] for h in store.history(pid, ["u:a"], "attr000")] == [1000.0, 0.0]
    # Names are case-sensitive: "Attr000" would be a new (101st) name.
    assert store.write(pid, "csv", [("u:a", {"Attr000": 1})]).errors


@pytest.fixture
def project_id_factory(engine):
    from usertrail.store.projects import ProjectStore

    return lambda: ProjectStore(engine).create("attrs").project.id


def test_analytics_properties_from_events(make_server):
    live = make_server(process_sessions=False)
    enable_uuid(live)
    t = now_ms() - 3 * 3_600_000
    first = user_events(
        "mo", t, 3, wm_userVars={"name": "Mo", "role": "analyst", "type": "free", "status": "", "info": ""}
    )
    later = user_events("mo", t + 3_600_000, 2, wm_userVars={"type": "VIP", "status": "active"})
    send(live, first)
    send(live, later)
    with live.client() as client:  # native identify traits carry them too
        client.post(
            f"/v1/batch?key={live.project.write_key}",
            json={
                "batch": [
                    {"type": "identify", "userId": "kai", "traits": {"role": "admin", "plan": "x"}, "timestamp": t}
                ]
            },
        )
        client.post(
            f"/v1/batch?key={live.project.write_key}",
            json={"batch": [{"type": "track", "event": "Opened", "userId": "kai", "timestamp": t + 60_000}]},
        )
    live.app.state.sessions.run(now_ms())
    mo = api(live, "/users/u:mo").json()["custom_attributes"]
    assert {k: v["value"] for k, v in mo.items()} == {
        "name": "Mo",
        "role": "analyst",
        "type": "VIP",
        "status": "active",
    }
    assert mo["type"]["source"] == "analytics_properties"
    kai = api(live, "/users/u:kai").json()["custom_attributes"]
    assert {k: v["value"] for k, v in kai.items()} == {"role": "admin"}  # only the five properties
    assert api(live, "/attributes").json()["count"] == 0  # they do not count against the cap
