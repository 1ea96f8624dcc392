"""Custom attributes: registry, the cap of 100, types, history, pre-provisioning, through the API."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from test_users_api import api, enable_uuid, send, user_events
from usertrail.profiles.custom import InvalidValue, convert, infer_type
from usertrail.store.attributes import AttributeStore
from usertrail.store.database import create_engine, migrate

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


def _alembic(engine: sa.Engine, action: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    from usertrail.store.database import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        getattr(command, action)(config, revision)


def test_migration_0023_moves_values_and_history_into_one_row_per_user_and_back(empty_database_url):
    """Rows written in the old form (one per value, one per change) arrive as one row per user and
    one history row per write, read the same through AttributeStore, and a downgrade restores them."""
    engine = create_engine(empty_database_url)
    try:
        _alembic(engine, "upgrade", "0019")
        old = [
            ("Plan", "string", '"VIP"', None, "csv", 2_000),
            ("Seats", "number", "12.0", 12.0, "csv", 2_000),
            ("Trial", "boolean", "false", None, "salesforce", 3_000),
            ("Renewal", "date", '"2027-01-31"', None, "csv", 2_000),
        ]
        history = [  # Plan free -> Pro -> VIP in one write at 2_000; Trial set at 3_000
            ("Plan", None, '"free"', "csv", 1_000, "0000000001000-0"),
            ("Plan", '"free"', '"Pro"', "csv", 2_000, "0000000002000-0"),
            ("Seats", None, "12.0", "csv", 2_000, "0000000002000-1"),
            ("Renewal", None, '"2027-01-31"', "csv", 2_000, "0000000002000-2"),
            ("Plan", '"Pro"', '"VIP"', "csv", 2_000, "0000000002000-3"),
            ("Trial", None, "false", "salesforce", 3_000, "0000000003000-0"),
        ]
        with engine.begin() as conn:
            for n, (name, type_, *_rest) in enumerate(old):
                conn.execute(
                    sa.text(
                        "INSERT INTO attribute_registry (project_id, name, type, integrations, created_at, updated_at)"
                        " VALUES (7, :n, :t, '[\"csv\"]', :at, :at)"
                    ),
                    {"n": name, "t": type_, "at": n},
                )
            for name, _, value, number, source, at in old:
                conn.execute(
                    sa.text(
                        "INSERT INTO user_attributes (project_id, user_key, name, value, value_num, source, updated_at)"
                        " VALUES (7, 'u:lena', :n, :v, :num, :s, :at)"
                    ),
                    {"n": name, "v": value, "num": number, "s": source, "at": at},
                )
            for name, old_value, new_value, source, at, id_ in history:
                conn.execute(
                    sa.text(
                        "INSERT INTO attribute_history (project_id, user_key, id, name, old_value, new_value, source,"
                        " changed_at) VALUES (7, 'u:lena', :id, :n, :o, :v, :s, :at)"
                    ),
                    {"id": id_, "n": name, "o": old_value, "v": new_value, "s": source, "at": at},
                )
        migrate(engine)
        store = AttributeStore(engine)
        assert store.values(7, ["u:lena"]) == {
            "Plan": {"value": "VIP", "source": "csv", "updated_at": 2_000},
            "Seats": {"value": 12.0, "source": "csv", "updated_at": 2_000},
            "Renewal": {"value": "2027-01-31", "source": "csv", "updated_at": 2_000},
            "Trial": {"value": False, "source": "salesforce", "updated_at": 3_000},
        }
        assert [(h["name"], h["old"], h["new"], h["changed_at"]) for h in store.history(7, ["u:lena"], "Plan")] == [
            ("Plan", "free", "VIP", 2_000),  # one write: from before it to after it
            ("Plan", None, "free", 1_000),
        ]
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM custom_attributes")).scalar() == 1
            assert conn.execute(sa.text("SELECT count(*) FROM attribute_changes")).scalar() == 3
            slots = dict(conn.execute(sa.text("SELECT name, slot FROM attribute_registry")).all())
        assert slots == {"Plan": "t0", "Seats": "n0", "Trial": "n1", "Renewal": "t1"}
        # Writes after the migration take the next free slots.
        assert store.write(7, "csv", [("u:lena", {"Team": "core"})]).registered == ["Team"]

        _alembic(engine, "downgrade", "0019")
        with engine.connect() as conn:
            values = dict(
                conn.execute(sa.text("SELECT name, value FROM user_attributes WHERE user_key = 'u:lena'")).all()
            )
            changes = conn.execute(sa.text("SELECT count(*) FROM attribute_history")).scalar()
        assert values == {
            "Plan": '"VIP"',
            "Seats": "12.0",
            "Trial": "false",
            "Renewal": '"2027-01-31"',
            "Team": '"core"',
        }
        assert changes == 6  # Plan at 1_000; Plan, Seats and Renewal at 2_000; Trial; Team
    finally:
        engine.dispose()
