"""Retention periods of a project (docs/admin-app.md#retention-api): read with project.view, set with
settings.manage. `null` means the installation's default."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from usertrail.store.retention import MAX_DAYS, Retention, RetentionStore
from usertrail.web.auth import require
from usertrail.web.errors import ApiError, json_object

FIELDS = ("user_days", "playback_days")


def _store(request: Request) -> RetentionStore:
    return RetentionStore(request.app.state.collector.events.engine)


def _answer(request: Request, retention: Retention) -> dict:
    settings = request.app.state.settings
    defaults = (settings.user_retention_days, settings.playback_retention_days)
    effective = retention.effective(*defaults)
    return {
        "user_days": retention.user_days,
        "playback_days": retention.playback_days,
        "defaults": dict(zip(FIELDS, defaults, strict=True)),
        "effective": dict(zip(FIELDS, effective, strict=True)),
    }


async def get_retention(request: Request) -> Response:
    project_id = require(request, "project.view").project_id
    return JSONResponse(_answer(request, await asyncio.to_thread(_store(request).get, project_id)))


async def put_retention(request: Request) -> Response:
    """`{"user_days": n|null, "playback_days": n|null}`; a field left out keeps its value."""
    project_id = require(request, "settings.manage").project_id
    body = await json_object(request)
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise ApiError(400, "invalid_request", f"unknown field; use {' or '.join(FIELDS)}", f"$.{unknown[0]}")
    for name in FIELDS:
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_DAYS):
            reason = f"{name} must be a whole number of days from 1 to {MAX_DAYS}, or null for the default"
            raise ApiError(400, "invalid_request", reason, f"$.{name}")
    store = _store(request)
    current = await asyncio.to_thread(store.get, project_id)
    updated = Retention(
        body.get("user_days", current.user_days),
        body.get("playback_days", current.playback_days),
    )
    await asyncio.to_thread(store.set, project_id, updated)
    return JSONResponse(_answer(request, updated))


routes = [
    Route("/api/projects/{project_id}/retention", get_retention, methods=["GET"]),
    Route("/api/projects/{project_id}/retention", put_retention, methods=["PUT"]),
]
