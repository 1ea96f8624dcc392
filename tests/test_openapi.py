"""The OpenAPI document: valid OpenAPI 3.1, covering every API route and method, with the permission each
route really checks and answers that really match the documented schemas; and the readable /api/docs page."""

from __future__ import annotations

import re

import jsonschema
import pytest
from openapi_spec_validator import validate

from test_accounts import CHEAP_ARGON2, add_account, sign_in
from test_reports_api import WT, item, tell
from test_users_api import enable_uuid
from usertrail.web.openapi import NOT_API, api_routes, build_document, missing_operations

from conftest import LiveServer
from samples import now_ms

DAY = 86_400_000


@pytest.fixture
def live(make_server) -> LiveServer:
    server = make_server()
    server.app.state.accounts.hasher = CHEAP_ARGON2
    return server


def test_every_api_route_and_method_is_documented(live):
    problems = missing_operations(live.app.routes)
    assert not problems, "The OpenAPI document does not match the routes:\n" + "\n".join(problems)


def test_served_document_is_valid_openapi_and_lists_every_route(live):
    with live.client() as client:
        response = client.get("/api/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    validate(doc)  # raises on any violation of the OpenAPI 3.1 schema
    assert doc["openapi"].startswith("3.1")
    served = {(m.lower(), p) for m, p, _ in api_routes(live.app.routes)}
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert served == documented
    # The pieces the brief asks for: groups, security schemes, the error format, permissions.
    for prefix in ("/api/", "/v1/", "/event/tell", "/scim/v2/", "/api/auth/"):
        assert any(p.startswith(prefix) for p in doc["paths"]), prefix
    assert {"adminToken", "session", "csrfToken", "writeKey", "updateApiClient", "scimToken"} <= set(
        doc["components"]["securitySchemes"]
    )
    assert doc["components"]["schemas"]["Error"]["required"] == ["error", "reason"]
    items = doc["paths"]["/api/projects/{project_id}/reports/items"]["get"]
    assert items["x-permission"] == "users.view"
    assert {p["name"] for p in items["parameters"]} >= {"project_id", "from", "to", "segment", "format", "sort"}
    assert items["responses"]["403"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    rotate = doc["paths"]["/api/projects/{project_id}/keys/rotate"]["post"]
    assert {"session": [], "csrfToken": []} in rotate["security"] and {"adminToken": []} in rotate["security"]
    session = doc["paths"]["/api/projects/{project_id}/users/{user_key}/sessions/{start_ts}/events"]["get"]
    assert {"name": "start_ts", "type": "integer"} in [
        {"name": p["name"], "type": p["schema"]["type"]} for p in session["parameters"] if p["in"] == "path"
    ]


def test_missing_route_is_named_with_where_to_document_it(live):
    from starlette.routing import Route

    async def new_handler(request):
        raise AssertionError("never called")

    problems = missing_operations([*live.app.routes, Route("/api/projects/{project_id}/new-thing", new_handler)])
    assert len(problems) == 1
    assert problems[0].startswith("GET /api/projects/{project_id}/new-thing (handler test_openapi.new_handler")
    assert "OPERATIONS in src/usertrail/web/openapi/test_openapi.py" in problems[0]
    gone = [r for r in live.app.routes if getattr(r, "path", "") != "/api/auth/roles"]
    assert missing_operations(gone) == [
        "GET /api/auth/roles is declared in src/usertrail/web/openapi but no route serves it: remove or fix its Op"
    ]


def _fill(path: str) -> str:
    """A concrete URL for a documented path: project 1, and placeholder values for the other parameters."""
    return re.sub(r"\{([a-z_]+)\}", lambda m: "1" if m.group(1) in ("project_id", "start_ts") else "x", path)


def test_documented_permission_is_the_one_the_route_checks(live):
    """A signed-in account without a role on the project is refused by every protected route with the
    permission that route checks; it must be the documented `x-permission`."""
    doc = build_document(live.app.routes)
    add_account(live, "nobody@example.com", None)
    checked = 0
    with sign_in(live, "nobody@example.com") as client:
        for path, ops in doc["paths"].items():
            for method, op in ops.items():
                if "x-permission" not in op:
                    continue
                response = client.request(method.upper(), _fill(path), json={})
                body = response.json()
                assert (response.status_code, body.get("error"), body.get("permission")) == (
                    403,
                    "permission_denied",
                    op["x-permission"],
                ), f"{method.upper()} {path}: {response.status_code} {body}"
                checked += 1
    assert checked > 60


def test_every_unsafe_session_route_needs_the_csrf_token(live):
    """A signed-in admin's cookie session, without the X-CSRF-Token header, is refused with `csrf_failed` by
    every POST, PUT, PATCH and DELETE that accepts a session (docs/accounts.md: CSRF on every change); the
    other unsafe routes (write keys, SCIM and Update API tokens, sign-in) accept nothing on the cookie alone."""
    doc = build_document(live.app.routes)
    add_account(live, "root@example.com", "admin")
    checked, others = [], []
    with sign_in(live, "root@example.com") as client:
        del client.headers["X-CSRF-Token"]
        for path, ops in doc["paths"].items():
            for method, op in ops.items():
                if method not in ("post", "put", "patch", "delete"):
                    continue
                response = client.request(method.upper(), _fill(path), json={})
                where = f"{method.upper()} {path}: {response.status_code} {response.text[:200]}"
                if any("session" in scheme for scheme in op.get("security", [])):
                    assert (response.status_code, response.json().get("error")) == (403, "csrf_failed"), where
                    checked.append(f"{method.upper()} {path}")
                else:
                    assert response.status_code >= 400, where
                    others.append(f"{method.upper()} {path}")
        # Nothing above signed the session out; the token is all that was missing.
        assert client.get("/api/auth/me").status_code == 200
    assert len(checked) >= 30, checked
    assert {"POST /api/auth/logout", "DELETE /api/projects/{project_id}/users/{user_key}",
            "POST /api/projects/{project_id}/keys/rotate", "PUT /api/projects/{project_id}/playback/quota",
            "PUT /api/projects/{project_id}/members/{email}"} <= set(checked)  # fmt: skip
    assert {"POST /event/tell", "POST /api/auth/login"} <= set(others)


def _schema(doc: dict, path: str, method: str, status: int = 200) -> dict:
    answer = doc["paths"][path][method]["responses"][str(status)]
    return {**answer["content"]["application/json"]["schema"], "components": doc["components"]}


def test_answers_match_the_documented_schemas(live):
    """Real answers of the read routes, after real traffic, validate against their response schemas; and an
    error answer against `Error`."""
    enable_uuid(live)
    pid = live.project.project.id
    t = now_ms() - 2 * DAY
    tell(live, [item("ann", t, "play", "wt", WT, "Onboarding"), item("ann", t + 5_000, "complete", "wt", WT, None)])
    live.app.state.sessions.run(now_ms() + DAY)
    with live.client() as client:
        doc = client.get("/api/openapi.json").json()
    segment = {"name": "all", "rules": {"rules": [{"attribute": "Browser Name", "operator": "is_set"}]}}
    with live.admin() as admin:
        created = admin.post(f"/api/projects/{pid}/segments", json=segment)
        assert created.status_code == 201, created.text
        jsonschema.validate(created.json(), _schema(doc, "/api/projects/{project_id}/segments", "post", 201))
        values = {"project_id": str(pid), "user_key": "u:ann", "segment_id": created.json()["id"]}
        checked, wrong = [], []
        for path, ops in doc["paths"].items():
            get = ops.get("get")
            names = set(re.findall(r"\{([a-z_]+)\}", path))
            if not get or path.startswith(NOT_API) or not names or not names <= set(values):
                continue
            if "200" not in get["responses"] or "application/json" not in get["responses"]["200"].get("content", {}):
                continue
            url = re.sub(r"\{([a-z_]+)\}", lambda m: values[m.group(1)], path)
            response = admin.get(url)
            assert response.status_code == 200, f"{url}: {response.text}"
            validator = jsonschema.Draft202012Validator(_schema(doc, path, "get"))
            wrong += [f"GET {path}: {e.message} at {e.json_path}" for e in validator.iter_errors(response.json())]
            checked.append(path)
        refused = admin.get(f"/api/projects/{pid}/reports/items", params={"sort": "nope"})
    assert not wrong, "answers that do not match their documented schema:\n" + "\n".join(wrong)
    assert refused.status_code == 400
    jsonschema.validate(refused.json(), _schema(doc, "/api/projects/{project_id}/reports/items", "get", 400))
    assert len(checked) >= 25, checked
    assert "/api/projects/{project_id}/users/{user_key}" in checked


def test_docs_page_lists_every_operation_without_script(live):
    with live.client() as client:
        page = client.get("/api/docs")
        doc = client.get("/api/openapi.json").json()
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert "<script" not in page.text and "http://" not in page.text.replace(live.base_url, "")
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert f'id="{op["operationId"]}"' in page.text, (method, path)
    assert "permission <code>users.view</code>" in page.text
