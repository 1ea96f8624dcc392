"""Who is calling, and may they: the one permission check every protected route uses, CSRF, and the
sign-in routes (`/api/auth/…`).

Two kinds of credentials reach a project's routes:
- `Authorization: Bearer adm_…`: a project admin token, acting with the role `admin` on its project;
- the `usertrail_session` cookie of a signed-in account, acting with the account's role on the project.
Cookie-authenticated requests that change something must also send the session's CSRF token in
`X-CSRF-Token` (or, for HTML forms, the handler passes the form's `csrf_token` field); bearer-token
requests are exempt, since a browser never adds that header on its own.
"""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from usertrail.access.accounts import (
    Account,
    AccountStore,
    InvalidAccount,
    InvalidCredentials,
    SignedIn,
    TooManyAttempts,
    csrf_token_for,
)
from usertrail.access.activity_log import request_facts
from usertrail.access.permissions import ADMIN, PERMISSIONS, ROLES, permissions_of
from usertrail.access.principal import ACCOUNT, TOKEN, Principal
from usertrail.store.projects import ADMIN as ADMIN_KEY
from usertrail.store.projects import KeyGrant
from usertrail.web.errors import ApiError, error_response, json_object

SESSION_COOKIE = "usertrail_session"
CSRF_COOKIE = "usertrail_csrf"
CSRF_HEADER = "x-csrf-token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SIGN_IN_HINT = "sign in (POST /api/auth/login) or send `Authorization: Bearer <admin token>`"


@dataclass(frozen=True)
class Identity:
    """The credentials of a request, before any project is considered."""

    grant: KeyGrant | None = None
    account: Account | None = None
    session_id: str | None = None


def _accounts(request: Request) -> AccountStore:
    return request.app.state.accounts


def path_project_id(request: Request) -> int:
    """The `{project_id}` of the path (404 if it is not a number)."""
    try:
        return int(request.path_params["project_id"])
    except ValueError:
        raise ApiError(404, "not_found", "no such project", "project_id") from None


def authenticate(request: Request) -> Identity:
    """The caller's credentials: a bearer token if one is sent, else the sign-in cookie; 401 without either."""
    auth = request.headers.get("authorization", "")
    if auth:
        if not auth.lower().startswith("bearer "):
            raise ApiError(401, "unauthorized", "send `Authorization: Bearer <admin token>`", "Authorization")
        grant = request.app.state.collector.projects.authenticate(auth[7:].strip())
        if grant is None:
            raise ApiError(401, "unauthorized", "unknown or expired token", "Authorization")
        return Identity(grant=grant)
    session_id = request.cookies.get(SESSION_COOKIE)
    if not session_id:
        raise ApiError(401, "unauthorized", SIGN_IN_HINT, "Authorization")
    account = _accounts(request).session_account(session_id)
    if account is None:
        raise ApiError(401, "unauthorized", "the sign-in session has expired or ended; sign in again", SESSION_COOKIE)
    return Identity(account=account, session_id=session_id)


def check_csrf(request: Request, identity: Identity, csrf_token: str | None = None) -> None:
    """Refuse a state-changing, cookie-authenticated request without the session's CSRF token (403)."""
    if identity.session_id is None or request.method not in UNSAFE_METHODS:
        return
    sent = csrf_token if csrf_token is not None else request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(sent.encode(), csrf_token_for(identity.session_id).encode()):
        raise ApiError(
            403,
            "csrf_failed",
            f"send the session's CSRF token in {CSRF_HEADER} (from the sign-in answer, GET /api/auth/me "
            f"or the {CSRF_COOKIE} cookie)",
            CSRF_HEADER,
        )


def principal_on(request: Request, identity: Identity, project_id: int) -> Principal:
    """The caller acting on `project_id`: its role there and the role's permissions."""
    if identity.grant is not None:
        grant = identity.grant
        if grant.kind != ADMIN_KEY:
            raise ApiError(403, "forbidden", "a write key can only send events; use an admin token", "Authorization")
        if grant.project_id != project_id:
            raise ApiError(403, "forbidden", "this token belongs to another project", "project_id")
        return Principal(project_id, TOKEN, ADMIN, permissions_of(ADMIN), grant.key_id)
    account = identity.account
    assert account is not None
    if account.password_change_required:
        raise ApiError(
            403,
            "password_change_required",
            "this password was issued for one use: set your own with POST /api/auth/password first",
            "password",
        )
    role = _accounts(request).role_on(account.id, project_id)
    if role is None:
        return Principal(project_id, ACCOUNT, "", frozenset(), str(account.id), account.email)
    return Principal(project_id, ACCOUNT, role, permissions_of(role), str(account.id), account.email)


def require_permission(request: Request, project_id: int, permission: str, csrf_token: str | None = None) -> Principal:
    """The caller, once shown to hold `permission` on the project.

    401 without valid credentials; 403 `csrf_failed` for a cookie-authenticated change without the
    CSRF token; 403 `permission_denied` (naming the permission) when the role lacks it. HTML form
    handlers pass the form's `csrf_token` field.
    """
    if permission not in PERMISSIONS:
        raise ValueError(f"unknown permission {permission!r}")
    identity = authenticate(request)
    check_csrf(request, identity, csrf_token)
    principal = principal_on(request, identity, project_id)
    if not principal.can(permission):
        reason = (
            f"your role `{principal.role}` on project {project_id} does not include `{permission}`"
            if principal.role
            else f"you have no role on project {project_id}"
        )
        raise ApiError(403, "permission_denied", reason, "permission", permission=permission)
    return principal


def require(request: Request, permission: str) -> Principal:
    """`require_permission` for the project in the path."""
    return require_permission(request, path_project_id(request), permission)


# --- sign-in routes ---------------------------------------------------------------------------


def _secure(request: Request) -> bool:
    return request.app.state.settings.secure_cookies or request.url.scheme == "https"


def set_session_cookies(request: Request, response: Response, signed: SignedIn) -> None:
    """The session cookie (HttpOnly) and a readable copy of its CSRF token for double-submit."""
    max_age = max(0, (signed.expires_at - _accounts(request).clock()) // 1000)
    for name, value, http_only in ((SESSION_COOKIE, signed.session_id, True), (CSRF_COOKIE, signed.csrf_token, False)):
        response.set_cookie(
            name, value, max_age=max_age, path="/", secure=_secure(request), httponly=http_only, samesite="lax"
        )


def clear_session_cookies(request: Request, response: Response) -> None:
    for name in (SESSION_COOKIE, CSRF_COOKIE):
        response.delete_cookie(name, path="/", secure=_secure(request), samesite="lax")


def _projects_json(request: Request, account: Account) -> list[dict]:
    names = {p.id: p.name for p in request.app.state.collector.projects.list()}
    return [
        {"id": pid, "name": names.get(pid), "role": role, "permissions": sorted(permissions_of(role))}
        for pid, role in sorted(_accounts(request).roles(account.id).items())
    ]


def _signed_in_json(request: Request, account: Account, csrf: str, expires_at: int | None = None) -> dict:
    body = {
        "kind": ACCOUNT,
        "account": account.as_json(),
        "csrf_token": csrf,
        "projects": _projects_json(request, account),
    }
    if expires_at is not None:
        body["expires_at"] = expires_at
    return body


async def _json_object(request: Request) -> dict:
    # JSON only: a cross-site HTML form cannot send it, which keeps sign-in itself safe from CSRF.
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, "unsupported_media_type", "send Content-Type: application/json", "Content-Type")
    return await json_object(request)


def _string(body: dict, name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ApiError(400, "invalid_request", f"{name} is required (a string)", f"$.{name}")
    return value


async def login(request: Request) -> Response:
    """`{"email", "password"}` → the session cookie, the CSRF token, the account and its projects."""
    body = await _json_object(request)
    email, password = _string(body, "email"), _string(body, "password")
    facts = request_facts(request)
    try:
        signed = await asyncio.to_thread(_accounts(request).login, email, password, facts.ip_masked)
    except InvalidCredentials:
        raise ApiError(401, "invalid_credentials", "wrong e-mail address or password", "$.password") from None
    except TooManyAttempts as exc:
        refused = error_response(
            429,
            "too_many_attempts",
            f"too many failed sign-ins for this account or network; retry in {exc.retry_after} s",
            "$.email",
            retry_after=exc.retry_after,
        )
        refused.headers["Retry-After"] = str(exc.retry_after)
        return refused
    response = JSONResponse(_signed_in_json(request, signed.account, signed.csrf_token, signed.expires_at))
    set_session_cookies(request, response, signed)
    return response


async def logout(request: Request) -> Response:
    """End the caller's sign-in session (CSRF token required) and clear its cookies."""
    identity = authenticate(request)
    if identity.session_id is None:
        raise ApiError(400, "invalid_request", "only a signed-in session can sign out", SESSION_COOKIE)
    check_csrf(request, identity)
    await asyncio.to_thread(_accounts(request).end_session, identity.session_id)
    response = JSONResponse({"signed_out": True})
    clear_session_cookies(request, response)
    return response


async def me(request: Request) -> Response:
    """The caller: the account with its projects, roles and permissions (or the admin token's grant)."""
    identity = authenticate(request)
    if identity.grant is not None:
        grant = identity.grant
        if grant.kind != ADMIN_KEY:
            raise ApiError(403, "forbidden", "a write key can only send events; use an admin token", "Authorization")
        return JSONResponse(
            {
                "kind": TOKEN,
                "key_id": grant.key_id,
                "projects": [{"id": grant.project_id, "role": ADMIN, "permissions": sorted(permissions_of(ADMIN))}],
            }
        )
    assert identity.account is not None and identity.session_id is not None
    return JSONResponse(_signed_in_json(request, identity.account, csrf_token_for(identity.session_id)))


async def change_password(request: Request) -> Response:
    """`{"current_password", "new_password"}`: ends every session of the account and opens a new one."""
    identity = authenticate(request)
    if identity.account is None:
        raise ApiError(400, "invalid_request", "sign in with the account whose password you change", SESSION_COOKIE)
    check_csrf(request, identity)
    body = await _json_object(request)
    current, new = _string(body, "current_password"), _string(body, "new_password")
    store = _accounts(request)
    if not await asyncio.to_thread(store.check_password, identity.account.id, current):
        raise ApiError(403, "invalid_credentials", "the current password is wrong", "$.current_password")
    if new == current:
        raise ApiError(400, "invalid_request", "the new password must differ from the current one", "$.new_password")
    try:
        await asyncio.to_thread(store.set_password, identity.account.id, new)
    except InvalidAccount as exc:
        raise ApiError(400, "invalid_request", str(exc), "$.new_password") from None
    signed = await asyncio.to_thread(store.start_session, identity.account.id, "password")
    response = JSONResponse(_signed_in_json(request, signed.account, signed.csrf_token, signed.expires_at))
    set_session_cookies(request, response, signed)
    return response


async def roles(request: Request) -> Response:
    """The permission catalogue and what each role grants."""
    return JSONResponse({"permissions": PERMISSIONS, "roles": {name: sorted(perms) for name, perms in ROLES.items()}})


routes = [
    Route("/api/auth/login", login, methods=["POST"]),
    Route("/api/auth/logout", logout, methods=["POST"]),
    Route("/api/auth/me", me, methods=["GET"]),
    Route("/api/auth/password", change_password, methods=["POST"]),
    Route("/api/auth/roles", roles, methods=["GET"]),
]
