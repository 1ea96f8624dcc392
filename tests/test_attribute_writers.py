"""What every attribute writer shares, through the real HTTP server on both engines: the built-in
names are reserved, ids are keyed (and hashed) exactly as collection keys them, and admin writes
are in the integration log."""

from __future__ import annotations

import pytest

from test_csv_import import upload, wait_for_job
from test_scim import admin_request as scim_request
from test_scim import okta_user, scim, scim_token
from test_update_api import admin_request, create_client, get_token, log_entries, update
from test_users_api import api, enable_uuid, send, user_events
from usertrail.collect.pipeline import hash_identifier
from usertrail.integrations.user_keys import integration_uuid, key_function
from usertrail.profiles.custom import RESERVED_NAMES
from usertrail.profiles.standard import STANDARD_ATTRIBUTES
from usertrail.project_settings import EnvironmentSettings, UuidSettings

from conftest import LiveServer
from samples import now_ms

MIN = 60_000
RESERVED_LIST = "First seen, Last seen, Total sessions"  # the start of the list every refusal names


def test_the_reserved_names_are_the_built_in_attributes():
    assert {*STANDARD_ATTRIBUTES, "name", "role", "type", "status", "info"} == RESERVED_NAMES
    assert len(RESERVED_NAMES) == 16


def test_built_in_names_are_refused_by_every_writer(make_server):
    live = make_server(process_sessions=False)
    enable_uuid(live)
    pid = live.project.project.id

    # End User Update API: the client's mapping.
    refused = admin_request(live, "POST", "/integrations/api-clients",
                            json={"name": "crm", "user_id_property": "id",
                                  "fields": [{"payload": "plan", "name": "Plan", "type": "string"},
                                             {"payload": "job", "name": "role", "type": "string"}]})  # fmt: skip
    assert refused.status_code == 400 and refused.json()["path"] == "$.fields[1].name"
    assert "'role' is a built-in attribute" in refused.json()["reason"] and RESERVED_LIST in refused.json()["reason"]
    # A payload path named like a built-in is refused too when it is also the name.
    unnamed = admin_request(live, "POST", "/integrations/api-clients",
                            json={"name": "crm", "user_id_property": "id",
                                  "fields": [{"payload": "type", "type": "string"}]})  # fmt: skip
    assert unnamed.status_code == 400 and unnamed.json()["path"] == "$.fields[0].name"

    # Admin PATCH: the reserved field is an error naming the list; the other field applies.
    with live.admin() as admin:
        patched = admin.patch(f"/api/projects/{pid}/users/u:lena/attributes", json={"Country": "FR", "Plan": "VIP"})
    assert patched.status_code == 400
    [error] = patched.json()["errors"]
    assert error["field"] == "Country" and RESERVED_LIST in error["reason"] and patched.json()["applied"] == 1

    # CSV: a column imported under its own reserved name, or renamed to one.
    own = upload(live, "user_id,type\nlena,admin\n", id_column="user_id")
    assert own.status_code == 400 and own.json()["error"] == "invalid_mapping" and own.json()["path"] == "rename"
    assert "'type' is a built-in attribute" in own.json()["reason"]
    renamed = upload(live, "user_id,plan\nlena,VIP\n", id_column="user_id", rename="plan=status")
    assert renamed.status_code == 400 and renamed.json()["path"] == "rename"
    accepted = upload(live, "user_id,type\nlena,admin\n", id_column="user_id", rename="type=Kind")
    fine = wait_for_job(live, accepted.json())
    assert fine["status"] == "done" and fine["values_applied"] == 1

    # S3 sources: a column mapped onto a reserved name.
    with live.admin() as admin:
        s3 = admin.post(f"/api/projects/{pid}/integrations/s3",
                        json={"name": "wh", "bucket": "acme-exports", "id_column": "user_id",
                              "columns": [{"column": "seats"}, {"column": "job", "name": "info"}]})  # fmt: skip
    assert s3.status_code == 400 and s3.json()["path"] == "$.columns[1].name" and RESERVED_LIST in s3.json()["reason"]

    # Salesforce sources: a field mapped onto a reserved name (refused before any login).
    with live.admin() as admin:
        sf = admin.post(f"/api/projects/{pid}/integrations/salesforce",
                        json={"auth": {"flow": "password", "username": "api@acme.example", "password": "x"},
                              "object": "Contact", "match_field": "Email",
                              "fields": [{"field": "MailingCity", "name": "City", "type": "string"}]})  # fmt: skip
    assert sf.status_code == 400 and sf.json()["path"] == "$.fields[0].name" and RESERVED_LIST in sf.json()["reason"]

    # SCIM: the mapping of SCIM attributes onto custom attributes.
    mapping = [{"path": "title", "name": "role", "type": "string"}]
    scim_refused = scim_request(live, "PUT", "", json={"mapping": mapping})
    assert scim_refused.status_code == 400 and scim_refused.json()["path"] == "$.mapping[0].name"
    assert RESERVED_LIST in scim_refused.json()["reason"]

    # The store itself refuses them, whatever the caller: nothing reserved was ever registered.
    report = live.app.state.attributes.write(pid, "csv", [("u:max", {"Total sessions": 3, "name": "Max", "Seats": 2})])
    assert sorted(e.field for e in report.errors) == ["Total sessions", "name"] and report.applied == 1
    assert sorted(a["name"] for a in api(live, "/attributes").json()["attributes"]) == ["Kind", "Plan", "Seats"]


@pytest.mark.parametrize(
    ("environments", "expected"),
    [
        ({"production": ("variable", True, "a"), "test": ("variable", True, "b")}, ("a",)),
        ({"production": ("none", True, "a"), "test": ("variable", True, "b")}, ("b",)),
        ({"production": ("walkme_id", False, ""), "beta": ("cookie", True, "c"), "alpha": ("variable", False, "")}, ()),
        ({"production": ("none", False, ""), "test": ("walkme_id", True, "x")}, None),
    ],
)
def test_the_settings_integrations_hash_by(environments, expected):
    settings = {
        name: EnvironmentSettings(uuid=UuidSettings(provider=provider, hash=hashed, salt=salt))
        for name, (provider, hashed, salt) in environments.items()
    }
    chosen = integration_uuid(settings)
    if expected is None:
        assert chosen is None and key_function(chosen)("lena") == "u:lena"
    elif expected == ():
        assert chosen is not None and not chosen.hash and key_function(chosen)("lena") == "u:lena"
    else:
        assert key_function(chosen)("lena") == "u:" + hash_identifier("lena", expected[0])


def hashed(user_id: str) -> str:
    return "u:" + hash_identifier(user_id, "pepper")


def test_hashed_ids_join_events_from_every_writer(make_server):
    live: LiveServer = make_server(process_sessions=False)
    pid = live.project.project.id
    with live.admin() as admin:
        settings = {"uuid": {"provider": "variable", "source": "currentUser.id", "hash": True, "salt": "pepper"}}
        assert admin.patch(f"/api/projects/{pid}/environments/production", json=settings).status_code == 200
    now = now_ms()
    # "max" is born from events first; "lena" only later.
    send(live, user_events("max", now - 5 * 60 * MIN, 3))
    live.app.state.sessions.run(now_ms())

    client = create_client(live, fields=[{"payload": "plan", "name": "Plan", "type": "string"}], id_path="id")
    records = [{"id": "lena", "plan": "VIP"}, {"id": "max", "plan": "Pro"}]
    answer = update(live, get_token(live, client), {"data": records})
    assert answer.status_code == 202 and answer.json()["records_applied"] == 2
    uploaded = upload(live, "user_id,Seats\nlena,12\nmax,3\n", id_column="user_id", type="Seats=number")
    job = wait_for_job(live, uploaded.json())
    assert job["status"] == "done" and job["rows_applied"] == 2
    with scim(live, scim_token(live)) as idp:
        assert idp.post("/Users", json=okta_user("lena")).status_code == 201

    # Nothing was written under the raw ids: every value sits on the key events use.
    assert live.scalar("SELECT count(*) FROM custom_attributes WHERE user_key IN ('u:lena', 'u:max')") == 0
    stored = live.app.state.attributes.values(pid, [hashed("lena")])
    assert {k: v["value"] for k, v in stored.items() if k in ("Plan", "Seats", "department")} == {
        "Plan": "VIP", "Seats": 12.0, "department": "Sales"}  # fmt: skip

    send(live, user_events("lena", now - 3 * 60 * MIN, 3))
    live.app.state.sessions.run(now_ms())
    assert live.scalar("SELECT count(*) FROM end_users WHERE user_key = :k", k=hashed("lena")) == 1

    with live.admin() as admin:
        preview = admin.post(f"/api/projects/{pid}/segments/preview", json={"rules": {"rules": [
            {"attribute": "Seats", "operator": "gte", "value": 3},
            {"attribute": "Plan", "operator": "is_one_of", "value": ["VIP", "Pro"]}]}, "sample": 10})  # fmt: skip
    assert preview.status_code == 200, preview.text
    assert {u["user_key"] for u in preview.json()["sample"]} == {hashed("lena"), hashed("max")}
    maxed = live.app.state.attributes.values(pid, [hashed("max")])
    assert (maxed["Plan"]["value"], maxed["Seats"]["value"]) == ("Pro", 3.0)


def test_admin_writes_are_in_the_integration_log(make_server):
    live = make_server(process_sessions=False)
    enable_uuid(live)
    pid = live.project.project.id
    with live.admin() as admin:
        ok = admin.patch(f"/api/projects/{pid}/users/u:lena/attributes", json={"Plan": "VIP", "Seats": 3})
        same = admin.patch(f"/api/projects/{pid}/users/u:lena/attributes", json={"Plan": "VIP"})
        bad = admin.patch(f"/api/projects/{pid}/users/u:lena/attributes", json={"Seats": "many", "role": "x"})
    assert ok.status_code == 200 and same.status_code == 200 and bad.status_code == 400
    entries = log_entries(live, "?integration=admin_api")
    assert [(e["kind"], e["records"], e["applied"], e["error_count"]) for e in entries] == [
        ("update", 1, 0, 2), ("update", 1, 1, 0), ("update", 1, 1, 0)]  # fmt: skip
    newest, middle, oldest = entries
    actor = oldest["details"].pop("actor")
    assert actor.startswith("adm_")  # the admin token's key id, as in the audit log
    assert oldest["details"] == {"user_key": "u:lena", "values_applied": 2, "values_changed": 2}
    assert middle["details"]["values_changed"] == 0
    assert {e["field"] for e in newest["errors"]} == {"Seats", "role"}
