"""Who may do what on a project: its members and their roles, and the playback activity log (hash-chained,
append-only) with its export and verification (docs/accounts.md)."""

from __future__ import annotations

import msgspec

from usertrail.web.openapi.auth import Account
from usertrail.web.openapi.model import JSONObject, Op, Param, limit

TAG = "Members and activity log"


class Member(Account):
    role: str = ""


class NewMember(Member):
    """With a new account, its one-time password (shown only here; it must be changed at first sign-in)."""

    one_time_password: str | None = None


class Members(msgspec.Struct):
    members: list[Member]


class RoleGrant(msgspec.Struct):
    role: str
    display_name: str | None = None


class Removed(msgspec.Struct):
    removed: str


class ActivityPage(msgspec.Struct):
    """Entries newest first (`seq`, `ts`, `actor`, `action`, `recording_id`, hashes); `next_before` pages."""

    entries: list[JSONObject]
    next_before: int | None


class Verification(msgspec.Struct):
    project_id: int
    ok: bool
    entries: int
    first_broken_seq: int | None
    reason: str | None


_FILTERS = (
    Param("actor", "who (an e-mail address or `token:<key id>`)"),
    Param("action", "what (`view`, `export`, `delete`, …)"),
    Param("recording", "which recording"),
    Param("since", "from (ms or ISO 8601)"),
    Param("until", "before (ms or ISO 8601)"),
)

OPERATIONS = [
    Op(
        "GET",
        "/api/projects/{project_id}/members",
        "Accounts with a role on the project",
        permission="accounts.manage",
        response=Members,
    ),
    Op(
        "PUT",
        "/api/projects/{project_id}/members/{email}",
        "Give an account a role on the project, creating the account if new (201 with a one-time password)",
        permission="accounts.manage",
        body=RoleGrant,
        response=NewMember,
        errors={409: "conflict: the account cannot take this role"},
    ),
    Op(
        "DELETE",
        "/api/projects/{project_id}/members/{email}",
        "Take the account's role on the project away",
        permission="accounts.manage",
        response=Removed,
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/activity-log",
        "Recording views, exports and deletions, newest first",
        permission="audit.view",
        query=(*_FILTERS, limit(), Param("before", "continue before this `seq`", int)),
        response=ActivityPage,
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/activity-log.csv",
        "Every matching entry, oldest first, as CSV",
        permission="audit.view",
        query=_FILTERS,
        response=str,
        response_media="text/csv",
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/activity-log/verify",
        "Walk the hash chain: entries checked, first broken",
        permission="audit.view",
        response=Verification,
    ),
]
