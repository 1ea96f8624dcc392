"""The admin API: project settings, keys, drop counts, rejected events and event reads.

Every route takes the project id in the path and the permission it names (web/auth.py): an admin
token of that project, or a signed-in account whose role there grants the permission.
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from usertrail.access.permissions import ADMIN as ADMIN_ROLE
from usertrail.access.principal import Principal
from usertrail.collect.service import Collector
from usertrail.collect.traffic import InvalidPattern, validate_ip_pattern
from usertrail.enrich import idp
from usertrail.playback import settings as playback_settings
from usertrail.project_settings import EnvironmentSettings, merge_settings
from usertrail.store.events import EventStore
from usertrail.store.projects import UnknownProject
from usertrail.web.auth import require
from usertrail.web.errors import ApiError
from usertrail.web.errors import json_object as _json_body
from usertrail.web.snippet import snippet_tag


def _collector(request: Request) -> Collector:
    return request.app.state.collector


def require_admin(request: Request) -> int:
    """The path's project id, once the caller is shown to have the role admin there."""
    return require_admin_grant(request).project_id


def require_admin_grant(request: Request) -> Principal:
    """The caller with the role admin on the path's project (an admin token, or an account).

    For routes not yet mapped to one permission; mapped routes call `auth.require(request, permission)`.
    """
    principal = require(request, "project.view")
    if principal.role != ADMIN_ROLE:
        raise ApiError(403, "permission_denied", "this action needs the role admin", "permission", permission="admin")
    return principal


def _settings_json(settings: EnvironmentSettings) -> dict:
    return msgspec.to_builtins(settings)


async def get_project(request: Request) -> Response:
    project_id = require(request, "project.view").project_id
    collector = _collector(request)
    try:
        project = collector.projects.get(project_id)
    except UnknownProject:
        raise ApiError(404, "not_found", "no such project", "project_id") from None
    envs = collector.projects.environments(project_id)
    base = str(request.base_url).rstrip("/")
    write_key = next(
        (k["key"] for k in collector.projects.keys(project_id) if k["kind"] == "write" and k["expires_at"] is None),
        None,
    )
    return JSONResponse(
        {
            "id": project.id,
            "name": project.name,
            "created_at": project.created_at,
            "walkme_account_id": project.walkme_account_id,
            "environments": {name: _settings_json(s) for name, s in envs.items()},
            "keys": collector.projects.keys(project_id),
            "snippets": {name: snippet_tag(base, write_key or "", name) for name in envs},
        }
    )


async def patch_environment(request: Request) -> Response:
    """Change part of one environment's settings; unknown keys and wrong types are refused by path."""
    project_id = require(request, "settings.manage").project_id
    collector = _collector(request)
    name = request.path_params["env"]
    envs = collector.projects.environments(project_id)
    patch = await _json_body(request)
    if name not in envs:
        if request.method != "PUT":
            raise ApiError(404, "unknown_environment", f"no environment {name!r}; PUT creates one", "env")
        current = EnvironmentSettings(walkme_env=max((s.walkme_env for s in envs.values()), default=-1) + 1)
    else:
        current = envs[name]
    try:
        updated = merge_settings(current, patch)
    except msgspec.ValidationError as exc:
        reason, _, path = str(exc).partition(" - at `")
        raise ApiError(400, "invalid_settings", reason, path.rstrip("`") or "$") from None
    for i, pattern in enumerate(updated.traffic.excluded_ips):
        try:
            validate_ip_pattern(pattern)
        except InvalidPattern as exc:
            raise ApiError(400, "invalid_settings", str(exc), f"$.traffic.excluded_ips[{i}]") from None
    try:
        idp.check_settings(updated.uuid)
    except idp.IdpSettingsError as exc:
        raise ApiError(400, "invalid_settings", exc.reason, exc.path) from None
    try:
        playback_settings.validate(updated)
    except playback_settings.InvalidPlaybackSettings as exc:
        raise ApiError(400, "invalid_settings", exc.reason, exc.path) from None
    clash = [n for n, s in envs.items() if n != name and s.walkme_env == updated.walkme_env]
    if clash:
        raise ApiError(
            400,
            "invalid_settings",
            f"wm.env {updated.walkme_env} is already used by {clash[0]!r}",
            "$.walkme_env",
        )
    collector.projects.save_environment(project_id, name, updated)
    collector.forget_cached_settings()
    return JSONResponse({"environment": name, "settings": _settings_json(updated)})


async def rotate_key(request: Request) -> Response:
    project_id = require(request, "settings.manage").project_id
    body = await _json_body(request)
    kind = body.get("kind")
    grace = body.get("grace_seconds", 86_400 if kind == "write" else 0)
    if kind not in ("write", "admin"):
        raise ApiError(400, "invalid_request", "kind must be `write` or `admin`", "$.kind")
    if not isinstance(grace, int) or isinstance(grace, bool) or grace < 0:
        raise ApiError(400, "invalid_request", "grace_seconds must be a whole number ≥ 0", "$.grace_seconds")
    collector = _collector(request)
    token = collector.projects.rotate(project_id, kind, grace)
    collector.forget_cached_settings()
    return JSONResponse({"kind": kind, "key": token, "previous_keys_expire_in_seconds": grace}, status_code=201)


async def drop_counts(request: Request) -> Response:
    """Why data is missing: dropped events by reason (and by day and environment)."""
    project_id = require(request, "project.view").project_id
    store: EventStore = _collector(request).events
    rows = store.drop_counts(project_id, request.query_params.get("since"))
    totals: dict[str, int] = {}
    for r in rows:
        totals[r.reason] = totals.get(r.reason, 0) + r.count
    pending = store.rejected_count(project_id, "pending")
    return JSONResponse(
        {
            "by_reason": totals,
            "rejected_pending": pending,
            "rows": [{"day": r.day, "env": r.env, "reason": r.reason, "count": r.count} for r in rows],
        }
    )


def _limit(request: Request, default: int = 100, ceiling: int = 1000) -> int:
    raw = request.query_params.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= ceiling:
        raise ApiError(400, "invalid_request", f"limit must be a whole number from 1 to {ceiling}", "limit")
    return int(raw)


async def list_rejected(request: Request) -> Response:
    project_id = require(request, "settings.manage").project_id
    status = request.query_params.get("status", "pending")
    if status not in ("pending", "reprocessed", "discarded", "all"):
        raise ApiError(400, "invalid_request", "status must be pending, reprocessed, discarded or all", "status")
    rows = _collector(request).events.rejected(
        project_id, None if status == "all" else status, request.query_params.get("after"), _limit(request)
    )
    items = [
        {
            "id": r.id,
            "received_at": r.received_at,
            "env": r.env,
            "source": r.source,
            "reason": r.reason,
            "message": r.message,
            "path": r.path,
            "batch_index": r.batch_index,
            "payload": r.payload,
            "status": r.status,
            "resolved_at": r.resolved_at,
        }
        for r in rows
    ]
    return JSONResponse({"items": items, "next_after": items[-1]["id"] if items else None})


def _ids(body: dict) -> list[str]:
    ids = body.get("ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise ApiError(400, "invalid_request", "ids must be a non-empty list of rejected-event ids", "$.ids")
    return ids


async def reprocess_rejected(request: Request) -> Response:
    """Re-run rejected events through the pipeline, optionally with corrected payloads."""
    project_id = require(request, "settings.manage").project_id
    body = await _json_body(request)
    payloads = body.get("payloads") or {}
    if not isinstance(payloads, dict) or not all(isinstance(v, str) for v in payloads.values()):
        raise ApiError(400, "invalid_request", "payloads maps an id to the corrected event text", "$.payloads")
    ids = _ids(body)
    results = _collector(request).reprocess(project_id, ids, payloads)
    found = {r["id"] for r in results}
    results += [{"id": i, "status": "not_found"} for i in ids if i not in found]
    return JSONResponse({"results": results})


async def discard_rejected(request: Request) -> Response:
    project_id = require(request, "settings.manage").project_id
    ids = _ids(await _json_body(request))
    _collector(request).events.resolve_rejected(project_id, ids, "discarded")
    return JSONResponse({"discarded": len(ids)})


def event_json(row) -> dict:
    # `traits` is the rebuild's own summary of the other columns (sessions/traits.py), not part of the event.
    item = {k: v for k, v in row._mapping.items() if k not in ("payload", "project_id", "traits")}
    item["payload"] = msgspec.json.decode(row.payload)
    return item


async def stats(request: Request) -> Response:
    project_id = require(request, "project.view").project_id
    events = _collector(request).events
    backlog = msgspec.to_builtins(events.backlog(project_id))
    return JSONResponse({"events": events.count(project_id), "ingest_backlog": backlog})


routes = [
    Route("/api/projects/{project_id}", get_project, methods=["GET"]),
    Route("/api/projects/{project_id}/environments/{env}", patch_environment, methods=["PATCH", "PUT"]),
    Route("/api/projects/{project_id}/keys/rotate", rotate_key, methods=["POST"]),
    Route("/api/projects/{project_id}/drops", drop_counts, methods=["GET"]),
    Route("/api/projects/{project_id}/rejected", list_rejected, methods=["GET"]),
    Route("/api/projects/{project_id}/rejected/reprocess", reprocess_rejected, methods=["POST"]),
    Route("/api/projects/{project_id}/rejected/discard", discard_rejected, methods=["POST"]),
    Route("/api/projects/{project_id}/stats", stats, methods=["GET"]),
]
