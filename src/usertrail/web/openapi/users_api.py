"""End users: the End User Object, sessions, events, export and erasure, custom attributes, the audit log
(docs/sessions.md, docs/attributes.md). Routes on end users need UUID settings (409 `uuid_settings_required`)."""

from __future__ import annotations

from typing import Any

import msgspec

from usertrail.web.openapi.model import OFFSET, JSONObject, Op, Param, limit

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


class UserPage(msgspec.Struct):
    total: int
    offset: int
    users: list[EndUser]


class Session(msgspec.Struct):
    """One session (docs/sessions.md); `id` is its start."""

    id: int
    start: int
    end: int
    duration_ms: int
    status: str
    empty: bool
    closed_at: int | None
    events: int
    interactions: int
    page_views: int
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
    entries: list[JSONObject]


_UUID = {409: "uuid_settings_required: every environment's identification provider is `none` (`uuid.provider`)"}

OPERATIONS = [
    Op(
        "GET",
        "/api/projects/{project_id}/users",
        "End users, sorted and filtered",
        permission="users.view",
        query=(
            Param("sort", "an attribute name", default="Last seen"),
            Param("order", "sort order", enum=("asc", "desc"), default="desc"),
            limit(50),
            OFFSET,
            Param("filter", "`<attribute>:<op>:<value>`", repeated=True),
            Param("segment", "only members of this saved segment"),
            Param("rules", "only users matching these segment rules (JSON, docs/segments.md)"),
            Param("q", "free text search"),
        ),
        response=UserPage,
        errors={**_UUID, 400: "invalid_query / invalid_segment / invalid_request (`path`)"},
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
        query=(Param("action", "only this action"), limit()),
        response=AuditEntries,
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
