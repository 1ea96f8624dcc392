"""The permission catalogue and the roles that bundle them (documented in docs/accounts.md).

A principal acts on one project with one role; the role's permissions are all it may do there.
A project admin token acts with the role `admin` on its own project.
"""

from __future__ import annotations

# name -> what it allows; every protected route names exactly one of these.
PERMISSIONS: dict[str, str] = {
    "project.view": "read the project, its environment settings, key ids, drop counts and stats",
    "settings.manage": "change environment settings, rotate keys, re-process or discard rejected events",
    "users.view": "list and read end users, their sessions, events and custom attributes",
    "users.edit": "set end users' custom attributes through the admin API",
    "users.export": "export everything stored about an end user (GDPR access)",
    "users.erase": "erase an end user and everything derived from them (GDPR erasure)",
    "playback.view": "watch session recordings",
    "playback.delete": "delete session recordings",
    "playback.export": "export session recordings",
    "segments.manage": "create, change and delete segments",
    "integrations.manage": "manage incoming integrations (API clients) and read the integration log",
    "accounts.manage": "add accounts to the project, change their roles, remove them",
    "audit.view": "read and export the audit log and the playback activity log",
}

ADMIN = "admin"
ANALYST = "analyst"
VIEWER = "viewer"

ROLES: dict[str, frozenset[str]] = {
    ADMIN: frozenset(PERMISSIONS),
    ANALYST: frozenset(
        {
            "project.view",
            "users.view",
            "users.export",
            "playback.view",
            "playback.export",
            "segments.manage",
        }
    ),
    VIEWER: frozenset({"project.view", "users.view", "playback.view"}),
}


class UnknownRole(ValueError):
    """A role name that is not in ROLES."""


def permissions_of(role: str) -> frozenset[str]:
    """The permissions a role grants; raises UnknownRole for names not in ROLES."""
    try:
        return ROLES[role]
    except KeyError:
        raise UnknownRole(f"unknown role {role!r}; use one of {', '.join(ROLES)}") from None
