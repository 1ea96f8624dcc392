"""SCIM 2.0 provisioning through the real HTTP server, on both engines: an independent RFC 7643/7644
compliance checker (scim2-tester), Okta- and Entra-shaped requests, filters and paging, errors,
tokens and project isolation, and the end users' custom attributes and integration log."""

from __future__ import annotations

from collections import Counter

import httpx
import httpx2
import pytest
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status, check_server

from test_users_api import api, enable_uuid, send, user_events
from usertrail.integrations.scim.protocol import ENTERPRISE_SCHEMA, USER_SCHEMA

from conftest import LiveServer
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
    return httpx.Client(base_url=f"{live.base_url}/scim/v2/{pid}", headers=headers, timeout=30)


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
    assert live.scalar("SELECT count(*) FROM user_attributes WHERE source = 'scim'") > 0


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
