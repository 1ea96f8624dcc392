"""SCIM 2.0 provisioning through the real HTTP server, on both engines: an independent RFC 7643/7644
compliance checker (scim2-tester), Okta- and Entra-shaped requests, filters and paging, errors,
tokens and project isolation, and the end users' custom attributes and integration log."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import httpx2
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status, check_server

from test_users_api import api, enable_uuid, send, user_events
from usertrail.integrations.scim.protocol import ENTERPRISE_SCHEMA, USER_SCHEMA

from conftest import LiveServer, http_client
from samples import now_ms

SCIM_JSON = "application/scim+json"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"


def admin_request(live: LiveServer, method: str, path: str, **kwargs) -> httpx.Response:
    with live.admin() as admin:
        return admin.request(method, f"/api/projects/{live.project.project.id}/integrations/scim{path}", **kwargs)


def scim_token(live: LiveServer) -> str:
    response = admin_request(live, "POST", "/token")
    assert response.status_code == 201, response.text
    return response.json()["token"]


def scim(live: LiveServer, token: str | None, project_id: int | None = None) -> httpx.Client:
    """An HTTP client on the project's SCIM base URL, as an IdP would hold it."""
    headers = {"Content-Type": SCIM_JSON, "Accept": SCIM_JSON}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    pid = live.project.project.id if project_id is None else project_id
    return http_client(base_url=f"{live.base_url}/scim/v2/{pid}", headers=headers, timeout=30)


def okta_user(user_name: str, **changes) -> dict:
    """A create request as Okta sends it (with a password, which must never be stored)."""
    user = {
        "schemas": [USER_SCHEMA, ENTERPRISE_SCHEMA],
        "userName": user_name,
        "name": {"givenName": "Lena", "familyName": "Berg"},
        "emails": [{"primary": True, "value": user_name, "type": "work"}],
        "displayName": "Lena Berg",
        "locale": "en-US",
        "externalId": "00u1abcd",
        "active": True,
        "password": "correct horse battery staple",
        ENTERPRISE_SCHEMA: {"department": "Sales", "costCenter": "CC-12", "manager": {"value": "boss-1"}},
    }
    user.update(changes)
    return user


def patch(*operations: dict) -> dict:
    return {"schemas": [PATCH_OP], "Operations": list(operations)}


def test_scim2_tester_finds_no_failure(make_server):
    live = make_server(process_sessions=False)
    enable_uuid(live)
    token = scim_token(live)
    http = httpx2.Client(
        base_url=f"{live.base_url}/scim/v2/{live.project.project.id}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    with http:
        results = check_server(SyncSCIMClient(http))
    statuses = Counter(r.status for r in results)
    failures = [
        (r.title, r.resource_type, r.reason)
        for r in results
        if r.status in (Status.ERROR, Status.CRITICAL, Status.DEVIATION)
    ]
    assert not failures, failures
    assert statuses[Status.SUCCESS] > 50, statuses  # the checker really ran the CRUD and PATCH suites
    # What the checker created went through the attribute store and the log, and was deleted again.
    assert live.scalar("SELECT count(*) FROM scim_users") == 0
    assert live.scalar("SELECT count(*) FROM integration_log WHERE kind = 'user.create'") > 0
    assert live.scalar("SELECT count(*) FROM custom_attributes WHERE stamps LIKE '%\"scim\"%'") > 0


def test_okta_create_then_deactivate(make_server):
    live = make_server(process_sessions=False)
    enable_uuid(live)
    token = scim_token(live)
    with scim(live, token) as idp:
        # Okta first looks the user up, then creates them.
        lookup = idp.get("/Users", params={"filter": 'userName eq "lena@example.com"', "startIndex": 1, "count": 100})
        assert lookup.status_code == 200 and lookup.json()["totalResults"] == 0
        created = idp.post("/Users", json=okta_user("lena@example.com"))
        assert created.status_code == 201, created.text
        assert created.headers["content-type"].startswith(SCIM_JSON)
        user = created.json()
        assert "password" not in user
        assert user["meta"]["resourceType"] == "User"
        assert user["meta"]["location"] == f"{live.base_url}/scim/v2/{live.project.project.id}/Users/{user['id']}"
        assert created.headers["location"] == user["meta"]["location"]
        assert created.headers["etag"] == user["meta"]["version"]
        assert user[ENTERPRISE_SCHEMA]["manager"] == {"value": "boss-1"}

        deactivated = idp.patch(f"/Users/{user['id']}", json=patch({"op": "replace", "value": {"active": False}}))
        assert deactivated.status_code == 200, deactivated.text
        assert deactivated.json()["active"] is False
        assert deactivated.headers["etag"] != created.headers["etag"]
        fetched = idp.get(f"/Users/{user['id']}")
        assert fetched.json()["active"] is False and fetched.json()["meta"]["version"] == deactivated.headers["etag"]

    stored = live.scalar("SELECT resource FROM scim_users")
    assert "correct horse" not in stored  # passwords are never stored
    pid = live.project.project.id
    attrs = live.app.state.attributes.values(pid, ["u:lena@example.com"])
    assert {k: v["value"] for k, v in attrs.items()} == {
        "userName": "lena@example.com",
        "displayName": "Lena Berg",
        "firstName": "Lena",
        "lastName": "Berg",
        "email": "lena@example.com",
        "active": False,
        "department": "Sales",
        "costCenter": "CC-12",
        "manager": "boss-1",
    }
    assert {v["source"] for v in attrs.values()} == {"scim"}
    kinds = [e["kind"] for e in live.app.state.integration_log.list(pid, "scim")]
    assert kinds == ["user.patch", "user.create", "token.create"]


def test_entra_patches_with_filtered_and_extension_paths(make_server):
    live = make_server(process_sessions=False)
    enable_uuid(live)
    token = scim_token(live)
    with scim(live, token) as idp:
        # Entra creates with a minimal body and looks users up by externalId or userName.
        created = idp.post("/Users", json={
            "schemas": [USER_SCHEMA, ENTERPRISE_SCHEMA], "externalId": "8f1c", "userName": "omar@contoso.com",
            "active": True, "displayName": "Omar K",
            "name": {"formatted": "Omar K", "familyName": "K", "givenName": "Omar"},
            "emails": [{"primary": True, "type": "home", "value": "omar@home.example"}],
        })  # fmt: skip
        assert created.status_code == 201, created.text
        uid = created.json()["id"]
        found = idp.get("/Users", params={"filter": 'externalId eq "8f1c"'}).json()
        assert found["totalResults"] == 1 and found["Resources"][0]["id"] == uid
        assert idp.get("/Users", params={"filter": 'externalId eq "8F1C"'}).json()["totalResults"] == 0  # caseExact

        patched = idp.patch(f"/Users/{uid}", json=patch(
            {"op": "Add", "path": 'emails[type eq "work"].value', "value": "omar@contoso.com"},
            {"op": "Replace", "path": "name.givenName", "value": "Omar J"},
            {"op": "Replace", "path": "title", "value": "Engineer"},
            {"op": "Add", "path": f"{ENTERPRISE_SCHEMA}:department", "value": "R&D"},
            {"op": "Add", "path": f"{ENTERPRISE_SCHEMA}:employeeNumber", "value": "E-77"},
            {"op": "Add", "path": f"{ENTERPRISE_SCHEMA}:manager", "value": [{"$ref": None, "value": "mgr-9"}]},
            {"op": "Replace", "path": "active", "value": "False"},
        ))  # fmt: skip
        assert patched.status_code == 200, patched.text
        body = patched.json()
        assert {e["type"]: e["value"] for e in body["emails"]} == {
            "home": "omar@home.example",
            "work": "omar@contoso.com",
        }
        assert body["name"]["givenName"] == "Omar J" and body["title"] == "Engineer" and body["active"] is False
        assert body[ENTERPRISE_SCHEMA] == {"department": "R&D", "employeeNumber": "E-77", "manager": {"value": "mgr-9"}}

        # A manager as a bare string, values without a path keyed by attribute path, and a remove with a value.
        again = idp.patch(f"/Users/{uid}", json=patch(
            {"op": "Replace", "path": f"{ENTERPRISE_SCHEMA}:manager", "value": "mgr-10"},
            {"op": "Replace", "value": {f"{ENTERPRISE_SCHEMA}:costCenter": "CC-1", "name.familyName": "Kahn"}},
            {"op": "Remove", "path": "emails", "value": [{"value": "omar@home.example"}]},
        ))  # fmt: skip
        assert again.status_code == 200, again.text
        body = again.json()
        assert [e["value"] for e in body["emails"]] == ["omar@contoso.com"]
        assert body[ENTERPRISE_SCHEMA]["manager"] == {"value": "mgr-10"} and body["name"]["familyName"] == "Kahn"
        removed = idp.patch(f"/Users/{uid}", json=patch({"op": "Remove", "path": f"{ENTERPRISE_SCHEMA}:manager"}))
        assert removed.status_code == 200 and "manager" not in removed.json()[ENTERPRISE_SCHEMA]

    pid = live.project.project.id
    attrs = {k: v["value"] for k, v in live.app.state.attributes.values(pid, ["u:omar@contoso.com"]).items()}
    assert attrs["email"] == "omar@contoso.com"  # the primary (home) email was removed: the remaining one
    assert attrs["firstName"] == "Omar J" and attrs["lastName"] == "Kahn" and attrs["title"] == "Engineer"
    assert attrs["department"] == "R&D" and attrs["employeeNumber"] == "E-77" and attrs["costCenter"] == "CC-1"
    assert attrs["active"] is False and "manager" not in attrs  # removing the manager cleared the attribute
    history = live.app.state.attributes.history(pid, ["u:omar@contoso.com"], "manager")
    assert [(h["old"], h["new"]) for h in history] == [("mgr-10", None), ("mgr-9", "mgr-10"), (None, "mgr-9")]


def test_filters_paging_and_sorting(make_server):
    live = make_server(process_sessions=False)
    enable_uuid(live)
    token = scim_token(live)
    with scim(live, token) as idp:
        ids = []
        for i in range(7):
            title = "Engineer" if i % 2 else "Designer"
            response = idp.post("/Users", json={"schemas": [USER_SCHEMA], "userName": f"user{i}@example.com",
                                                "title": title, "externalId": f"ext-{i}"})  # fmt: skip
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])

        def search(**params) -> dict:
            response = idp.get("/Users", params=params)
            assert response.status_code == 200, response.text
            assert response.headers["content-type"].startswith(SCIM_JSON)
            return response.json()

        # userName is compared case-insensitively (RFC 7643 §4.1.1: caseExact false).
        exact = search(filter='userName eq "USER3@example.com"')
        assert exact["totalResults"] == 1 and exact["Resources"][0]["id"] == ids[3]
        assert search(filter='userName eq "nobody@example.com"') == {
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
            "totalResults": 0, "startIndex": 1, "itemsPerPage": 0, "Resources": [],
        }  # fmt: skip
        # Index paging in creation order, with totals on every page.
        first = search(startIndex=1, count=3)
        second = search(startIndex=4, count=3)
        last = search(startIndex=7, count=3)
        assert (first["totalResults"], second["totalResults"], last["totalResults"]) == (7, 7, 7)
        paged = [r["id"] for page in (first, second, last) for r in page["Resources"]]
        assert paged == ids and last["itemsPerPage"] == 1 and second["startIndex"] == 4
        assert search(count=0)["totalResults"] == 7 and search(count=0)["Resources"] == []
        # Filters the index cannot answer are matched on every user; and/or, co, sw, pr, not.
        engineers = search(filter='title eq "Engineer"', startIndex=2, count=2)
        assert engineers["totalResults"] == 3 and [r["id"] for r in engineers["Resources"]] == [ids[3], ids[5]]
        either = search(filter='userName sw "user1" or (title co "sign" and externalId eq "ext-4")')
        assert sorted(r["id"] for r in either["Resources"]) == sorted([ids[1], ids[4]])
        assert search(filter='title pr and not (title eq "Designer")')["totalResults"] == 3
        assert search(filter='externalId eq "ext-5" and title eq "Designer"')["totalResults"] == 0
        by_name = search(sortBy="userName", sortOrder="descending", count=2)
        assert [r["userName"] for r in by_name["Resources"]] == ["user6@example.com", "user5@example.com"]
        only = search(filter='userName eq "user2@example.com"', attributes="userName")
        assert set(only["Resources"][0]) == {"schemas", "id", "userName"}
        # POST /.search works like GET.
        posted = idp.post("/Users/.search", json={
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"], "filter": 'title eq "Designer"',
            "startIndex": 1, "count": 10,
        })  # fmt: skip
        assert posted.status_code == 200 and posted.json()["totalResults"] == 4

        bad = idp.get("/Users", params={"filter": "userName eq"})
        assert bad.status_code == 400
        assert bad.json()["schemas"] == [ERROR] and bad.json()["scimType"] == "invalidFilter"
        assert bad.json()["status"] == "400"
        unknown = idp.get("/Users", params={"filter": 'shoeSize eq "44"'})
        assert unknown.status_code == 400 and unknown.json()["scimType"] == "invalidFilter"


def test_errors_conflicts_and_preconditions(make_server):
    live = make_server(process_sessions=False)
    enable_uuid(live)
    token = scim_token(live)
    pid = live.project.project.id
    with scim(live, token) as idp:
        uid = idp.post("/Users", json=okta_user("ana@example.com")).json()["id"]
        conflict = idp.post("/Users", json=okta_user("ANA@example.com", externalId="other"))
        assert conflict.status_code == 409
        assert conflict.json()["scimType"] == "uniqueness" and conflict.json()["schemas"] == [ERROR]
        assert "ana@example.com" in conflict.json()["detail"].lower()
        other = idp.post("/Users", json=okta_user("bo@example.com")).json()["id"]
        rename = idp.patch(
            f"/Users/{other}", json=patch({"op": "replace", "path": "userName", "value": "Ana@Example.com"})
        )
        assert rename.status_code == 409 and rename.json()["scimType"] == "uniqueness"

        missing = idp.post("/Users", json={"schemas": [USER_SCHEMA], "displayName": "No Name"})
        assert missing.status_code == 400 and missing.json()["scimType"] == "invalidValue"
        unknown_attr = idp.post("/Users", json={"schemas": [USER_SCHEMA], "userName": "x@example.com", "shoeSize": 44})
        assert unknown_attr.status_code == 400 and unknown_attr.json()["schemas"] == [ERROR]
        bad_op = idp.patch(f"/Users/{uid}", json=patch({"op": "replace", "path": "active", "value": "sometimes"}))
        assert bad_op.status_code == 400 and bad_op.json()["scimType"] == "invalidValue"
        no_target = idp.patch(f"/Users/{uid}", json=patch({"op": "replace", "path": 'emails[type eq "fax"].display'}))
        assert no_target.status_code == 400
        assert idp.get("/Users/does-not-exist").status_code == 404
        assert idp.get("/Users/does-not-exist").json()["schemas"] == [ERROR]
        assert idp.get("/Groups").status_code == 404  # only Users are served
        assert idp.post("/Bulk", json={}).status_code == 501

        # ETags: If-Match with a stale version is refused; If-None-Match with the current one is 304.
        current = idp.get(f"/Users/{uid}")
        etag = current.headers["etag"]
        assert idp.get(f"/Users/{uid}", headers={"If-None-Match": etag}).status_code == 304
        changed = idp.patch(f"/Users/{uid}", json=patch({"op": "replace", "path": "title", "value": "CEO"}),
                            headers={"If-Match": etag})  # fmt: skip
        assert changed.status_code == 200
        stale = idp.put(f"/Users/{uid}", json=okta_user("ana@example.com", title="CTO"), headers={"If-Match": etag})
        assert stale.status_code == 412
        assert idp.get(f"/Users/{uid}").json()["title"] == "CEO"

    log = live.app.state.integration_log.list(pid, "scim")
    refused = [e for e in log if e["kind"].endswith(".refused")]
    assert {e["kind"] for e in refused} == {"user.create.refused", "user.patch.refused", "user.replace.refused"}
    assert any(e["errors"][0]["scimType"] == "uniqueness" and e["errors"][0]["status"] == "409" for e in refused)
    assert any(e["errors"][0]["status"] == "412" for e in refused)


def test_tokens_and_project_isolation(make_server):
    live = make_server(process_sessions=False)
    enable_uuid(live)
    pid = live.project.project.id
    with scim(live, "scim_1_whatever") as idp:
        refused = idp.get("/Users")
        assert refused.status_code == 401 and refused.json()["schemas"] == [ERROR]  # SCIM is not enabled yet
        assert idp.get("/ServiceProviderConfig").status_code == 401
    token = scim_token(live)
    assert token.startswith(f"scim_{pid}_")
    stored = live.scalar("SELECT token_hash FROM scim_settings WHERE project_id = :p", p=pid)
    assert stored and token not in stored  # only the hash is kept
    with scim(live, token) as idp:
        uid = idp.post("/Users", json=okta_user("kim@example.com")).json()["id"]
    for wrong in (None, "wrong", token + "x"):
        with scim(live, wrong) as idp:
            response = idp.get("/Users")
            assert response.status_code == 401, wrong
            assert response.json()["status"] == "401" and response.headers["www-authenticate"].startswith("Bearer")
            assert idp.post("/Users", json=okta_user("eve@example.com")).status_code == 401
            # RFC 7644 §4: the service provider configuration needs no credentials.
            config = idp.get("/ServiceProviderConfig")
            assert config.status_code == 200 and config.json()["patch"]["supported"] is True
    with scim(live, token) as idp:
        assert idp.get("/ServiceProviderConfig").json()["bulk"]["supported"] is False
        assert [r["id"] for r in idp.get("/ResourceTypes").json()["Resources"]] == ["User"]
        schemas = {s["id"] for s in idp.get("/Schemas").json()["Resources"]}
        assert {USER_SCHEMA, ENTERPRISE_SCHEMA} <= schemas

    # Another project with its own token sees none of these users, and its token opens nothing here.
    other = live.projects.create("other")
    enable = {"uuid": {"provider": "idp"}}
    with live.admin(other.admin_token) as admin:
        assert admin.patch(f"/api/projects/{other.project.id}/environments/production", json=enable).status_code == 200
        other_token = admin.post(f"/api/projects/{other.project.id}/integrations/scim/token").json()["token"]
        # An admin token of one project cannot manage another project's SCIM.
        assert admin.post(f"/api/projects/{pid}/integrations/scim/token").status_code == 403
    with scim(live, other_token, other.project.id) as idp:
        assert idp.get("/Users").json()["totalResults"] == 0
        assert idp.get(f"/Users/{uid}").status_code == 404
        assert idp.delete(f"/Users/{uid}").status_code == 404
        assert idp.post("/Users", json=okta_user("kim@example.com")).status_code == 201  # userName is per project
    with scim(live, other_token) as idp:
        assert idp.get("/Users").status_code == 401
        assert idp.get(f"/Users/{uid}").status_code == 401
    with scim(live, token) as idp:
        assert idp.get("/Users").json()["totalResults"] == 1

    # Rotation: the new token works at once, the old one stops; revocation stops everything.
    rotated = scim_token(live)
    with scim(live, token) as idp:
        assert idp.get("/Users").status_code == 401
    with scim(live, rotated) as idp:
        assert idp.get(f"/Users/{uid}").status_code == 200
    assert admin_request(live, "DELETE", "/token").status_code == 200
    assert admin_request(live, "DELETE", "/token").status_code == 404
    with scim(live, rotated) as idp:
        assert idp.get("/Users").status_code == 401
    kinds = [e["kind"] for e in live.app.state.integration_log.list(pid, "scim") if e["kind"].startswith("token")]
    assert kinds == ["token.revoke", "token.rotate", "token.create"]
    with scim(live, token, 999_999) as idp:
        assert idp.get("/Users").status_code == 401  # no such project: nothing to tell apart
    with http_client(base_url=live.base_url) as http:
        assert http.get("/scim/v2/abc/Users").status_code == 404


def test_attributes_reach_the_end_user_with_history(make_server):
    live = make_server(process_sessions=False)
    enable_uuid(live)
    token = scim_token(live)
    pid = live.project.project.id
    with scim(live, token) as idp:
        # Pre-provisioning: the IdP pushes the user before they have ever been seen.
        uid = idp.post("/Users", json=okta_user("jane")).json()["id"]
        assert api(live, "/users/u:jane").status_code == 404  # not listed before their first session closes
        idp.patch(f"/Users/{uid}", json=patch({"op": "replace", "path": f"{ENTERPRISE_SCHEMA}:department",
                                               "value": "Support"}))  # fmt: skip
    send(live, user_events("jane", now_ms() - 3 * 60 * 60_000, 3))
    live.app.state.sessions.run(now_ms())

    jane = api(live, "/users/u:jane")
    assert jane.status_code == 200, jane.text
    custom = jane.json()["custom_attributes"]
    assert custom["department"]["value"] == "Support" and custom["department"]["source"] == "scim"
    assert custom["email"]["value"] == "jane" and custom["active"]["value"] is True
    history = api(live, "/users/u:jane/attributes/history?name=department").json()["history"]
    assert [(h["old"], h["new"], h["source"]) for h in history] == [
        ("Sales", "Support", "scim"),
        (None, "Sales", "scim"),
    ]
    registry = {a["name"]: a for a in api(live, "/attributes").json()["attributes"]}
    assert registry["active"]["type"] == "boolean" and registry["department"]["integrations"] == ["scim"]

    # Okta deactivates, then the admin deletes the user in the IdP.
    with scim(live, token) as idp:
        assert idp.patch(f"/Users/{uid}", json=patch({"op": "replace", "value": {"active": False}})).status_code == 200
        assert idp.patch(f"/Users/{uid}", json=patch({"op": "replace", "value": {"active": False}})).status_code == 200
        deleted = idp.delete(f"/Users/{uid}")
        assert deleted.status_code == 204 and deleted.content == b""
        assert idp.get(f"/Users/{uid}").status_code == 404
        assert idp.delete(f"/Users/{uid}").status_code == 404
    custom = api(live, "/users/u:jane").json()["custom_attributes"]
    assert custom["active"]["value"] is False and custom["department"]["value"] == "Support"  # values are kept
    entries = live.app.state.integration_log.list(pid, "scim")
    assert [e["kind"] for e in entries][:4] == ["user.delete.refused", "user.delete", "user.patch", "user.patch"]
    assert entries[2]["details"]["unchanged"] is True  # the second deactivation changed nothing
    assert entries[3]["details"]["changed"] == ["active"] and entries[3]["integration_id"] == uid


def test_settings_mapping_and_end_user_id(make_server):
    live = make_server(process_sessions=False)
    pid = live.project.project.id
    for env in ("production", "test"):
        with live.admin() as admin:
            admin.patch(f"/api/projects/{pid}/environments/{env}", json={"uuid": {"provider": "none"}})
    assert admin_request(live, "POST", "/token").json()["error"] == "uuid_settings_required"
    enable_uuid(live)
    initial = admin_request(live, "GET", "").json()
    assert initial["enabled"] is False and initial["base_url"] == f"{live.base_url}/scim/v2/{pid}"
    assert initial["default_mapping"][0] == {"path": "userName", "name": "userName", "type": "string"}

    live.app.state.attributes.write(pid, "csv", [("u:x", {"Tier": "gold"})], {"Tier": "string"})
    bad = [
        ({"user_id_attribute": "displayName"}, "$.user_id_attribute"),
        ({"mapping": {"title": "x"}}, "$.mapping"),
        ({"mapping": [{"path": "title", "name": "Title", "type": "money"}]}, "$.mapping[0].type"),
        ({"mapping": [{"path": "shoeSize", "name": "Shoe", "type": "number"}]}, "$.mapping[0].path"),
        ({"mapping": [{"path": "emails[type eq", "name": "Mail", "type": "string"}]}, "$.mapping[0].path"),
        ({"mapping": [{"path": "name", "name": "Name", "type": "string"}]}, "$.mapping[0].path"),
        ({"mapping": [{"path": "title", "name": "", "type": "string"}]}, "$.mapping[0].name"),
        ({"mapping": [{"path": "title", "name": "T", "type": "string"}, {"path": "nickName", "name": "T",
                                                                         "type": "string"}]}, "$.mapping[1].name"),
        ({"mapping": [{"path": "title", "name": "T", "type": "string", "x": 1}]}, "$.mapping[0].x"),
        ({"mapping": [{"path": "userType", "name": "Tier", "type": "number"}]}, "$.mapping[0].type"),
        ({"token": "x"}, "$.token"),
    ]  # fmt: skip
    for body, path in bad:
        response = admin_request(live, "PUT", "", json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["path"] == path, (body, response.json())

    mapping = [
        {"path": 'emails[type eq "work"].value', "name": "Work email", "type": "string"},
        {"path": "userType", "name": "Tier", "type": "string"},
        {"path": f"{ENTERPRISE_SCHEMA}:employeeNumber", "name": "Employee no", "type": "number"},
        {"path": "active", "name": "Enabled", "type": "boolean"},
    ]
    saved = admin_request(live, "PUT", "", json={"user_id_attribute": "externalId", "mapping": mapping})
    assert saved.status_code == 200, saved.text
    assert saved.json()["user_id_attribute"] == "externalId" and saved.json()["mapping"] == mapping
    token = scim_token(live)
    with scim(live, token) as idp:
        missing = idp.post("/Users", json=okta_user("no-ext@example.com", externalId=None))
        assert missing.status_code == 400 and "externalId" in missing.json()["detail"]
        emails = [{"value": "sam@home", "type": "home"}, {"value": "sam@work", "type": "work"}]
        user = okta_user("sam@example.com", externalId="4711", userType="Gold", emails=emails)
        user[ENTERPRISE_SCHEMA]["employeeNumber"] = "0815"
        uid = idp.post("/Users", json=user).json()["id"]
        clash = idp.post("/Users", json=okta_user("sam2@example.com", externalId="4711"))
        assert clash.status_code == 409 and "u:4711" in clash.json()["detail"]
        bad_number = idp.patch(f"/Users/{uid}", json=patch(
            {"op": "replace", "path": f"{ENTERPRISE_SCHEMA}:employeeNumber", "value": "E-1"}))  # fmt: skip
        assert bad_number.status_code == 200  # the SCIM user is stored; the attribute error goes to the log
    values = {k: v["value"] for k, v in live.app.state.attributes.values(pid, ["u:4711"]).items()}
    assert values == {"Work email": "sam@work", "Tier": "Gold", "Employee no": 815.0, "Enabled": True}
    entry = live.app.state.integration_log.list(pid, "scim", "user.patch")[0]
    assert entry["error_count"] == 1 and entry["errors"][0]["field"] == "Employee no"
    assert "expected a number" in entry["errors"][0]["reason"]

    changed = admin_request(live, "PUT", "", json={"user_id_attribute": "userName"})
    assert changed.status_code == 409 and changed.json()["error"] == "scim_users_exist"
    described = admin_request(live, "GET", "").json()
    assert described["enabled"] is True and described["users"] == 1 and described["user_id_attribute"] == "externalId"
    assert [e["kind"] for e in live.app.state.integration_log.list(pid, "scim", "config.update")] == ["config.update"]


def test_renamed_user_moves_to_a_new_end_user(make_server):
    live = make_server(process_sessions=False)
    enable_uuid(live)
    token = scim_token(live)
    pid = live.project.project.id
    with scim(live, token) as idp:
        uid = idp.post("/Users", json=okta_user("old@example.com")).json()["id"]
        renamed = idp.put(f"/Users/{uid}", json=okta_user("new@example.com", title="Lead"))
        assert renamed.status_code == 200 and renamed.json()["userName"] == "new@example.com"
        assert idp.get("/Users", params={"filter": 'userName eq "old@example.com"'}).json()["totalResults"] == 0
    new = {k: v["value"] for k, v in live.app.state.attributes.values(pid, ["u:new@example.com"]).items()}
    old = {k: v["value"] for k, v in live.app.state.attributes.values(pid, ["u:old@example.com"]).items()}
    assert new["userName"] == "new@example.com" and new["title"] == "Lead" and new["department"] == "Sales"
    assert old["userName"] == "old@example.com" and "title" not in old  # the old end user keeps what they had
    entry = live.app.state.integration_log.list(pid, "scim", "user.replace")[0]
    assert entry["details"]["previous_user_key"] == "u:old@example.com"
    assert entry["details"]["user_key"] == "u:new@example.com"


def test_cap_refuses_new_names_but_keeps_provisioning(make_server):
    live = make_server(process_sessions=False)
    enable_uuid(live)
    pid = live.project.project.id
    live.app.state.attributes.write(pid, "csv", [("u:seed", {f"a{i}": "x" for i in range(95)})])
    saved = admin_request(live, "PUT", "", json={})  # creates the default settings
    assert saved.status_code == 200 and saved.json()["warnings"] == []
    warned = admin_request(live, "PUT", "", json={"mapping": [f.copy() for f in saved.json()["mapping"]]})
    assert "only 5 of the 14 new names" in warned.json()["warnings"][0]
    token = scim_token(live)
    with scim(live, token) as idp:
        assert idp.post("/Users", json=okta_user("cap@example.com")).status_code == 201
    stored = live.app.state.attributes.values(pid, ["u:cap@example.com"])
    assert set(stored) == {"userName", "displayName", "firstName", "lastName", "email"}  # the first 5 in mapping order
    entry = live.app.state.integration_log.list(pid, "scim", "user.create")[0]
    assert entry["error_count"] == 4 and "maximum of 100" in entry["errors"][0]["reason"]
    assert entry["applied"] == 1


def test_concurrent_writes_lose_nothing(make_server):
    live = make_server(process_sessions=False)
    enable_uuid(live)
    token = scim_token(live)
    with scim(live, token) as idp:
        uid = idp.post("/Users", json=okta_user("multi@example.com", emails=[])).json()["id"]
    barrier = threading.Barrier(6)

    def add_email(i: int) -> int:
        with scim(live, token) as idp:
            barrier.wait()
            body = patch({"op": "add", "path": "emails", "value": [{"value": f"m{i}@example.com", "type": "other"}]})
            return idp.patch(f"/Users/{uid}", json=body).status_code

    def create_same(i: int) -> int:
        with scim(live, token) as idp:
            barrier.wait()
            return idp.post("/Users", json=okta_user("same@example.com", externalId=f"e{i}")).status_code

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(add_email, range(6))) == [200] * 6  # each PATCH read the user after the one before
        assert sorted(pool.map(create_same, range(6))) == [201, 409, 409, 409, 409, 409]
    with scim(live, token) as idp:
        user = idp.get(f"/Users/{uid}").json()
        assert sorted(e["value"] for e in user["emails"]) == [f"m{i}@example.com" for i in range(6)]
        assert user["meta"]["version"] == 'W/"7"'
    assert live.scalar("SELECT count(*) FROM scim_users WHERE user_name = 'same@example.com'") == 1


def test_erasing_the_end_user_removes_the_scim_record(make_server):
    """GDPR erasure forgets the person's directory data too; the IdP then sees them as gone."""
    live = make_server(process_sessions=False)
    enable_uuid(live)
    token = scim_token(live)
    with scim(live, token) as idp:
        jane = idp.post("/Users", json=okta_user("jane")).json()["id"]
        omar = idp.post("/Users", json=okta_user("omar", externalId="00u2omar")).json()["id"]
        kept = idp.post("/Users", json=okta_user("kim", externalId="00u3kim")).json()["id"]
    send(live, user_events("jane", now_ms() - 3 * 60 * 60_000, 3))
    live.app.state.sessions.run(now_ms())

    erased = api(live, "/users/u:jane", "DELETE")
    assert erased.status_code == 200, erased.text
    assert erased.json()["scim_users"] == 1 and erased.json()["events"] == 3 and erased.json()["attributes"] > 0
    # Pre-provisioned and never seen: nothing but the SCIM record and attributes, still erasable.
    erased = api(live, "/users/u:omar", "DELETE")
    assert erased.status_code == 200, erased.text
    assert erased.json()["scim_users"] == 1 and erased.json()["events"] == 0 and erased.json()["attributes"] > 0
    assert api(live, "/users/u:omar", "DELETE").status_code == 404

    assert live.scalar("SELECT count(*) FROM scim_users WHERE user_key IN ('u:jane', 'u:omar')") == 0
    assert live.scalar("SELECT count(*) FROM custom_attributes WHERE user_key IN ('u:jane', 'u:omar')") == 0
    assert live.scalar("SELECT count(*) FROM scim_users WHERE user_key = 'u:kim'") == 1
    with scim(live, token) as idp:
        assert idp.get(f"/Users/{jane}").status_code == 404
        assert idp.get(f"/Users/{omar}").status_code == 404
        assert idp.get(f"/Users/{kept}").status_code == 200
        listed = idp.get("/Users", params={"filter": 'userName eq "jane"'}).json()
        assert listed["totalResults"] == 0
        # The IdP may provision the person again: the userName is free.
        assert idp.post("/Users", json=okta_user("jane")).status_code == 201
    audit = api(live, "/audit-log?action=end_user.erase").json()["entries"]
    assert [(e["target"], e["details"]["scim_users"]) for e in audit] == [("u:omar", 1), ("u:jane", 1)]
