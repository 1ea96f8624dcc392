"""End users: the End User Object, sessions, events, export and erasure, custom attributes, the audit log
(docs/sessions.md, docs/attributes.md). Routes on end users need UUID settings (409 `uuid_settings_required`)."""

from __future__ import annotations

from typing import Any

import msgspec

from usertrail.web.openapi.model import BEFORE, OFFSET, JSONObject, Op, Param, limit

TAG = "End users"


class AttributeValue(msgspec.Struct):
    value: Any
    source: str
    updated_at: int | None


class EndUser(msgspec.Struct):
    """The End User Object: standard attributes and custom attributes, each with its source and last update."""

    user_key: str
    attributes: dict[str, AttributeValue]
    custom_attributes: dict[str, AttributeValue]


class EndUserWithKeys(EndUser):
    """The End User Object and every key it owns (its own and the anonymous keys stitched to it)."""

    identities: list[str] = []


class ListedUser(EndUser):
    """A listed End User Object; `columns` holds the value of each `column` asked for (null when unset)."""

    columns: dict[str, Any] | None = None


class UserPage(msgspec.Struct):
    """One page of the list; `next` is the cursor of the following page (pass it as `after`), null at the end."""

    total: int
    offset: int
    next: str | None
    users: list[ListedUser]


class UserRecordings(msgspec.Struct):
    """The owner's recordings (metadata only), newest first."""

    user_key: str
    recordings: list[JSONObject]


class Session(msgspec.Struct):
    """One session (docs/sessions.md); `id` is its start. An empty session has no data: its counts,
    paths, location and browser are null and `client_session_ids` is empty."""

    id: int
    start: int
    end: int
    duration_ms: int
    status: str
    empty: bool
    closed_at: int | None
    events: int | None
    interactions: int | None
    page_views: int | None
    client_session_ids: list[str]
    entry_path: str | None
    exit_path: str | None
    country: str | None
    region: str | None
    city: str | None
    browser: str | None
    browser_version: str | None
    os: str | None
    device_type: str | None


class Sessions(msgspec.Struct):
    user_key: str
    sessions: list[Session]


class StoredEvent(msgspec.Struct):
    """A stored event: its mapped columns (`event_id`, `user_key`, `ts`, `type`, …) and `payload` as received."""

    event_id: str
    user_key: str
    ts: int
    type: str
    payload: Any


class SessionStream(msgspec.Struct):
    session: Session
    events: list[StoredEvent]


class Events(msgspec.Struct):
    events: list[StoredEvent]


class Erased(msgspec.Struct):
    """The owner erased, its keys, and how many rows of each kind were deleted."""

    erased: str
    keys: list[str]


class Registry(msgspec.Struct):
    """The custom attributes defined in the project and the cap they count against."""

    cap: int
    count: int
    attributes: list[JSONObject]


class AttributeHistory(msgspec.Struct):
    history: list[JSONObject]


class AuditEntries(msgspec.Struct):
    """Entries newest first; `next_before` continues the list (pass it as `before`)."""

    entries: list[JSONObject]
    next_before: str | None


_LIST_QUERY = (
    Param("sort", "an attribute name", default="Last seen"),
    Param("order", "sort order", enum=("asc", "desc"), default="desc"),
    Param("filter", "`<attribute>:<op>:<value>`", repeated=True),
    Param("segment", "only members of this saved segment"),
    Param("rules", "only users matching these segment rules (JSON, docs/segments.md)"),
    Param("q", "words; each must start a word of the key, location, browser or an analytics property value"),
    Param("column", "an attribute whose value each row carries", repeated=True),
)
_AUDIT_QUERY = (
    Param("actor", "only entries by this actor"),
    Param("action", "only this action"),
    Param("target", "only entries on this target"),
    Param("since", "from: ms or ISO 8601"),
    Param("until", "before: ms or ISO 8601"),
)
_UUID = {409: "uuid_settings_required: every environment's identification provider is `none` (`uuid.provider`)"}

OPERATIONS = [
    Op(
        "GET",
        "/api/projects/{project_id}/users",
        "End users, sorted and filtered",
        permission="users.view",
        query=(
            *_LIST_QUERY,
            limit(50),
            OFFSET,
            Param("after", "continue after this cursor (the previous page's `next`); faster than `offset`"),
        ),
        response=UserPage,
        errors={**_UUID, 400: "invalid_query / invalid_segment / invalid_request (`path`)"},
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/users.csv",
        "The filtered, sorted user list as a streamed CSV download; audited (`end_users.list_export`)",
        permission="users.export",
        query=_LIST_QUERY,
        response=str,
        response_media="text/csv",
        errors={**_UUID, 400: "invalid_query / invalid_segment / invalid_request (`path`)"},
        description="Columns: `user_key`, then each `column` asked for (default: every attribute of the catalog).",
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/users/{user_key}/recordings",
        "The end user's session recordings (metadata), newest first",
        permission="users.view",
        query=(limit(100),),
        response=UserRecordings,
        errors=_UUID,
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/users/{user_key}",
        "One End User Object with its keys",
        permission="users.view",
        response=EndUserWithKeys,
        errors=_UUID,
    ),
    Op(
        "DELETE",
        "/api/projects/{project_id}/users/{user_key}",
        "Erase an end user and everything derived from them (GDPR erasure); audited",
        permission="users.erase",
        response=Erased,
        errors=_UUID,
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/users/{user_key}/events",
        "The end user's events in time order",
        permission="users.view",
        query=(Param("since", "from (ms)", int), Param("until", "before (ms)", int), limit(1000, 10_000)),
        response=Events,
        errors=_UUID,
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/users/{user_key}/export",
        "Everything stored about one end user as one JSON download (GDPR access); audited",
        permission="users.export",
        response=JSONObject,
        errors=_UUID,
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/users/{user_key}/sessions",
        "The end user's sessions, newest first",
        permission="users.view",
        query=(limit(), Param("before", "sessions starting before (ms)", int)),
        response=Sessions,
        errors=_UUID,
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/users/{user_key}/sessions/{start_ts}/events",
        "One session and its events in order",
        permission="users.view",
        query=(limit(1000, 10_000),),
        response=SessionStream,
        errors=_UUID,
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/audit-log",
        "Exports, erasures and role changes, newest first",
        permission="audit.view",
        query=(*_AUDIT_QUERY, limit(), BEFORE),
        response=AuditEntries,
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/audit-log.csv",
        "Every matching audit entry, oldest first, as CSV",
        permission="audit.view",
        query=_AUDIT_QUERY,
        response=str,
        response_media="text/csv",
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/attributes",
        "The custom attribute registry and its cap",
        permission="users.view",
        response=Registry,
    ),
    Op(
        "PATCH",
        "/api/projects/{project_id}/users/{user_key}/attributes",
        "Set custom attributes (`{name: value}`; null clears), as source `admin_api`",
        permission="users.edit",
        body=dict[str, Any],
        response=JSONObject,
        errors=_UUID,
        description="Answers 200 with what was applied, or 400 with the errors by attribute (docs/attributes.md).",
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/users/{user_key}/attributes/history",
        "Changes of the end user's custom attributes, newest first",
        permission="users.view",
        query=(Param("name", "only this attribute"), limit()),
        response=AttributeHistory,
        errors=_UUID,
    ),
]
