"""The project: environments and their settings, keys, dropped and rejected events (docs/collection.md)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from usertrail.project_settings import EnvironmentSettings
from usertrail.web.openapi.model import JSONObject, Op, Param, limit

TAG = "Project"


class Project(msgspec.Struct):
    """A project with its environments' settings, key ids and the snippet tag of each environment."""

    id: int
    name: str
    created_at: int
    walkme_account_id: str | None
    environments: dict[str, EnvironmentSettings]
    keys: list[JSONObject]
    snippets: dict[str, str]


class EnvironmentAnswer(msgspec.Struct):
    environment: str
    settings: EnvironmentSettings


class RotateKey(msgspec.Struct):
    """`write` keys stay valid for `grace_seconds` (default a day); admin tokens end at once by default."""

    kind: Literal["write", "admin"]
    grace_seconds: int | None = None


class RotatedKey(msgspec.Struct):
    kind: str
    key: str
    previous_keys_expire_in_seconds: int


class DropRow(msgspec.Struct):
    day: str
    env: str
    reason: str
    count: int


class DropCounts(msgspec.Struct):
    """Dropped events by reason, the rejected events waiting, and the tallies by day and environment."""

    by_reason: dict[str, int]
    rejected_pending: int
    rows: list[DropRow]


class RejectedPage(msgspec.Struct):
    """Rejected events with their raw text, `reason` (the code), `message` (the reason in words, as the
    collection answer gave it), path and status; `next_after` continues the list."""

    items: list[JSONObject]
    next_after: str | None


class RejectedIds(msgspec.Struct):
    ids: list[str]


class Reprocess(msgspec.Struct):
    """Ids to re-run; `payloads` maps an id to corrected event text to use instead of the stored one."""

    ids: list[str]
    payloads: dict[str, str] = {}


class ReprocessResults(msgspec.Struct):
    results: list[JSONObject]


class Discarded(msgspec.Struct):
    discarded: int


class IngestBacklog(msgspec.Struct):
    """Accepted requests not yet indexed into `events` (docs/collection.md#durability-and-indexing)."""

    requests: int
    events: int
    oldest_received_at: int | None


class Stats(msgspec.Struct):
    events: int
    ingest_backlog: IngestBacklog


_ENV_ERRORS = {
    400: "invalid_settings: a setting of the wrong type or unknown (`path` names it, e.g. `$.uuid.provider`)"
}
settings_patch = dict[str, Any]

OPERATIONS = [
    Op(
        "GET",
        "/api/projects/{project_id}",
        "The project, its environments, key ids and snippets",
        permission="project.view",
        response=Project,
    ),
    Op(
        "PATCH",
        "/api/projects/{project_id}/environments/{env}",
        "Change part of an environment's settings (a partial EnvironmentSettings)",
        permission="settings.manage",
        body=settings_patch,
        response=EnvironmentAnswer,
        errors=_ENV_ERRORS,
    ),
    Op(
        "PUT",
        "/api/projects/{project_id}/environments/{env}",
        "Create an environment, or change part of its settings",
        permission="settings.manage",
        body=settings_patch,
        response=EnvironmentAnswer,
        errors=_ENV_ERRORS,
    ),
    Op(
        "POST",
        "/api/projects/{project_id}/keys/rotate",
        "A new write key or admin token (shown once)",
        permission="settings.manage",
        body=RotateKey,
        response=RotatedKey,
        status=201,
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/drops",
        "Why data is missing: dropped events by reason",
        permission="project.view",
        query=(Param("since", "first day, `YYYY-MM-DD`"),),
        response=DropCounts,
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/rejected",
        "Rejected events, oldest first",
        permission="settings.manage",
        query=(
            Param("status", "which", enum=("pending", "reprocessed", "discarded", "all"), default="pending"),
            Param("after", "continue after this id (the previous page's `next_after`)"),
            limit(),
        ),
        response=RejectedPage,
    ),
    Op(
        "POST",
        "/api/projects/{project_id}/rejected/reprocess",
        "Re-run rejected events through the pipeline, optionally corrected",
        permission="settings.manage",
        body=Reprocess,
        response=ReprocessResults,
    ),
    Op(
        "POST",
        "/api/projects/{project_id}/rejected/discard",
        "Mark rejected events as discarded",
        permission="settings.manage",
        body=RejectedIds,
        response=Discarded,
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/stats",
        "How many events the project has, and how many accepted ones wait to be indexed",
        permission="project.view",
        response=Stats,
    ),
]
