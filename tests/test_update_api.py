"""The End User Update API through the real HTTP server, on both engines: API clients, the OAuth2
token endpoint, the update call (mapping, types, per-record errors, cap, idempotency, rate limit),
revocation, project isolation and the integration log."""

from __future__ import annotations

import base64
import hashlib

import httpx
import pytest

from test_users_api import api, enable_uuid, send, user_events
from usertrail.integrations.update_api import IDEMPOTENCY_LEASE_S, RATE_LIMIT, RATE_WINDOW_S, TOKEN_TTL_S, body_hash
from usertrail.store.schema import integration_requests, integration_tokens

from conftest import LiveServer
from samples import now_ms

DAY_MS = 86_400_000

FIELDS = [
    {"payload": "plan", "name": "Plan", "type": "string"},
    {"payload": "properties.seats", "name": "Seats", "type": "number"},
    {"payload": "renewal", "name": "Renewal", "type": "date"},
    {"payload": "trial", "type": "boolean"},  # no rename: stored as "trial"
]


def admin_request(live: LiveServer, method: str, path: str, **kwargs) -> httpx.Response:
    with live.admin() as admin:
        return admin.request(method, f"/api/projects/{live.project.project.id}{path}", **kwargs)


def create_client(live: LiveServer, name: str = "crm", fields=None, id_path: str = "properties.ID") -> dict:
    body = {"name": name, "user_id_property": id_path, "fields": FIELDS if fields is None else fields}
    response = admin_request(live, "POST", "/integrations/api-clients", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def basic(client_id: str, secret: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def token_response(live: LiveServer, client: dict, form: dict | None = None, secret: str | None = None):
    with live.client() as http:
        return http.post(
            "/accounts/connect/token",
            data={"grant_type": "client_credentials"} if form is None else form,
            headers=basic(client["client_id"], client["client_secret"] if secret is None else secret),
        )


def get_token(live: LiveServer, client: dict) -> str:
    response = token_response(live, client)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def update(live: LiveServer, token: str | None, body=None, content: bytes | None = None, **headers) -> httpx.Response:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    with live.client(headers=headers) as http:
        if content is not None:
            return http.post("/public/v1/user/data", content=content, headers={"Content-Type": "application/json"})
        return http.post("/public/v1/user/data", json=body)


def result(live: LiveServer, token: str, request_id: str) -> httpx.Response:
    with live.client(headers={"Authorization": f"Bearer {token}"}) as http:
        return http.get(f"/public/v1/user/data/requests/{request_id}")


def log_entries(live: LiveServer, query: str = "") -> list[dict]:
    response = admin_request(live, "GET", f"/integrations/log{query}")
    assert response.status_code == 200, response.text
    return response.json()["entries"]


def test_api_clients_are_validated_and_managed(make_server):
    live = make_server(process_sessions=False)
    enable_uuid(live)
    base = {"name": "crm", "user_id_property": "ID"}
    bad = [
        ({"user_id_property": "ID", "fields": FIELDS}, "$.name"),
        ({"name": "crm", "user_id_property": "a..b", "fields": FIELDS}, "$.user_id_property"),
        ({**base, "fields": []}, "$.fields"),
        ({**base, "fields": [{"payload": "x", "type": "money"}]}, "$.fields[0].type"),
        ({**base, "fields": [{"payload": "", "type": "string"}]}, "$.fields[0].payload"),
        ({**base, "fields": [FIELDS[0], FIELDS[0]]}, "$.fields[1].name"),
        ({**base, "fields": [{**FIELDS[0], "extra": 1}]}, "$.fields[0].extra"),
        ({**base, "fields": FIELDS, "token": "x"}, "$.token"),
        ({"name": "admin_api", "user_id_property": "ID", "fields": FIELDS}, "$.name"),
    ]  # fmt: skip
    for body, path in bad:
        response = admin_request(live, "POST", "/integrations/api-clients", json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["path"] == path, (body, response.json())

    created = create_client(live)
    assert created["client_id"].startswith(f"uc_{live.project.project.id}_") and created["client_secret"]
    assert created["fields"][3] == {"payload": "trial", "name": "trial", "type": "boolean"}
    assert created["token_url"].endswith("/accounts/connect/token") and created["status"] == "active"
    # Only the secret's SHA-256 is stored.
    stored = live.scalar("SELECT secret_hash FROM integration_clients WHERE client_id = :c", c=created["client_id"])
    assert stored == hashlib.sha256(created["client_secret"].encode()).hexdigest()

    again = admin_request(live, "POST", "/integrations/api-clients",
                          json={"name": "crm", "user_id_property": "ID", "fields": FIELDS})  # fmt: skip
    assert again.status_code == 409 and again.json()["error"] == "name_taken"

    # A mapping whose type clashes with the registry is refused where it is written.
    live.app.state.attributes.write(live.project.project.id, "csv", [("u:x", {"Tier": "gold"})], {"Tier": "string"})
    clash = admin_request(live, "POST", "/integrations/api-clients",
                          json={"name": "billing", "user_id_property": "ID",
                                "fields": [{"payload": "tier", "name": "Tier", "type": "number"}]})  # fmt: skip
    assert clash.status_code == 400 and clash.json()["path"] == "$.fields[0].type"
    assert "registered as string" in clash.json()["reason"]

    listed = admin_request(live, "GET", "/integrations/api-clients").json()["clients"]
    assert [c["client_id"] for c in listed] == [created["client_id"]]
    assert "client_secret" not in listed[0] and listed[0]["fields"] == created["fields"]

    # Another project's admin token cannot see or manage them.
    other = live.projects.create("other")
    with live.admin(other.admin_token) as admin:
        pid = live.project.project.id
        assert admin.get(f"/api/projects/{pid}/integrations/api-clients").status_code == 403
        assert admin.delete(f"/api/projects/{pid}/integrations/api-clients/{created['client_id']}").status_code == 403
        gone = admin.delete(f"/api/projects/{other.project.id}/integrations/api-clients/{created['client_id']}")
        assert gone.status_code == 404
    assert admin_request(live, "DELETE", "/integrations/api-clients/uc_1_nothing").status_code == 404


def test_token_flow_and_errors(make_server):
    live = make_server(process_sessions=False)
    enable_uuid(live)
    client = create_client(live)

    ok = token_response(live, client, {"grant_type": "client_credentials", "scope": "endUserUpdate:write"})
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == TOKEN_TTL_S == 86_400
    assert body["scope"] == "endUserUpdate:write" and ok.headers["cache-control"] == "no-store"
    token = body["access_token"]
    assert live.scalar("SELECT count(*) FROM integration_tokens WHERE token_hash = :h",
                       h=hashlib.sha256(token.encode()).hexdigest()) == 1  # fmt: skip
    assert update(live, token, {"data": [{"properties": {"ID": "lena"}, "plan": "VIP"}]}).status_code == 202

    # Client credentials in the form body work too.
    with live.client() as http:
        form = {"grant_type": "client_credentials", "client_id": client["client_id"],
                "client_secret": client["client_secret"]}  # fmt: skip
        assert http.post("/accounts/connect/token", data=form).status_code == 200

    bad_secret = token_response(live, client, secret="wrong")
    assert bad_secret.status_code == 401 and bad_secret.json()["error"] == "invalid_client"
    assert bad_secret.headers["www-authenticate"].startswith("Basic")
    unknown = token_response(live, {"client_id": "uc_999_abc", "client_secret": "x"})
    assert unknown.status_code == 401 and unknown.json()["error"] == "invalid_client"
    with live.client() as http:
        anonymous = http.post("/accounts/connect/token", data={"grant_type": "client_credentials"})
        assert anonymous.status_code == 401 and anonymous.json()["error"] == "invalid_client"
        as_json = http.post("/accounts/connect/token", json={"grant_type": "client_credentials"},
                            headers=basic(client["client_id"], client["client_secret"]))  # fmt: skip
        assert as_json.status_code == 400 and as_json.json()["error"] == "invalid_request"
    wrong_grant = token_response(live, client, {"grant_type": "password"})
    assert wrong_grant.status_code == 400 and wrong_grant.json()["error"] == "unsupported_grant_type"
    no_grant = token_response(live, client, {})
    assert no_grant.status_code == 400 and no_grant.json()["error"] == "invalid_request"
    bad_scope = token_response(live, client, {"grant_type": "client_credentials", "scope": "admin:all"})
    assert bad_scope.status_code == 400 and bad_scope.json()["error"] == "invalid_scope"

    # The update call: missing, unknown, forged and expired tokens are 401.
    record = {"data": [{"properties": {"ID": "lena"}, "plan": "VIP"}]}
    missing = update(live, None, record)
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    assert update(live, "uat_1_nonsense", record).status_code == 401
    assert update(live, "garbage", record).status_code == 401
    forged = f"uat_{live.project.project.id + 1}_" + token.split("_", 2)[2]  # same secret, another project
    assert update(live, forged, record).status_code == 401
    live.app.state.update_api.clock = lambda: now_ms() + DAY_MS + 1_000  # a day later, without sleeping
    expired = update(live, token, record)
    assert expired.status_code == 401 and "expired" in expired.json()["reason"]
    assert 'error="invalid_token"' in expired.headers["www-authenticate"]
    fresh = get_token(live, client)  # new tokens work; the expired one was purged
    assert update(live, fresh, record).status_code == 202
    assert live.scalar("SELECT count(*) FROM integration_tokens WHERE token_hash = :h",
                       h=hashlib.sha256(token.encode()).hexdigest()) == 0  # fmt: skip


def test_update_maps_records_and_keeps_per_record_errors(make_server):
    live = make_server(process_sessions=False)
    enable_uuid(live)
    pid = live.project.project.id
    client = create_client(live)
    token = get_token(live, client)
    data = [
        {"properties": {"ID": "lena", "seats": "12"}, "plan": "VIP", "renewal": "2027-01-31", "trial": True,
         "color": "blue", "meta": {"source": "crm"}},
        {"properties": {"ID": 42}, "plan": "free", "renewal": "31/01/2027"},
        {"plan": "orphan"},
        "not an object",
        {"properties": {"ID": "omar", "seats": "many"}},
        {"properties": {"ID": True}, "plan": "x"},
        {"properties": {"ID": "nobody"}, "unmapped": 1},
    ]  # fmt: skip
    response = update(live, token, {"data": data})
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["message"] == "Request has been received"
    assert (accepted["records"], accepted["records_applied"], accepted["error_count"]) == (7, 2, 6)
    assert response.headers["location"].endswith(accepted["request_id"])

    stored = result(live, token, accepted["request_id"])
    assert stored.status_code == 200
    report = stored.json()
    errors = [(e["record"], e["field"], e["attribute"]) for e in report["errors"]]
    assert errors == [
        (1, "renewal", "Renewal"),
        (2, "properties.ID", None),
        (3, None, None),
        (4, "properties.seats", "Seats"),
        (5, "properties.ID", None),
        (6, None, None),
    ]
    reasons = {e["record"]: e["reason"] for e in report["errors"]}
    assert "YYYY-MM-DD" in reasons[1] and "no end-user id" in reasons[2] and "expected a number" in reasons[4]
    assert report["errors"][0]["path"] == "$.data[1].renewal"
    assert report["ignored_fields"] == ["color", "meta.source", "unmapped"]
    assert report["values_applied"] == 5 and report["integration"] == "crm"

    # The identifier is always a string: 42 was stored for the user "u:42", before they ever appeared.
    values = live.app.state.attributes.values(pid, ["u:42"])
    assert {k: v["value"] for k, v in values.items()} == {"Plan": "free"}

    # The user shows the values once they exist (a closed session).
    send(live, user_events("lena", now_ms() - 2 * 3_600_000, 3))
    live.app.state.sessions.run(now_ms())
    lena = api(live, "/users/u:lena").json()
    custom = {k: (v["value"], v["source"]) for k, v in lena["custom_attributes"].items()}
    assert custom == {
        "Plan": ("VIP", "crm"),
        "Seats": (12.0, "crm"),
        "Renewal": ("2027-01-31", "crm"),
        "trial": (True, "crm"),
    }
    registry = {a["name"]: a for a in api(live, "/attributes").json()["attributes"]}
    assert registry["Seats"]["type"] == "number" and registry["Seats"]["integrations"] == ["crm"]

    # Whole-body errors are 400s naming the path, and are logged.
    too_many = update(live, token, {"data": [{"properties": {"ID": str(i)}, "plan": "x"} for i in range(101)]})
    assert too_many.status_code == 400 and too_many.json()["path"] == "$.data"
    assert update(live, token, content=b"{not json").json()["path"] == "$"
    assert update(live, token, {"records": []}).json()["path"] == "$.records"
    assert update(live, token, {"data": {}}).json()["path"] == "$.data"
    assert update(live, token, {"data": []}).status_code == 400
    walkme_shaped = update(live, token, {"token": "ab" * 32, "data": [{"properties": {"ID": "lena"}, "plan": "Pro"}]})
    assert walkme_shaped.status_code == 202  # WalkMe's integration token in the body is tolerated

    # A request's result is readable only by its own client.
    other = create_client(live, name="billing", fields=[FIELDS[0]])
    other_token = get_token(live, other)
    assert result(live, other_token, accepted["request_id"]).status_code == 404
    assert result(live, token, "0000000000000-nothing").status_code == 404


def test_the_cap_error_passes_through(make_server):
    live = make_server(process_sessions=False)
    enable_uuid(live)
    pid = live.project.project.id
    live.app.state.attributes.write(pid, "csv", [("u:seed", {f"attr{i:03d}": i for i in range(99)})])
    created = create_client(live, fields=[FIELDS[0], {"payload": "extra", "name": "Extra", "type": "string"}])
    assert created["warnings"] and "99 of 100" in created["warnings"][0]
    token = get_token(live, created)
    response = update(live, token, {"data": [{"properties": {"ID": "lena"}, "plan": "VIP", "extra": "x"}]})
    assert response.status_code == 202 and response.json()["records_applied"] == 1
    [error] = result(live, token, response.json()["request_id"]).json()["errors"]
    assert (error["record"], error["field"], error["attribute"]) == (0, "extra", "Extra")
    assert "maximum of 100" in error["reason"]
    assert live.app.state.attributes.values(pid, ["u:lena"])["Plan"]["value"] == "VIP"


def test_idempotency_key_replays_and_conflicts(make_server):
    live = make_server(process_sessions=False)
    enable_uuid(live)
    client = create_client(live)
    token = get_token(live, client)
    body = {"data": [{"properties": {"ID": "lena"}, "plan": "VIP", "trial": "yes"}]}
    first = update(live, token, body, **{"Idempotency-Key": "order-1"})
    assert first.status_code == 202 and "idempotent-replayed" not in first.headers
    history = "SELECT count(*) FROM attribute_changes WHERE user_key = 'u:lena'"
    assert live.scalar(history) == 1  # one history row per user and write, holding both changes
    # The same body (other key order, other spacing) returns the stored result without writing again.
    same = b'{"data":[{"trial":"yes","plan":"VIP","properties":{"ID":"lena"}}]}'
    replay = update(live, token, content=same, **{"Idempotency-Key": "order-1"})
    assert replay.status_code == 202 and replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["request_id"] == first.json()["request_id"]
    assert live.scalar("SELECT count(*) FROM integration_requests") == 1
    assert live.scalar(history) == 1
    # A different body with the same key is a conflict; nothing is written.
    changed = {"data": [{"properties": {"ID": "lena"}, "plan": "Free"}]}
    conflict = update(live, token, changed, **{"Idempotency-Key": "order-1"})
    assert conflict.status_code == 409 and conflict.json()["error"] == "idempotency_key_reused"
    assert live.app.state.attributes.values(live.project.project.id, ["u:lena"])["Plan"]["value"] == "VIP"
    # Keys belong to a client: another client may use the same key for its own request.
    other = create_client(live, name="billing", fields=[FIELDS[0]])
    own = update(live, get_token(live, other), changed, **{"Idempotency-Key": "order-1"})
    assert own.status_code == 202 and own.json()["request_id"] != first.json()["request_id"]
    assert update(live, token, body, **{"Idempotency-Key": "x" * 300}).status_code == 400

    # A key whose first request never finished (its process died) is busy for a minute, then taken over.
    with live.engine.begin() as conn:
        conn.execute(
            integration_requests.insert().values(
                project_id=live.project.project.id, request_id="0000000000001-dead", client_id=client["client_id"],
                idempotency_key="order-2", body_hash=body_hash(changed), status="processing", received_at=now_ms(),
            )
        )  # fmt: skip
    busy = update(live, token, changed, **{"Idempotency-Key": "order-2"})
    assert busy.status_code == 409 and busy.json()["error"] == "idempotency_key_in_progress"
    live.app.state.update_api.clock = lambda: now_ms() + (IDEMPOTENCY_LEASE_S + 1) * 1000
    taken_over = update(live, token, changed, **{"Idempotency-Key": "order-2"})
    assert taken_over.status_code == 202 and taken_over.json()["request_id"] == "0000000000001-dead"
    assert result(live, token, "0000000000001-dead").json()["status"] == "done"


def test_rate_limit_holds_across_server_processes(make_server):
    first = make_server(process_sessions=False)
    second = make_server(process_sessions=False)  # another server (its own engine and app) on the same database
    enable_uuid(first)
    client = create_client(first)
    token = get_token(first, client)
    window_ms = RATE_WINDOW_S * 1000
    start = (now_ms() // window_ms + 1) * window_ms
    for server in (first, second):
        server.app.state.update_api.clock = lambda: start + 3_000  # pinned inside one window
    body = {"data": [{"properties": {"ID": "lena"}, "plan": "VIP"}]}
    for i in range(RATE_LIMIT):
        response = update(first if i % 2 else second, token, body)
        assert response.status_code == 202, (i, response.text)
    for server in (first, second):
        limited = update(server, token, body)
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == str(RATE_WINDOW_S - 3)
        assert limited.json()["error"] == "rate_limited" and limited.json()["retry_after"] == RATE_WINDOW_S - 3
    for server in (first, second):
        server.app.state.update_api.clock = lambda: start + window_ms + 1
    assert update(second, token, body).status_code == 202  # the next window starts afresh
    kinds = [e["kind"] for e in log_entries(first, "?kind=update.rate_limited")]
    assert kinds == ["update.rate_limited"]  # once per limited window, not per refused call
    assert first.scalar("SELECT count(*) FROM integration_rate_limits") == 1  # the old window was purged


def test_revocation_scope_and_project_isolation(make_server):
    a = make_server(process_sessions=False)
    b = make_server(process_sessions=False)  # project B, same database
    enable_uuid(a)
    enable_uuid(b)
    client_a = create_client(a)
    client_b = create_client(b)  # the same name in another project is fine
    token_a, token_b = get_token(a, client_a), get_token(b, client_b)
    body = {"data": [{"properties": {"ID": "lena"}, "plan": "from A"}]}
    sent_to_b = update(b, token_a, body)  # whichever server receives it, A's token writes project A
    assert sent_to_b.status_code == 202
    pid_a, pid_b = a.project.project.id, b.project.project.id
    assert a.app.state.attributes.values(pid_a, ["u:lena"])["Plan"]["value"] == "from A"
    assert a.app.state.attributes.values(pid_b, ["u:lena"]) == {}
    assert result(a, token_b, sent_to_b.json()["request_id"]).status_code == 404
    assert update(a, token_b, {"data": [{"properties": {"ID": "omar"}, "plan": "from B"}]}).status_code == 202
    assert a.app.state.attributes.values(pid_a, ["u:omar"]) == {}
    # B's admin cannot revoke A's client, even by id.
    with b.admin() as admin:
        assert (
            admin.delete(f"/api/projects/{pid_b}/integrations/api-clients/{client_a['client_id']}").status_code == 404
        )
    # A token without the scope is valid but not allowed (written directly: the endpoint grants only the scope).
    with a.engine.begin() as conn:
        conn.execute(
            integration_tokens.insert().values(
                project_id=pid_a, token_hash=hashlib.sha256(f"uat_{pid_a}_noscope".encode()).hexdigest(),
                client_id=client_a["client_id"], scope="", issued_at=now_ms(), expires_at=now_ms() + DAY_MS,
            )
        )  # fmt: skip
    no_scope = update(a, f"uat_{pid_a}_noscope", body)
    assert no_scope.status_code == 403 and no_scope.json()["error"] == "insufficient_scope"
    # Revoking: the token still authenticates but is refused (403); no new tokens (401).
    revoked = admin_request(a, "DELETE", f"/integrations/api-clients/{client_a['client_id']}")
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    assert admin_request(a, "DELETE", f"/integrations/api-clients/{client_a['client_id']}").status_code == 200
    refused = update(a, token_a, body)
    assert refused.status_code == 403 and refused.json()["error"] == "client_revoked"
    assert token_response(a, client_a).status_code == 401
    assert update(b, token_b, body).status_code == 202  # B is untouched
    # The name is free again once revoked.
    assert create_client(a)["client_id"] != client_a["client_id"]
    revokes = log_entries(a, "?kind=client.revoke")
    assert len(revokes) == 1 and revokes[0]["integration_id"] == client_a["client_id"]
    assert log_entries(b, "?kind=client.revoke") == []


def test_integration_log(make_server):
    live = make_server(process_sessions=False)
    enable_uuid(live)
    client = create_client(live)
    token_response(live, client, secret="wrong")
    token = get_token(live, client)
    data = [{"properties": {"ID": "lena"}, "plan": "VIP"}, {"properties": {"ID": "omar"}, "renewal": "soon"}]
    request_id = update(live, token, {"data": data}).json()["request_id"]
    update(live, token, {"data": []})
    entries = log_entries(live, "?integration=crm")
    assert [e["kind"] for e in entries] == ["update.refused", "update", "token.issue", "token.refuse", "client.create"]
    refused, applied, issued, refused_token, created = entries
    assert refused["errors"][0]["path"] == "$.data" and refused["errors"][0]["status"] == 400
    assert (applied["records"], applied["applied"], applied["error_count"]) == (2, 1, 1)
    assert applied["request_id"] == request_id and applied["integration_id"] == client["client_id"]
    assert applied["errors"][0]["attribute"] == "Renewal" and applied["details"]["values_applied"] == 1
    assert issued["details"]["scope"] == "endUserUpdate:write"
    assert refused_token["errors"] == [{"reason": "wrong client secret"}]
    assert created["details"]["fields"] == len(FIELDS)
    assert [e["kind"] for e in log_entries(live, f"?integration={client['client_id']}&limit=2")] == [
        "update.refused",
        "update",
    ]
    page = log_entries(live, f"?before={entries[1]['id']}&limit=1")
    assert [e["kind"] for e in page] == ["token.issue"]
    assert log_entries(live, "?integration=nothing") == []
    assert admin_request(live, "GET", "/integrations/log?limit=0").status_code == 400


@pytest.mark.parametrize("value, expected", [(42, "42"), (42.0, "42"), ("007", "007"), (1.5, "1.5")])
def test_identifiers_become_strings(value, expected):
    from usertrail.integrations.update_api import user_id_text

    assert user_id_text(value) == expected


def test_lookup_of_dotted_paths():
    from usertrail.integrations.update_api import lookup

    assert lookup({"properties": {"ID": 7}}, "properties.ID") == (True, 7)
    assert lookup({"properties.ID": 7}, "properties.ID") == (True, 7)  # a flat key holding dots
    assert lookup({"properties": {"id": 7}}, "properties.ID") == (False, None)  # case-sensitive
    assert lookup({"properties": 5}, "properties.ID") == (False, None)
    assert lookup({"properties": {"ID": None}}, "properties.ID") == (True, None)
