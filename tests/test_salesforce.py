"""The Salesforce import through the real HTTP server, on both engines, against a fake Salesforce org
served over HTTPS on 127.0.0.1 (tests/salesforce_fake.py): configuration and its validation,
masked credentials, the first full run with paging, incremental runs by SystemModstamp, history,
login and query errors, expired sessions, the JWT bearer flow, the cap, and interval scheduling."""

from __future__ import annotations

import datetime as dt
import re
import time
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cli_runner import Ran, run_cli
from salesforce_fake import FakeSalesforce, RunningFake, make_tls
from test_users_api import enable_uuid
from usertrail.integrations.salesforce import MASK, build_importer, parse_source
from usertrail.integrations.secretbox import SecretBox
from usertrail.project_settings import UuidSettings
from usertrail.store.database import create_engine, migrate
from usertrail.store.projects import ProjectStore

from conftest import LiveServer

MIN = 60_000
T0 = int(dt.datetime(2026, 11, 20, 10, 0, tzinfo=dt.UTC).timestamp() * 1000)
CONTACT_FIELDS = ["Email", "Usertrail_Id__c", "Plan__c", "Seats__c", "Renewal__c", "Trial__c", "Account.Type"]
FIELDS = [
    {"field": "Plan__c", "name": "Plan", "type": "string"},
    {"field": "seats__c", "name": "Seats", "type": "number"},  # Salesforce names are case-insensitive
    {"field": "Renewal__c", "name": "Renewal", "type": "date"},
    {"field": "Trial__c", "name": "Trial", "type": "boolean"},
    {"field": "Account.Type", "name": "Account type", "type": "string"},
]
SELECT = (
    "SELECT Id, SystemModstamp, Usertrail_Id__c, Plan__c, seats__c, Renewal__c, Trial__c, Account.Type FROM Contact"
)


class Clock:
    """The importer's clock, moved by the test."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture(scope="session")
def tls(tmp_path_factory):
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def org(tls):
    running = RunningFake(tls)
    running.org.add_user("api@acme.example", "s3cret-pass", "TOKEN123")
    running.org.define("Contact", CONTACT_FIELDS)
    yield running.org
    running.stop()


def start(make_server, tls, **overrides) -> tuple[LiveServer, Clock]:
    live = make_server(process_sessions=False, **overrides)
    enable_uuid(live)
    clock = Clock(T0)
    importer = live.app.state.salesforce
    importer.clock = clock
    importer.verify = str(tls.ca)
    return live, clock


def source_body(org: FakeSalesforce, **changes) -> dict:
    body = {
        "name": "CRM contacts",
        "login_url": org.base_url,
        "auth": {"flow": "password", "username": "api@acme.example", "password": "s3cret-pass",
                 "security_token": "TOKEN123"},
        "object": "Contact",
        "match_field": "Usertrail_Id__c",
        "fields": FIELDS,
        "interval_minutes": 60,
    }  # fmt: skip
    body.update(changes)
    return body


def call(live: LiveServer, method: str, path: str = "", **kwargs) -> httpx.Response:
    with live.admin() as admin:
        return admin.request(method, f"/api/projects/{live.project.project.id}/integrations/salesforce{path}", **kwargs)


def create(live: LiveServer, org: FakeSalesforce, **changes) -> dict:
    response = call(live, "POST", json=source_body(org, **changes))
    assert response.status_code == 201, response.text
    return response.json()


def run(live: LiveServer, source: dict) -> dict:
    response = call(live, "POST", f"/{source['source_id']}/run")
    assert response.status_code == 200, response.text
    return response.json()


def contact(n: int, user: str | None, modstamp: int, **values) -> dict:
    return {"Id": f"003{n:015d}", "SystemModstamp": modstamp, "Usertrail_Id__c": user, **values}


def values(live: LiveServer, user: str) -> dict:
    return {k: v["value"] for k, v in live.app.state.attributes.values(live.project.project.id, [f"u:{user}"]).items()}


def soql_time(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_first_run_imports_everything_in_pages_then_only_changes(make_server, tls, org):
    live, clock = start(make_server, tls)
    org.page_size = 2
    org.put(
        "Contact",
        contact(
            1,
            "lena",
            T0 - 50 * MIN,
            Plan__c="VIP",
            Seats__c=12,
            Trial__c=True,
            Renewal__c="2027-01-31T08:00:00.000+0000",
            **{"Account.Type": "Customer"},
        ),
    )
    org.put("Contact", contact(2, "omar", T0 - 40 * MIN, Plan__c="Free", Seats__c=3, Trial__c=False, Account=None))
    org.put("Contact", contact(3, None, T0 - 35 * MIN, Plan__c="orphan"))
    org.put("Contact", contact(4, "kim", T0 - 30 * MIN, Plan__c="Team", Seats__c="lots"))
    org.put("Contact", contact(5, "ana", T0 - 30 * MIN, Plan__c="Pro"))  # the same second as kim
    org.put("Contact", contact(6, "late", T0 - 30_000, Plan__c="Pro"))  # modified in the last minute: waits
    source = create(live, org)
    assert source["source_id"].startswith(f"sf_{live.project.project.id}_") and source["watermark"] is None
    clock.now += 1000

    first = run(live, source)
    assert first["status"] == "done" and first["error"] is None, first["error"]
    assert org.queries == [f"{SELECT} WHERE SystemModstamp <= {soql_time(T0 + 1000 - MIN)} ORDER BY SystemModstamp, Id"]
    assert (first["pages"], first["records"], first["records_applied"]) == (3, 5, 4)
    errors = [(e["record"], e["id"], e["field"], e["attribute"]) for e in first["errors"]]
    assert errors == [
        (2, "003000000000000003", "Usertrail_Id__c", None),
        (3, "003000000000000004", "seats__c", "Seats"),
    ]
    assert "expected a number" in first["errors"][1]["reason"] and first["error_count"] == 2
    assert first["watermark_before"] is None and first["watermark_after"] == soql_time(T0 - 30 * MIN)
    assert values(live, "lena") == {"Plan": "VIP", "Seats": 12.0, "Renewal": "2027-01-31", "Trial": True,
                                    "Account type": "Customer"}  # fmt: skip
    assert values(live, "omar") == {"Plan": "Free", "Seats": 3.0, "Trial": False}  # no Account: no type
    assert values(live, "kim") == {"Plan": "Team"} and values(live, "late") == {}
    registry = {a["name"]: a for a in live.app.state.attributes.registry(live.project.project.id)}
    assert registry["Seats"]["type"] == "number" and registry["Plan"]["integrations"] == ["salesforce"]

    # Later: omar's plan changes; the late record is now old enough. Only those two are read.
    org.put("Contact", contact(2, "omar", T0 + 4 * MIN, Plan__c="VIP", Seats__c=3, Trial__c=False, Account=None))
    clock.now = T0 + 10 * MIN
    second = run(live, source)
    assert org.queries[-1] == (
        f"{SELECT} WHERE SystemModstamp > {soql_time(T0 - 30 * MIN)} AND SystemModstamp <= {soql_time(T0 + 9 * MIN)}"
        " ORDER BY SystemModstamp, Id"
    )
    assert (second["status"], second["records"], second["records_applied"], second["values_changed"]) == (
        "done", 2, 2, 2,
    )  # fmt: skip
    assert second["watermark_after"] == soql_time(T0 + 4 * MIN)
    assert values(live, "late") == {"Plan": "Pro"}
    history = live.app.state.attributes.history(live.project.project.id, ["u:omar"], "Plan")
    assert [(h["old"], h["new"], h["source"]) for h in history] == [
        ("Free", "VIP", "salesforce"),
        (None, "Free", "salesforce"),
    ]

    clock.now = T0 + 20 * MIN
    third = run(live, source)
    assert (third["records"], third["pages"], third["watermark_after"]) == (0, 1, soql_time(T0 + 4 * MIN))

    # Run history, newest first, and the source's view of it.
    runs = call(live, "GET", f"/{source['source_id']}/runs").json()["runs"]
    assert [r["run_id"] for r in runs] == [third["run_id"], second["run_id"], first["run_id"]]
    assert "errors" not in runs[0] and runs[2]["error_count"] == 2
    detail = call(live, "GET", f"/{source['source_id']}/runs/{first['run_id']}").json()
    assert detail["errors"] == first["errors"]
    page = call(live, "GET", f"/{source['source_id']}/runs?limit=1&before={third['run_id']}").json()
    assert [r["run_id"] for r in page["runs"]] == [second["run_id"]]
    got = call(live, "GET", f"/{source['source_id']}").json()
    assert got["watermark"] == soql_time(T0 + 4 * MIN) and got["last_run"]["run_id"] == third["run_id"]
    assert got["next_run_at"] == T0 + 20 * MIN + 60 * MIN and got["running"] is False

    # Every run is in the integration log as integration "salesforce".
    with live.admin() as admin:
        log = admin.get(f"/api/projects/{live.project.project.id}/integrations/log?integration=salesforce").json()
    kinds = [(e["kind"], e["integration_id"], e["request_id"]) for e in log["entries"]]
    sid = source["source_id"]
    assert kinds == [
        ("import", sid, third["run_id"]),
        ("import", sid, second["run_id"]),
        ("import", sid, first["run_id"]),
        ("source.create", sid, None),
    ]
    assert log["entries"][2]["records"] == 5 and log["entries"][2]["error_count"] == 2
    assert log["entries"][2]["details"]["watermark_after"] == soql_time(T0 - 30 * MIN)


def test_sources_are_validated_and_credentials_never_shown(make_server, tls, org):
    live, clock = start(make_server, tls)
    bad = [
        ({"fields": [{"field": "Plan-c", "type": "string"}]}, "$.fields[0].field"),
        ({"fields": [{"field": "Plan__c", "type": "money"}]}, "$.fields[0].type"),
        ({"fields": [{"payload": "Plan__c", "type": "string"}]}, "$.fields[0].payload"),
        ({"fields": []}, "$.fields"),
        ({"object": "Opportunity"}, "$.object"),
        ({"object": "Sub; DELETE__c"}, "$.object"),
        ({"match_field": "Email WHERE Id != null"}, "$.match_field"),
        ({"login_url": "http://login.salesforce.com"}, "$.login_url"),
        ({"login_url": "https://login.salesforce.com/services"}, "$.login_url"),
        ({"api_version": "v59.0"}, "$.api_version"),
        ({"interval_minutes": 1}, "$.interval_minutes"),
        ({"enabled": "yes"}, "$.enabled"),
        ({"auth": {"flow": "oauth", "username": "x"}}, "$.auth.flow"),
        ({"auth": {"flow": "password", "username": "api@acme.example"}}, "$.auth.password"),
        ({"auth": {"flow": "password", "password": "x"}}, "$.auth.username"),
        ({"auth": {"flow": "password", "username": "u", "password": "p", "private_key": "k"}}, "$.auth.private_key"),
        ({"auth": {"flow": "jwt", "username": "u", "private_key": "k"}}, "$.auth.consumer_key"),
        ({"auth": {"flow": "jwt", "username": "u", "consumer_key": "c", "private_key": "not a key"}},
         "$.auth.private_key"),
        ({"watermark": None}, "$.watermark"),  # only an update may reset it
        ({"extra": 1}, "$.extra"),
    ]  # fmt: skip
    for changes, path in bad:
        response = call(live, "POST", json=source_body(org, **changes))
        assert response.status_code == 400, (changes, response.text)
        assert response.json()["path"] == path, (changes, response.json())
    with live.admin() as admin:  # API clients cannot write as "salesforce"
        body = {"name": "salesforce", "user_id_property": "id", "fields": [{"payload": "plan", "type": "string"}]}
        taken = admin.post(f"/api/projects/{live.project.project.id}/integrations/api-clients", json=body)
        assert taken.status_code == 400 and taken.json()["path"] == "$.name"
    missing = call(live, "POST", json={"auth": source_body(org)["auth"]})
    assert missing.status_code == 400 and missing.json()["path"] == "$.object"

    source = create(live, org)
    assert source["auth"] == {"flow": "password", "username": "api@acme.example", "password": MASK,
                              "security_token": MASK}  # fmt: skip
    assert source["fields"][1] == {"field": "seats__c", "name": "Seats", "type": "number"}
    assert source["warnings"] == [] and source["interval_minutes"] == 60 and source["enabled"] is True
    sid = source["source_id"]
    for response in (call(live, "GET"), call(live, "GET", f"/{sid}")):
        assert response.status_code == 200 and "s3cret" not in response.text and "TOKEN123" not in response.text
    stored = live.scalar("SELECT secrets FROM salesforce_sources WHERE source_id = :s", s=sid)
    assert "s3cret" not in stored and "TOKEN123" not in stored  # sealed with the server's key
    assert (Path(live.settings.data_dir) / "secrets.key").exists()

    # Updating: secrets left out (or sent back masked) are kept; the run still logs in.
    patched = call(live, "PATCH", f"/{sid}", json={"name": "Contacts", "interval_minutes": 30,
                                                   "auth": {"password": MASK}})  # fmt: skip
    assert patched.status_code == 200, patched.text
    assert patched.json()["name"] == "Contacts" and patched.json()["interval_minutes"] == 30
    org.put("Contact", contact(1, "lena", T0 - 50 * MIN, Plan__c="VIP"))
    clock.now += 1000
    assert run(live, source)["status"] == "done"
    assert call(live, "GET", f"/{sid}").json()["watermark"] == soql_time(T0 - 50 * MIN)
    # A new mapping resets the watermark, so the next run reads every record with it.
    remapped = call(live, "PATCH", f"/{sid}", json={"fields": FIELDS[:1]})
    assert remapped.status_code == 200 and remapped.json()["watermark"] is None
    assert call(live, "PATCH", f"/{sid}", json={"object": "Nope"}).json()["path"] == "$.object"
    assert call(live, "PATCH", f"/{sid}", json={"auth": {"flow": "jwt"}}).json()["path"] == "$.auth.username"
    assert call(live, "PATCH", f"/sf_{live.project.project.id}_nothing", json={}).status_code == 404

    # A mapping whose type clashes with the registry is refused where it is written.
    live.app.state.attributes.write(live.project.project.id, "csv", [("u:x", {"Tier": "gold"})], {"Tier": "string"})
    clash = call(live, "POST", json=source_body(org, fields=[{"field": "Tier__c", "name": "Tier", "type": "number"}]))
    assert clash.status_code == 400 and clash.json()["path"] == "$.fields[0].type"

    # Another project's admin sees nothing of it.
    other = live.projects.create("other")
    with live.admin(other.admin_token) as admin:
        pid = live.project.project.id
        assert admin.get(f"/api/projects/{pid}/integrations/salesforce/{sid}").status_code == 403
        assert admin.get(f"/api/projects/{other.project.id}/integrations/salesforce/{sid}").status_code == 404
        assert admin.post(f"/api/projects/{other.project.id}/integrations/salesforce/{sid}/run").status_code == 404

    deleted = call(live, "DELETE", f"/{sid}")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert call(live, "GET", f"/{sid}").status_code == 404
    assert call(live, "DELETE", f"/{sid}").status_code == 404
    assert live.scalar("SELECT count(*) FROM salesforce_runs WHERE source_id = :s", s=sid) == 0


def test_login_and_query_errors_are_recorded_runs(make_server, tls, org):
    live, clock = start(make_server, tls)
    org.put("Contact", contact(1, "lena", T0 - 50 * MIN, Plan__c="VIP"))
    wrong = source_body(org)
    wrong["auth"] = {**wrong["auth"], "password": "wrong"}
    source = create(live, org, **{"auth": wrong["auth"]})
    sid = source["source_id"]
    clock.now += 1000
    failed = run(live, source)
    assert failed["status"] == "failed" and failed["records"] == 0
    assert failed["error"]["stage"] == "login" and failed["error"]["code"] == "INVALID_LOGIN"
    assert "Invalid username, password" in failed["error"]["reason"]
    assert org.queries == [] and failed["watermark_after"] is None

    fixed = call(live, "PATCH", f"/{sid}", json={"auth": {"password": "s3cret-pass"}})
    assert fixed.status_code == 200
    clock.now += 1000
    assert run(live, source)["status"] == "done" and values(live, "lena") == {"Plan": "VIP"}

    # A field Salesforce does not know: the run fails with Salesforce's own error.
    call(live, "PATCH", f"/{sid}", json={"fields": [{"field": "Plann__c", "name": "Plan", "type": "string"}]})
    clock.now += 1000
    bad_field = run(live, source)
    assert bad_field["status"] == "failed" and bad_field["error"]["stage"] == "query"
    assert bad_field["error"]["code"] == "INVALID_FIELD" and "No such column 'Plann__c'" in bad_field["error"]["reason"]
    call(live, "PATCH", f"/{sid}", json={"object": "Subscription__c", "fields": FIELDS[:1]})
    clock.now += 1000
    bad_object = run(live, source)
    assert bad_object["error"]["code"] == "INVALID_TYPE"

    # Credentials sealed with another key cannot be opened: a clear error, nothing sent.
    call(live, "PATCH", f"/{sid}", json={"object": "Contact"})
    importer = live.app.state.salesforce
    server_box, importer.box = importer.box, SecretBox(keys=[Fernet.generate_key()])
    clock.now += 1000
    sent = len(org.queries)
    locked = run(live, source)
    assert locked["error"]["stage"] == "credentials" and locked["error"]["code"] == "secrets_unavailable"
    assert len(org.queries) == sent
    # Changing something else meanwhile keeps the sealed credentials; with the right key they work again.
    assert call(live, "PATCH", f"/{sid}", json={"name": "renamed"}).status_code == 200
    importer.box = server_box
    clock.now += 1000
    assert run(live, source)["status"] == "done"

    with live.admin() as admin:
        log = admin.get(f"/api/projects/{live.project.project.id}/integrations/log?kind=import.failed").json()
    codes = [e["errors"][0]["code"] for e in log["entries"]]
    assert codes == ["secrets_unavailable", "INVALID_TYPE", "INVALID_FIELD", "INVALID_LOGIN"]


def test_an_expired_session_logs_in_again(make_server, tls, org):
    live, clock = start(make_server, tls)
    org.page_size = 2
    for n in range(1, 6):
        org.put("Contact", contact(n, f"user{n}", T0 - (60 - n) * MIN, Plan__c="Free"))
    source = create(live, org)
    clock.now += 1000
    assert run(live, source)["records"] == 5
    assert org.logins == [("password", "api@acme.example")]
    clock.now += 1000
    assert run(live, source)["status"] == "done"
    assert len(org.logins) == 1  # the session is reused between runs

    org.expire_sessions()  # e.g. the org's session timeout: the query answers 401
    clock.now += 1000
    again = run(live, source)
    assert again["status"] == "done" and again["error"] is None and len(org.logins) == 2

    for n in range(6, 11):
        org.put("Contact", contact(n, f"user{n}", T0 - (60 - n) * MIN, Plan__c="Pro"))
    org.expire_after = 1  # the session ends between the first and the second page
    clock.now += 1000
    midway = run(live, source)
    assert (midway["status"], midway["records"], midway["pages"]) == ("done", 5, 3)
    assert len(org.logins) == 3 and values(live, "user10") == {"Plan": "Pro"}


def test_jwt_bearer_flow(make_server, tls, org):
    live, clock = start(make_server, tls)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    org.add_app("3MVG9-consumer-key", public)
    org.put("Contact", contact(1, "lena", T0 - 50 * MIN, Plan__c="VIP"))
    auth = {"flow": "jwt", "username": "api@acme.example", "consumer_key": "3MVG9-consumer-key", "private_key": pem}
    source = create(live, org, auth=auth)
    assert source["auth"] == {"flow": "jwt", "username": "api@acme.example", "consumer_key": "3MVG9-consumer-key",
                              "private_key": MASK, "audience": None}  # fmt: skip
    clock.now += 1000
    done = run(live, source)
    assert done["status"] == "done" and values(live, "lena") == {"Plan": "VIP"}
    assert org.logins == [("jwt", "api@acme.example")]

    # Another key (not the connected app's certificate) is refused by Salesforce.
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other_pem = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    sid = source["source_id"]
    assert call(live, "PATCH", f"/{sid}", json={"auth": {"private_key": other_pem}}).status_code == 200
    clock.now += 1000
    refused = run(live, source)
    assert refused["error"]["stage"] == "login" and refused["error"]["code"] == "invalid_grant"
    # A wrong audience too.
    call(live, "PATCH", f"/{sid}", json={"auth": {"private_key": pem, "audience": "https://test.salesforce.com"}})
    clock.now += 1000
    assert run(live, source)["error"]["reason"] == "audience is invalid"

    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )
    not_rsa = call(live, "PATCH", f"/{sid}", json={"auth": {"private_key": ec_pem}})
    assert not_rsa.status_code == 400 and not_rsa.json()["path"] == "$.auth.private_key"
    assert "RSA" in not_rsa.json()["reason"]


def test_the_cap_of_100_applies(make_server, tls, org):
    live, clock = start(make_server, tls)
    pid = live.project.project.id
    live.app.state.attributes.write(pid, "csv", [("u:seed", {f"attr{i:03d}": i for i in range(99)})])
    org.put("Contact", contact(1, "lena", T0 - 50 * MIN, Plan__c="VIP", Seats__c=4))
    source = create(live, org, fields=FIELDS[:2])
    assert source["warnings"] and "99 of 100" in source["warnings"][0]
    clock.now += 1000
    done = run(live, source)
    assert done["status"] == "done" and done["records_applied"] == 1
    [error] = done["errors"]
    assert (error["field"], error["attribute"]) == ("seats__c", "Seats") and "maximum of 100" in error["reason"]
    assert values(live, "lena") == {"Plan": "VIP"}


def test_uuid_settings_are_required(make_server, tls, org):
    live, clock = start(make_server, tls)
    source = create(live, org)
    pid = live.project.project.id
    with live.admin() as admin:
        for env in ("production", "test"):
            admin.patch(f"/api/projects/{pid}/environments/{env}", json={"uuid": {"provider": "none"}})
    refused = call(live, "POST", json=source_body(org))
    assert refused.status_code == 409 and refused.json()["error"] == "uuid_settings_required"
    assert call(live, "POST", f"/{source['source_id']}/run").status_code == 409
    assert call(live, "GET", f"/{source['source_id']}").status_code == 200  # reading still works
    # The scheduler's run fails with the reason instead of writing.
    clock.now += 1000
    [scheduled] = live.app.state.salesforce.run_due()
    assert scheduled["status"] == "failed" and scheduled["error"]["code"] == "uuid_settings_required"
    assert scheduled["trigger"] == "schedule" and org.logins == []


def test_sources_run_on_their_interval_from_the_server_loop(make_server, tls, org):
    live, clock = start(make_server, tls, salesforce_tick_s=0.02)
    importer = live.app.state.salesforce
    org.put("Contact", contact(1, "lena", T0 - 50 * MIN, Plan__c="VIP"))
    source = create(live, org, interval_minutes=60)
    disabled = create(live, org, name="off", enabled=False)
    sid = source["source_id"]

    def runs() -> list[dict]:
        return call(live, "GET", f"/{sid}/runs").json()["runs"]

    def wait_checks(count: int = 3) -> None:
        """Let the server loop look at least `count` more times (no timing race: it counts its checks)."""
        target = importer.checks + count
        deadline = time.monotonic() + 30
        while importer.checks < target:
            assert time.monotonic() < deadline, "the server loop stopped checking"
            time.sleep(0.01)

    wait_checks()
    [first] = runs()  # due at once when created
    assert first["trigger"] == "schedule" and first["status"] == "done"
    clock.now = T0 + 59 * MIN
    wait_checks()
    assert len(runs()) == 1  # not yet due
    org.put("Contact", contact(1, "lena", T0 + 30 * MIN, Plan__c="Pro"))
    clock.now = T0 + 60 * MIN
    wait_checks()
    second, _ = runs()
    assert second["trigger"] == "schedule" and second["records"] == 1 and values(live, "lena") == {"Plan": "Pro"}
    assert call(live, "GET", f"/{disabled['source_id']}/runs").json()["runs"] == []
    # Enabling the disabled source makes it due: it runs on the next check.
    call(live, "PATCH", f"/{disabled['source_id']}", json={"enabled": True})
    wait_checks()
    assert len(call(live, "GET", f"/{disabled['source_id']}/runs").json()["runs"]) == 1


def test_a_running_source_is_not_run_twice(make_server, tls, org):
    live, clock = start(make_server, tls)
    source = create(live, org)
    sid, pid = source["source_id"], live.project.project.id
    live.app.state.salesforce._claim(pid, sid, clock(), "cli", due_only=False)  # as another process would
    busy = call(live, "POST", f"/{sid}/run")
    assert busy.status_code == 409 and busy.json()["error"] == "run_in_progress"
    assert call(live, "DELETE", f"/{sid}").status_code == 409
    assert live.app.state.salesforce.run_due() == []
    # That process died: once its lease lapses the next run takes over and closes the stale run.
    clock.now += 11 * MIN
    taken = run(live, source)
    assert taken["status"] == "done"
    stale = call(live, "GET", f"/{sid}/runs").json()["runs"][1]
    assert stale["status"] == "failed" and stale["error"]["code"] == "interrupted"


def test_parse_source_defaults():
    spec = parse_source(
        {
            "auth": {"flow": "password", "username": "u", "password": "p"},
            "object": "Invoice__c",
            "match_field": "Account.Owner.Email",
            "fields": [{"field": "Total__c", "type": "number"}],
        }
    )
    assert (spec.name, spec.login_url, spec.api_version, spec.interval_s) == (
        "Invoice__c",
        "https://login.salesforce.com",
        "59.0",
        3600,
    )
    assert spec.fields[0].name == "Total__c" and spec.auth.secrets == {"password": "p"}


def test_cli_runs_a_source(tmp_path: Path, tls, org):
    """`usertrail import salesforce run`, trusting the fake's CA via REQUESTS_CA_BUNDLE."""
    engine = create_engine(f"sqlite:///{tmp_path / 'usertrail.db'}")
    migrate(engine)
    store = ProjectStore(engine)
    project = store.create("cli").project
    production = store.environments(project.id)["production"]
    production.uuid = UuidSettings(provider="variable", source="currentUser.id")
    store.save_environment(project.id, "production", production)
    now = int(time.time() * 1000)
    org.put("Contact", contact(1, "lena", now - 10 * MIN, Plan__c="VIP"))
    importer = build_importer(engine, tmp_path, store)
    source, _ = importer.create(project.id, parse_source(source_body(org)))
    engine.dispose()

    env = {"USERTRAIL_DATA_DIR": str(tmp_path), "REQUESTS_CA_BUNDLE": str(tls.ca), "COLUMNS": "250",
           "USERTRAIL_DATABASE_URL": None}  # fmt: skip

    def cli(*args: str) -> Ran:
        return run_cli("import", "salesforce", *args, env=env)

    done = cli("run", "--source", source.source_id)
    assert done.returncode == 0, done.stderr + done.stdout
    assert re.search(rf"{source.source_id}\W.*\Wdone\W+1\W+1\W+0\W", done.stdout), done.stdout
    listed = cli("list")
    assert source.source_id in listed.stdout and "Contact" in listed.stdout
    missing = cli("run", "--source", f"sf_{project.id}_nothing")
    assert missing.returncode == 2 and "no Salesforce source" in missing.stderr
    assert cli("run", "--source", "nonsense").returncode == 2
    org.add_user("api@acme.example", "changed")
    failing = cli("run")
    assert failing.returncode == 1 and "INVALID_LOGIN" in failing.stdout


def test_oauth_username_password_flow(make_server, tls, org):
    live, clock = start(make_server, tls)
    org.add_secret_app("3MVG9-secret-app", "consumer-s3cret")
    org.put("Contact", contact(1, "lena", T0 - 50 * MIN, Plan__c="VIP"))
    auth = {"flow": "oauth_password", "username": "api@acme.example", "password": "s3cret-pass",
            "security_token": "TOKEN123", "consumer_key": "3MVG9-secret-app",
            "consumer_secret": "consumer-s3cret"}  # fmt: skip
    bad = [
        ({**auth, "consumer_secret": None}, "$.auth.consumer_secret"),
        ({k: v for k, v in auth.items() if k != "consumer_key"}, "$.auth.consumer_key"),
        ({**auth, "password": ""}, "$.auth.password"),
        ({**auth, "private_key": "k"}, "$.auth.private_key"),
    ]
    for body, path in bad:
        refused = call(live, "POST", json=source_body(org, auth={k: v for k, v in body.items() if v is not None}))
        assert refused.status_code == 400 and refused.json()["path"] == path, (path, refused.text)

    source = create(live, org, auth=auth)
    assert source["auth"] == {"flow": "oauth_password", "username": "api@acme.example", "password": MASK,
                              "security_token": MASK, "consumer_key": "3MVG9-secret-app",
                              "consumer_secret": MASK}  # fmt: skip
    sid = source["source_id"]
    stored = live.scalar("SELECT secrets FROM salesforce_sources WHERE source_id = :s", s=sid)
    assert "consumer-s3cret" not in stored and "s3cret-pass" not in stored
    clock.now += 1000
    done = run(live, source)
    assert done["status"] == "done" and values(live, "lena") == {"Plan": "VIP"}
    assert org.logins == [("oauth_password", "api@acme.example")]

    # Salesforce's refusals of the grant fail the run at login, with its code.
    for change, code in (
        ({"consumer_secret": "wrong"}, "invalid_client"),
        ({"consumer_secret": "consumer-s3cret", "consumer_key": "3MVG9-unknown"}, "invalid_client_id"),
        ({"consumer_key": "3MVG9-secret-app", "security_token": ""}, "invalid_grant"),  # no token: wrong password
    ):
        assert call(live, "PATCH", f"/{sid}", json={"auth": change}).status_code == 200
        clock.now += 1000
        failed = run(live, source)
        assert failed["status"] == "failed" and failed["error"]["stage"] == "login", failed
        assert failed["error"]["code"] == code, failed["error"]
    # Secrets left out of a PATCH are kept: putting the token back logs in again.
    assert call(live, "PATCH", f"/{sid}", json={"auth": {"security_token": "TOKEN123"}}).status_code == 200
    clock.now += 1000
    assert run(live, source)["status"] == "done"


def test_lead_and_custom_objects_are_imported(make_server, tls, org):
    live, clock = start(make_server, tls)
    org.define("Lead", ["Email", "Usertrail_Id__c", "Status", "Rating"])
    org.define("Subscription__c", ["User_Ref__c", "Tier__c", "Seats__c"])
    org.put("Lead", {"Id": "00Q000000000000001", "SystemModstamp": T0 - 50 * MIN, "Usertrail_Id__c": "lena",
                     "Status": "Working", "Rating": "Hot"})  # fmt: skip
    org.put("Subscription__c", {"Id": "a01000000000000001", "SystemModstamp": T0 - 40 * MIN, "User_Ref__c": "max",
                                "Tier__c": "Gold", "Seats__c": 7})  # fmt: skip
    lead = create(live, org, name="Leads", object="Lead",
                  fields=[{"field": "Status", "name": "Lead status", "type": "string"},
                          {"field": "Rating", "name": "Lead rating", "type": "string"}])  # fmt: skip
    subscription = create(live, org, name="Subscriptions", object="Subscription__c", match_field="User_Ref__c",
                          fields=[{"field": "Tier__c", "name": "Tier", "type": "string"},
                                  {"field": "Seats__c", "name": "Seats", "type": "number"}])  # fmt: skip
    clock.now += 1000
    leads = run(live, lead)
    assert leads["status"] == "done" and leads["records_applied"] == 1, leads
    assert leads["query"].startswith("SELECT Id, SystemModstamp, Usertrail_Id__c, Status, Rating FROM Lead WHERE")
    subscriptions = run(live, subscription)
    assert subscriptions["status"] == "done" and subscriptions["records_applied"] == 1, subscriptions
    assert " FROM Subscription__c WHERE " in subscriptions["query"]
    assert values(live, "lena") == {"Lead status": "Working", "Lead rating": "Hot"}
    assert values(live, "max") == {"Tier": "Gold", "Seats": 7.0}
