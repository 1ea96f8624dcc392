"""Project members (accounts and their roles) and the playback activity log: list, filter, CSV export, verify."""

from __future__ import annotations

import asyncio
import datetime as dt

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from usertrail.access import activity_log
from usertrail.access.accounts import AccountExists, AccountStore, InvalidAccount, UnknownAccount, one_time_password
from usertrail.web.admin_api import _json_body, _limit
from usertrail.web.auth import require
from usertrail.web.errors import ApiError


def _accounts(request: Request) -> AccountStore:
    return request.app.state.accounts


# --- members ----------------------------------------------------------------------------------


def _member_json(account, role: str) -> dict:
    return {**account.as_json(), "role": role}


async def list_members(request: Request) -> Response:
    project_id = require(request, "accounts.manage").project_id
    members = await asyncio.to_thread(_accounts(request).members, project_id)
    return JSONResponse({"members": [_member_json(a, role) for a, role in members]})


def _target(request: Request) -> str:
    return request.path_params["email"]


async def put_member(request: Request) -> Response:
    """`{"role", "display_name"?}`: give an account a role on the project, creating it if it is new.

    A new account gets a one-time password, shown only in this answer; it must be changed at first sign-in.
    """
    principal = require(request, "accounts.manage")
    body = await _json_body(request)
    role = body.get("role")
    if not isinstance(role, str):
        raise ApiError(400, "invalid_request", "role is required (a string)", "$.role")
    name = body.get("display_name")
    if name is not None and not isinstance(name, str):
        raise ApiError(400, "invalid_request", "display_name must be a string", "$.display_name")
    store = _accounts(request)
    password = None
    try:
        try:
            account = await asyncio.to_thread(store.by_email, _target(request))
        except UnknownAccount:
            password = one_time_password()
            account = await asyncio.to_thread(store.create, _target(request), name, password, True)
        if principal.kind == "account" and principal.actor_id == str(account.id):
            raise ApiError(400, "invalid_request", "you cannot change your own role", "email")
        await asyncio.to_thread(store.set_role, account.id, principal.project_id, role)
    except InvalidAccount as exc:
        raise ApiError(400, "invalid_request", str(exc), "$.role" if exc.path == "role" else exc.path) from None
    except AccountExists as exc:  # created by someone else a moment ago: the next call sets the role
        raise ApiError(409, "conflict", str(exc), "email") from None
    request.app.state.audit.append(
        principal.project_id, principal.actor, "account.role_set", account.email, {"role": role}
    )
    body = _member_json(account, role)
    if password is not None:
        body["one_time_password"] = password
    return JSONResponse(body, status_code=201 if password is not None else 200)


async def remove_member(request: Request) -> Response:
    """Take the account's role on the project away (the account itself stays)."""
    principal = require(request, "accounts.manage")
    store = _accounts(request)
    try:
        account = await asyncio.to_thread(store.by_email, _target(request))
    except (UnknownAccount, InvalidAccount):
        raise ApiError(404, "not_found", "no account with this e-mail address", "email") from None
    if await asyncio.to_thread(store.role_on, account.id, principal.project_id) is None:
        raise ApiError(404, "not_found", "this account has no role on the project", "email")
    if principal.kind == "account" and principal.actor_id == str(account.id):
        raise ApiError(400, "invalid_request", "you cannot remove yourself from the project", "email")
    await asyncio.to_thread(store.set_role, account.id, principal.project_id, None)
    request.app.state.audit.append(principal.project_id, principal.actor, "account.role_removed", account.email, {})
    return JSONResponse({"removed": account.email})


# --- activity log -----------------------------------------------------------------------------


def _time_param(request: Request, name: str) -> int | None:
    """Milliseconds since the epoch, or an ISO 8601 date or date-time (UTC unless an offset is given)."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if raw.lstrip("-").isdigit():
        return int(raw)
    try:
        parsed = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(
            400, "invalid_request", f"{name} must be milliseconds or an ISO 8601 date/date-time", name
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp() * 1000)


def _query(request: Request) -> activity_log.Query:
    params = request.query_params
    action = params.get("action") or None
    if action is not None and action not in activity_log.ACTIONS:
        raise ApiError(400, "invalid_request", f"action must be one of {', '.join(activity_log.ACTIONS)}", "action")
    return activity_log.Query(
        actor=params.get("actor") or None,
        action=action,
        recording_id=params.get("recording") or None,
        since=_time_param(request, "since"),
        until=_time_param(request, "until"),
    )


async def list_activity(request: Request) -> Response:
    """`?actor=&action=&recording=&since=&until=&limit=&before=<seq>`, newest first."""
    project_id = require(request, "audit.view").project_id
    query = _query(request)
    before = request.query_params.get("before")
    if before is not None and not before.isdigit():
        raise ApiError(400, "invalid_request", "before must be an entry's seq", "before")
    entries = await asyncio.to_thread(
        activity_log.list_entries,
        request.app.state.collector.events.engine,
        project_id,
        query,
        _limit(request),
        None if before is None else int(before),
    )
    return JSONResponse({"entries": entries, "next_before": entries[-1]["seq"] if len(entries) else None})


async def export_activity(request: Request) -> Response:
    """Every matching entry, oldest first, as CSV (with each entry's prev_hash and hash)."""
    project_id = require(request, "audit.view").project_id
    query = _query(request)
    engine = request.app.state.collector.events.engine
    return StreamingResponse(
        activity_log.export_csv(engine, project_id, query),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="activity-log-{project_id}.csv"'},
    )


async def verify_activity(request: Request) -> Response:
    """Walk the project's chain: entries checked and the first broken one, if any."""
    project_id = require(request, "audit.view").project_id
    result = await asyncio.to_thread(activity_log.verify, request.app.state.collector.events.engine, project_id)
    return JSONResponse(result.as_json())


routes = [
    Route("/api/projects/{project_id}/members", list_members, methods=["GET"]),
    Route("/api/projects/{project_id}/members/{email}", put_member, methods=["PUT"]),
    Route("/api/projects/{project_id}/members/{email}", remove_member, methods=["DELETE"]),
    Route("/api/projects/{project_id}/activity-log", list_activity, methods=["GET"]),
    Route("/api/projects/{project_id}/activity-log.csv", export_activity, methods=["GET"]),
    Route("/api/projects/{project_id}/activity-log/verify", verify_activity, methods=["GET"]),
]
