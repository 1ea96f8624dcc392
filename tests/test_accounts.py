"""Accounts through the real HTTP server, on both engines: sign-in, sessions, CSRF, the attempt limit,
one-time passwords, the role × permission matrix over the API, admin tokens unchanged, members."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import argon2
import httpx
import pytest

from usertrail.access import accounts as accounts_module
from usertrail.access.accounts import ATTEMPT_WINDOW_S, MAX_ATTEMPTS_PER_IP, MAX_FAILURES_PER_ACCOUNT
from usertrail.access.permissions import PERMISSIONS, ROLES

from conftest import LiveServer

PASSWORD = "correct horse battery staple"
# Still argon2id, with a small cost: this 2-core machine is shared and the defaults take ~1 s per hash here.
CHEAP_ARGON2 = argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)


@pytest.fixture
def live(make_server) -> LiveServer:
    server = make_server()
    server.app.state.accounts.hasher = CHEAP_ARGON2
    return server


def add_account(live: LiveServer, email: str, role: str | None, project_id: int | None = None, **kwargs):
    store = live.app.state.accounts
    account = store.create(email, None, kwargs.pop("password", PASSWORD), **kwargs)
    if role:
        store.set_role(account.id, project_id or live.project.project.id, role)
    return account


def login(client: httpx.Client, email: str, password: str = PASSWORD) -> httpx.Response:
    return client.post("/api/auth/login", json={"email": email, "password": password})


@contextlib.contextmanager
def sign_in(live: LiveServer, email: str, password: str = PASSWORD) -> Iterator[httpx.Client]:
    """A client holding the session cookie and sending its CSRF token."""
    with live.client() as client:
        response = login(client, email, password)
        assert response.status_code == 200, response.text
        client.headers["X-CSRF-Token"] = response.json()["csrf_token"]
        yield client


class Clock:
    def __init__(self, start: int) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now


def test_login_me_logout(live):
    pid = live.project.project.id
    add_account(live, "Ann@Example.com", "analyst")
    with live.client() as client:
        response = login(client, "  ann@example.COM ", PASSWORD)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["account"]["email"] == "ann@example.com"
        assert body["projects"] == [
            {"id": pid, "name": "test project", "role": "analyst", "permissions": sorted(ROLES["analyst"])}
        ]
        cookies = response.headers.get_list("set-cookie")
        session_cookie = next(c for c in cookies if c.startswith("usertrail_session="))
        assert "HttpOnly" in session_cookie and "SameSite=lax" in session_cookie and "Secure" not in session_cookie
        csrf_cookie = next(c for c in cookies if c.startswith("usertrail_csrf="))
        assert "HttpOnly" not in csrf_cookie and body["csrf_token"] in csrf_cookie
        # The database keeps only the hash of the session id.
        session_id = client.cookies["usertrail_session"]
        assert live.scalar("SELECT count(*) FROM account_sessions WHERE id_hash = :h", h=session_id) == 0
        assert live.scalar("SELECT count(*) FROM account_sessions") == 1
        me = client.get("/api/auth/me").json()
        assert me["account"]["email"] == "ann@example.com" and me["csrf_token"] == body["csrf_token"]
        assert me["account"]["last_login_at"] is not None
        assert client.get(f"/api/projects/{pid}/stats").json()["events"] == 0
        # Sign-out needs the CSRF token too.
        assert client.post("/api/auth/logout").status_code == 403
        out = client.post("/api/auth/logout", headers={"X-CSRF-Token": body["csrf_token"]})
        assert out.status_code == 200
        assert client.get("/api/auth/me").status_code == 401
        assert live.scalar("SELECT count(*) FROM account_sessions") == 0
    # An old cookie is dead after sign-out.
    with live.client(cookies={"usertrail_session": session_id}) as stale:
        gone = stale.get("/api/auth/me")
        assert gone.status_code == 401 and gone.json()["path"] == "usertrail_session"


def test_secure_cookies_setting(make_server):
    live = make_server(secure_cookies=True)
    live.app.state.accounts.hasher = CHEAP_ARGON2
    add_account(live, "sec@example.com", "viewer")
    with live.client() as client:
        response = login(client, "sec@example.com")
    assert response.status_code == 200
    assert all("Secure" in c for c in response.headers.get_list("set-cookie"))


def test_wrong_password_and_bad_requests(live):
    add_account(live, "bob@example.com", "viewer")
    with live.client() as client:
        wrong = login(client, "bob@example.com", "not the password")
        assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_credentials"
        unknown = login(client, "nobody@example.com", PASSWORD)
        assert unknown.status_code == 401 and unknown.json() == wrong.json()  # no hint which one was wrong
        missing = client.post("/api/auth/login", json={"email": "bob@example.com"})
        assert missing.status_code == 400 and missing.json()["path"] == "$.password"
        # A cross-site HTML form cannot sign anyone in: JSON only.
        form = client.post("/api/auth/login", data={"email": "bob@example.com", "password": PASSWORD})
        assert form.status_code == 415
        assert client.get("/api/auth/me").status_code == 401


def test_failed_sign_ins_are_limited_per_account_and_per_network(live):
    store = live.app.state.accounts
    clock = Clock(1_800_000_000_000 - 1_800_000_000_000 % (ATTEMPT_WINDOW_S * 1000) + 1000)
    store.clock = clock
    add_account(live, "carol@example.com", "viewer")
    with live.client() as client:
        for _ in range(MAX_FAILURES_PER_ACCOUNT):
            assert login(client, "carol@example.com", "guess guess guess").status_code == 401
        # Over the limit even the right password is refused until the window ends.
        limited = login(client, "carol@example.com")
        assert limited.status_code == 429 and limited.json()["error"] == "too_many_attempts"
        assert int(limited.headers["retry-after"]) == limited.json()["retry_after"] == ATTEMPT_WINDOW_S - 1
        clock.now += ATTEMPT_WINDOW_S * 1000
        assert login(client, "carol@example.com").status_code == 200
        # A success clears the account's failures: the next mistakes start from zero.
        assert login(client, "carol@example.com", "guess guess guess").status_code == 401
        assert login(client, "carol@example.com").status_code == 200
        # Per network: many addresses tried from one client.
        clock.now += ATTEMPT_WINDOW_S * 1000
        statuses = [
            login(client, f"spray{i}@example.com", "x" * 12).status_code for i in range(MAX_ATTEMPTS_PER_IP + 1)
        ]
        assert statuses[:-1] == [401] * MAX_ATTEMPTS_PER_IP and statuses[-1] == 429
    # Counters live in the database, by e-mail and masked IP (never a full address).
    scopes = {r[0] for r in live.rows("SELECT scope FROM login_attempts")}
    assert "ip:127.0.0.0" in scopes and not any(s == "ip:127.0.0.1" for s in scopes)


def test_sessions_expire_and_end_when_the_account_is_disabled(live):
    store = live.app.state.accounts
    clock = Clock(1_800_000_000_000)
    store.clock = clock
    account = add_account(live, "dan@example.com", "viewer")
    with sign_in(live, "dan@example.com") as client:
        assert client.get("/api/auth/me").status_code == 200
        clock.now += store.session_ttl_s * 1000
        assert client.get("/api/auth/me").status_code == 401
    with sign_in(live, "dan@example.com") as client:
        store.set_disabled(account.id, True)
        assert client.get("/api/auth/me").status_code == 401
        assert login(client, "dan@example.com").status_code == 401
        store.set_disabled(account.id, False)
        assert login(client, "dan@example.com").status_code == 200


def test_csrf_token_required_for_changes_by_cookie(live):
    pid = live.project.project.id
    add_account(live, "erin@example.com", "admin")
    patch = {"traffic": {"excluded_ips": ["10.0.0.*"]}}
    with sign_in(live, "erin@example.com") as client:
        token = client.headers.pop("X-CSRF-Token")
        refused = client.patch(f"/api/projects/{pid}/environments/production", json=patch)
        assert refused.status_code == 403 and refused.json()["error"] == "csrf_failed"
        forged = client.patch(
            f"/api/projects/{pid}/environments/production", json=patch, headers={"X-CSRF-Token": "0" * 64}
        )
        assert forged.status_code == 403 and forged.json()["error"] == "csrf_failed"
        # Reads need no token; the right token lets the change through.
        assert client.get(f"/api/projects/{pid}").status_code == 200
        ok = client.patch(f"/api/projects/{pid}/environments/production", json=patch, headers={"X-CSRF-Token": token})
        assert ok.status_code == 200, ok.text
        # The double-submit cookie carries the same token, for a browser app to read.
        assert client.cookies["usertrail_csrf"] == token
    # Bearer-token requests are exempt.
    with live.admin() as admin:
        assert admin.patch(f"/api/projects/{pid}/environments/production", json=patch).status_code == 200


def test_one_time_password_must_be_changed_first(live):
    pid = live.project.project.id
    add_account(live, "fay@example.com", "admin", password="one-time-pass-123", password_change_required=True)
    with sign_in(live, "fay@example.com", "one-time-pass-123") as client:
        blocked = client.get(f"/api/projects/{pid}/stats")
        assert blocked.status_code == 403 and blocked.json()["error"] == "password_change_required"
        assert client.get("/api/auth/me").json()["account"]["password_change_required"] is True
        wrong = client.post("/api/auth/password", json={"current_password": "nope", "new_password": PASSWORD})
        assert wrong.status_code == 403
        short = client.post("/api/auth/password", json={"current_password": "one-time-pass-123", "new_password": "x"})
        assert short.status_code == 400 and short.json()["path"] == "$.new_password"
        old_cookie = client.cookies["usertrail_session"]
        changed = client.post(
            "/api/auth/password", json={"current_password": "one-time-pass-123", "new_password": PASSWORD}
        )
        assert changed.status_code == 200, changed.text
        client.headers["X-CSRF-Token"] = changed.json()["csrf_token"]
        assert client.cookies["usertrail_session"] != old_cookie  # every earlier session ended
        assert client.get(f"/api/projects/{pid}/stats").status_code == 200
    with live.client() as client:
        assert login(client, "fay@example.com", "one-time-pass-123").status_code == 401


# Every protected route with the permission it needs: (method, path under the project, body, permission).
ENDPOINTS = [
    ("GET", "", None, "project.view"),
    ("GET", "/stats", None, "project.view"),
    ("GET", "/drops", None, "project.view"),
    ("PATCH", "/environments/production", {"traffic": {"excluded_ips": []}}, "settings.manage"),
    ("POST", "/keys/rotate", {"kind": "write", "grace_seconds": 60}, "settings.manage"),
    ("GET", "/rejected", None, "settings.manage"),
    ("POST", "/rejected/reprocess", {"ids": ["nope"]}, "settings.manage"),
    ("POST", "/rejected/discard", {"ids": ["nope"]}, "settings.manage"),
    ("GET", "/users", None, "users.view"),
    ("GET", "/users/u:nobody", None, "users.view"),
    ("GET", "/users/u:nobody/events", None, "users.view"),
    ("GET", "/users/u:nobody/sessions", None, "users.view"),
    ("GET", "/users/u:nobody/sessions/1/events", None, "users.view"),
    ("GET", "/attributes", None, "users.view"),
    ("GET", "/users/u:nobody/attributes/history", None, "users.view"),
    ("PATCH", "/users/u:nobody/attributes", {"Plan": "gold"}, "users.edit"),
    ("GET", "/users/u:nobody/export", None, "users.export"),
    ("DELETE", "/users/u:nobody", None, "users.erase"),
    ("GET", "/audit-log", None, "audit.view"),
    ("GET", "/activity-log", None, "audit.view"),
    ("GET", "/activity-log.csv", None, "audit.view"),
    ("GET", "/activity-log/verify", None, "audit.view"),
    ("GET", "/integrations/api-clients", None, "integrations.manage"),
    (
        "POST",
        "/integrations/api-clients",
        {"name": "crm", "user_id_property": "id", "fields": []},
        "integrations.manage",
    ),
    ("DELETE", "/integrations/api-clients/nope", None, "integrations.manage"),
    ("GET", "/integrations/log", None, "integrations.manage"),
    ("GET", "/members", None, "accounts.manage"),
    ("PUT", "/members/new-person@example.com", {"role": "viewer"}, "accounts.manage"),
    ("DELETE", "/members/new-person@example.com", None, "accounts.manage"),
    ("GET", "/segments", None, "users.view"),
    ("GET", "/reports/items", None, "users.view"),
    ("POST", "/segments/preview", {"rules": {"rules": [{"attribute": "Country", "operator": "is_set"}]}}, "users.view"),
    (
        "POST",
        "/segments",
        {"name": "x", "rules": {"rules": [{"attribute": "City", "operator": "is_set"}]}},
        "segments.manage",
    ),
    ("PATCH", "/segments/seg_nope", {"name": "y"}, "segments.manage"),
    ("DELETE", "/segments/seg_nope", None, "segments.manage"),
    ("GET", "/playback/usage", None, "playback.view"),
    ("PUT", "/playback/quota", {"quota": 10}, "settings.manage"),
    ("GET", "/playback/recordings", None, "playback.view"),
    ("GET", "/playback/recordings/rec_nope/events", None, "playback.view"),
    ("DELETE", "/playback/recordings/rec_nope", None, "playback.delete"),
    ("GET", "/playback/recordings/rec_nope", None, "playback.view"),
    ("GET", "/playback/recordings/rec_nope/assets", None, "playback.view"),
    ("GET", "/playback/recordings/rec_nope/export", None, "playback.export"),
    ("GET", "/playback/assets/" + "0" * 64, None, "playback.view"),
]


def test_every_playback_route_is_in_the_permission_matrix(live):
    """A new playback route cannot go without its permission check being tested above."""
    prefix = "/api/projects/{project_id}"
    routes = [
        (method, route.path.removeprefix(prefix))
        for route in live.app.routes
        if getattr(route, "path", "").startswith(prefix + "/playback")
        for method in (route.methods or set()) - {"HEAD"}
    ]
    assert len(routes) >= 9, routes
    for method, template in routes:
        pattern = re.compile("^" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template)) + "$")
        assert any(m == method and pattern.match(path) for m, path, _, _ in ENDPOINTS), (method, template)


def test_role_matrix_over_the_api(live):
    """Each role reaches exactly the routes whose permission it holds; the others answer 403 naming it."""
    pid = live.project.project.id
    with live.admin() as admin:  # user-level routes need UUID settings
        admin.patch(
            f"/api/projects/{pid}/environments/production",
            json={"uuid": {"provider": "variable", "source": "currentUser.id"}},
        )
    checked = set()
    for role in ROLES:
        add_account(live, f"{role}@example.com", role)
        with sign_in(live, f"{role}@example.com") as client:
            for method, path, body, permission in ENDPOINTS:
                response = client.request(method, f"/api/projects/{pid}{path}", json=body)
                where = f"{role} {method} {path}: {response.status_code} {response.text[:200]}"
                if permission in ROLES[role]:
                    assert response.status_code not in (401, 403), where
                else:
                    assert response.status_code == 403, where
                    assert response.json()["error"] == "permission_denied", where
                    assert response.json()["permission"] == permission, where
                checked.add(permission)
    # The table covers every permission.
    assert checked == set(PERMISSIONS)


def test_viewer_cannot_change_settings_and_no_role_means_no_access(live):
    pid = live.project.project.id
    other = live.projects.create("other project").project.id
    add_account(live, "gus@example.com", "viewer")
    with sign_in(live, "gus@example.com") as client:
        for method, path, body in [
            ("PATCH", "/environments/production", {"traffic": {"excluded_ips": ["1.2.3.4"]}}),
            ("PUT", "/environments/staging", {}),
            ("POST", "/keys/rotate", {"kind": "admin"}),
        ]:
            refused = client.request(method, f"/api/projects/{pid}{path}", json=body)
            assert refused.status_code == 403 and refused.json()["permission"] == "settings.manage"
            assert "viewer" in refused.json()["reason"]
        assert client.get(f"/api/projects/{pid}").status_code == 200
        foreign = client.get(f"/api/projects/{other}/stats")
        assert foreign.status_code == 403 and "no role" in foreign.json()["reason"]
        assert client.get("/api/projects/abc/stats").status_code == 404
    # Nothing changed.
    with live.admin() as admin:
        assert admin.get(f"/api/projects/{pid}").json()["environments"]["production"]["traffic"]["excluded_ips"] == []


def test_admin_tokens_work_as_before(live):
    pid = live.project.project.id
    with live.admin() as admin:
        assert admin.get(f"/api/projects/{pid}/stats").status_code == 200
        me = admin.get("/api/auth/me").json()
        assert me["kind"] == "token" and me["projects"][0]["role"] == "admin"
        # Tokens need no CSRF token and may do everything on their own project.
        assert admin.get(f"/api/projects/{pid}/members").json() == {"members": []}
    other = live.projects.create("other project")
    with live.admin(other.admin_token) as admin:
        assert admin.get(f"/api/projects/{pid}/stats").status_code == 403
    with live.admin(live.project.write_key) as writer:
        assert writer.get(f"/api/projects/{pid}/stats").status_code == 403
    with live.client(headers={"Authorization": "Bearer adm_nonsense"}) as bad:
        assert bad.get(f"/api/projects/{pid}/stats").status_code == 401
    with live.client() as anonymous:
        assert anonymous.get(f"/api/projects/{pid}/stats").status_code == 401


def test_members_api(live):
    pid = live.project.project.id
    add_account(live, "hal@example.com", "admin")
    with sign_in(live, "hal@example.com") as admin:
        created = admin.put(f"/api/projects/{pid}/members/ivy@example.com", json={"role": "analyst"})
        assert created.status_code == 201, created.text
        one_time = created.json()["one_time_password"]
        assert created.json()["role"] == "analyst" and created.json()["password_change_required"] is True
        bad_role = admin.put(f"/api/projects/{pid}/members/ivy@example.com", json={"role": "owner"})
        assert bad_role.status_code == 400 and bad_role.json()["path"] == "$.role"
        bad_email = admin.put(f"/api/projects/{pid}/members/not-an-address", json={"role": "viewer"})
        assert bad_email.status_code == 400 and bad_email.json()["path"] == "email"
        self_change = admin.put(f"/api/projects/{pid}/members/hal@example.com", json={"role": "viewer"})
        assert self_change.status_code == 400
        changed = admin.put(f"/api/projects/{pid}/members/ivy@example.com", json={"role": "viewer"})
        assert changed.status_code == 200 and "one_time_password" not in changed.json()
        members = {m["email"]: m["role"] for m in admin.get(f"/api/projects/{pid}/members").json()["members"]}
        assert members == {"hal@example.com": "admin", "ivy@example.com": "viewer"}
        audit = admin.get(f"/api/projects/{pid}/audit-log").json()["entries"]
        assert {(e["actor"], e["action"], e["target"]) for e in audit} == {
            ("hal@example.com", "account.role_set", "ivy@example.com")
        }
        with sign_in(live, "ivy@example.com", one_time) as ivy:
            assert ivy.get("/api/auth/me").json()["account"]["password_change_required"] is True
        assert admin.delete(f"/api/projects/{pid}/members/ivy@example.com").status_code == 200
        assert admin.delete(f"/api/projects/{pid}/members/ivy@example.com").status_code == 404
        assert admin.delete(f"/api/projects/{pid}/members/zed@example.com").status_code == 404


def test_passwords_are_argon2id(engine):
    store = accounts_module.AccountStore(engine)
    account = store.create("kim@example.com", "Kim", PASSWORD)
    stored = engine.connect().exec_driver_sql("SELECT password_hash FROM accounts").scalar()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert store.check_password(account.id, PASSWORD) and not store.check_password(account.id, PASSWORD + "!")
    with pytest.raises(accounts_module.AccountExists):
        store.create("KIM@example.com", None, PASSWORD)
    with pytest.raises(accounts_module.InvalidAccount):
        store.create("lee@example.com", None, "short")
