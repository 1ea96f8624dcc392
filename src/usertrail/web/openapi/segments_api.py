"""Segments: rule trees over attributes and behaviour, saved segments, members and their history, and the
client-visible segments the snippet may read (docs/segments.md). Needs UUID settings (409
`uuid_settings_required`)."""

from __future__ import annotations

from typing import Any

import msgspec

from usertrail.web.openapi.model import OFFSET, WRITE_KEY, JSONObject, Op, Param, limit
from usertrail.web.openapi.users_api import EndUser

TAG = "Segments"


class SegmentSpec(msgspec.Struct):
    """A segment: `rules` is the rule tree of docs/segments.md (groups, AND/OR, typed operators, behaviour)."""

    name: str
    rules: JSONObject
    description: str | None = None
    client_visible: bool = False


class SegmentPatch(msgspec.Struct):
    """Any of a segment's fields; new `rules` recompute the membership."""

    name: str | None = None
    rules: JSONObject | None = None
    description: str | None = None
    client_visible: bool | None = None


class Segment(msgspec.Struct):
    """A saved segment; `member_count` is the size of its stored member list (as of `refreshed_at`)."""

    id: str
    name: str
    description: str | None
    rules: JSONObject
    client_visible: bool
    created_at: int
    updated_at: int
    refreshed_at: int | None
    member_count: int


class Membership(msgspec.Struct):
    entered: int
    left: int


class SegmentWithMembership(Segment):
    """The segment, and who entered and left it with this change (null when the rules did not change)."""

    membership: Membership | None = None


class Segments(msgspec.Struct):
    segments: list[Segment]


class CatalogAttribute(msgspec.Struct, omit_defaults=True):
    """An attribute a rule may name: its kind (standard, analytics, custom), type, and operators with the
    shape of their values; `unit` is `ms` for durations."""

    name: str
    kind: str
    type: str
    operators: list[JSONObject]
    unit: str | None = None


class Catalog(msgspec.Struct):
    """What rule builders need: the attributes, the behaviour rule's targets, operators and known event
    types, the time units, and the limits (rules, depth, list length, days)."""

    attributes: list[CatalogAttribute]
    behaviour: JSONObject
    units: list[str]
    limits: dict[str, int]


class Preview(msgspec.Struct):
    rules: JSONObject
    sample: int = 20


class PreviewAnswer(msgspec.Struct):
    count: int
    sample: list[EndUser]


class Members(msgspec.Struct):
    total: int
    offset: int
    users: list[EndUser]


class Change(msgspec.Struct):
    user_key: str
    segment_id: str
    change: str
    ts: int


class Changes(msgspec.Struct):
    changes: list[Change]


class UserSegments(msgspec.Struct):
    """Every saved segment with whether the user is in it and why, rule by rule."""

    user_key: str
    has_end_user_object: bool
    segments: list[JSONObject]


class Rules(msgspec.Struct):
    rules: JSONObject


class Evaluation(msgspec.Struct):
    user_key: str
    member: bool
    explanation: JSONObject


class UserChanges(msgspec.Struct):
    user_key: str
    changes: list[Change]


class ClientSegments(msgspec.Struct):
    segments: list[Any]


_UUID = {409: "uuid_settings_required: every environment's identification provider is `none`"}
_INVALID = {400: "invalid_segment: the rule at `path` is wrong (`suggestions` may list valid names)", **_UUID}

OPERATIONS = [
    Op(
        "GET",
        "/api/projects/{project_id}/segments/catalog",
        "What segment rules may name: attributes with their operators, behaviour rules, units and limits",
        permission="users.view",
        response=Catalog,
        errors=_UUID,
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/segments",
        "Saved segments",
        permission="users.view",
        response=Segments,
        errors=_UUID,
    ),
    Op(
        "POST",
        "/api/projects/{project_id}/segments",
        "Save a segment and compute its members",
        permission="segments.manage",
        body=SegmentSpec,
        response=SegmentWithMembership,
        status=201,
        errors={**_INVALID, 409: "name_taken (`$.name`) or uuid_settings_required"},
    ),
    Op(
        "POST",
        "/api/projects/{project_id}/segments/preview",
        "Count and sample members of unsaved rules",
        permission="users.view",
        body=Preview,
        response=PreviewAnswer,
        errors=_INVALID,
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/segments/{segment_id}",
        "One saved segment",
        permission="users.view",
        response=Segment,
        errors=_UUID,
    ),
    Op(
        "PATCH",
        "/api/projects/{project_id}/segments/{segment_id}",
        "Change a saved segment",
        permission="segments.manage",
        body=SegmentPatch,
        response=SegmentWithMembership,
        errors={**_INVALID, 409: "name_taken (`$.name`) or uuid_settings_required"},
    ),
    Op(
        "DELETE",
        "/api/projects/{project_id}/segments/{segment_id}",
        "Delete a saved segment",
        permission="segments.manage",
        status=204,
        errors=_UUID,
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/segments/{segment_id}/members",
        "Current members (JSON pages, or every member as CSV with `format=csv`)",
        permission="users.view",
        query=(limit(50), OFFSET, Param("format", "`csv` for a download of every member", enum=("json", "csv"))),
        response=Members,
        errors=_UUID,
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/segments/{segment_id}/changes",
        "Who entered and left, newest first",
        permission="users.view",
        query=(
            Param("change", "only this kind", enum=("entered", "left")),
            Param("since", "from (ms)", int),
            Param("days", "the last n days", int),
            limit(),
            OFFSET,
        ),
        response=Changes,
        errors=_UUID,
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/users/{user_key}/segments",
        "Every saved segment with whether this user is in it and why",
        permission="users.view",
        response=UserSegments,
        errors=_UUID,
    ),
    Op(
        "POST",
        "/api/projects/{project_id}/users/{user_key}/segments/evaluate",
        "Explain unsaved rules for one user, rule by rule",
        permission="users.view",
        body=Rules,
        response=Evaluation,
        errors=_INVALID,
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/users/{user_key}/segments/history",
        "The user's segment entered/left history",
        permission="users.view",
        query=(limit(),),
        response=UserChanges,
        errors=_UUID,
    ),
    Op(
        "GET",
        "/v1/segments",
        "The client-visible segments an end user is in (for the page's own code)",
        auth=WRITE_KEY,
        query=(
            Param("env", "the environment", default="production"),
            Param("user_id", "the identified user id"),
            Param("anonymous_id", "the anonymous id (when there is no user_id)"),
        ),
        response=ClientSegments,
        errors={401: "unknown_key: no valid write key", 404: "unknown_environment (`env`)"},
    ),
]
