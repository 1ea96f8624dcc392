"""Sign-in: local accounts (argon2id) with a session cookie and its CSRF token, who the caller is, password
change, and the permission catalogue (docs/accounts.md)."""

from __future__ import annotations

import msgspec

from usertrail.web.openapi.model import PUBLIC, SIGNED_IN, Op

TAG = "Sign-in"


class Login(msgspec.Struct):
    email: str
    password: str


class Account(msgspec.Struct):
    id: int
    email: str
    display_name: str | None
    disabled: bool
    password_change_required: bool
    single_sign_on: bool
    created_at: int
    last_login_at: int | None


class ProjectRole(msgspec.Struct):
    id: int
    role: str
    permissions: list[str]
    name: str | None = None


class SignedIn(msgspec.Struct):
    """The account, its projects with role and permissions, and the CSRF token to send with changes.
    An admin token's answer has `kind: "token"`, its `key_id` and its one project instead."""

    kind: str
    projects: list[ProjectRole]
    account: Account | None = None
    csrf_token: str | None = None
    expires_at: int | None = None
    key_id: str | None = None


class SignedOut(msgspec.Struct):
    signed_out: bool


class PasswordChange(msgspec.Struct):
    current_password: str
    new_password: str


class Roles(msgspec.Struct):
    """Every permission with what it allows, and the permissions of each role."""

    permissions: dict[str, str]
    roles: dict[str, list[str]]


_JSON_ONLY = {415: "unsupported_media_type: send Content-Type: application/json (`Content-Type`)"}

OPERATIONS = [
    Op(
        "POST",
        "/api/auth/login",
        "Sign in: sets the session cookie and answers with the CSRF token",
        auth=PUBLIC,
        body=Login,
        response=SignedIn,
        errors={
            401: "invalid_credentials: wrong e-mail address or password (`$.password`)",
            429: "too_many_attempts: too many failed sign-ins (`retry_after`, `Retry-After`)",
            **_JSON_ONLY,
        },
    ),
    Op(
        "POST",
        "/api/auth/logout",
        "End the sign-in session and clear its cookies (CSRF token required)",
        auth=SIGNED_IN,
        response=SignedOut,
        errors={
            400: "invalid_request: only a signed-in session can sign out",
            403: "csrf_failed: no or a wrong X-CSRF-Token",
        },
    ),
    Op(
        "GET",
        "/api/auth/me",
        "The caller: account, projects, roles and permissions (or the admin token's grant)",
        auth=SIGNED_IN,
        response=SignedIn,
        errors={403: "forbidden: a write key is not an admin credential"},
    ),
    Op(
        "POST",
        "/api/auth/password",
        "Change the password: ends every session of the account and opens a new one",
        auth=SIGNED_IN,
        body=PasswordChange,
        response=SignedIn,
        errors={
            403: "csrf_failed, or invalid_credentials: the current password is wrong (`$.current_password`)",
            **_JSON_ONLY,
        },
    ),
    Op("GET", "/api/auth/roles", "The permission catalogue and what each role grants", auth=PUBLIC, response=Roles),
]
