"""The end-user API: the user list, End User Objects, sessions and their event streams, export and erase.

User-level data exists only for projects with UUID settings: while every environment's provider
is `none`, these routes answer 409 `uuid_settings_required`.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from usertrail.playback.store import Filters, recording_json
from usertrail.profiles.custom import CAP
from usertrail.segments.membership import catalog_of
from usertrail.segments.model import Catalog, InvalidRule, parse
from usertrail.segments.sql import Compiler
from usertrail.store.attributes import WriteReport
from usertrail.store.database import write_transaction
from usertrail.store.users import (
    AuditQuery,
    BadQuery,
    Filter,
    UserPage,
    UserStore,
    parse_cursor,
    parse_filter,
    profile_json,
    session_json,
)
from usertrail.web.access_api import _time_param
from usertrail.web.admin_api import _json_body, _limit, event_json
from usertrail.web.auth import require
from usertrail.web.errors import ApiError
from usertrail.web.paths import USERS


def _users(request: Request) -> UserStore:
    return request.app.state.users


def _require_uuid(request: Request, project_id: int) -> None:
    environments = request.app.state.collector.environments(project_id)
    if all(s.uuid.provider == "none" for s in environments.values()):
        raise ApiError(
            409,
            "uuid_settings_required",
            "end users and their attributes exist only with UUID settings: set an identification provider "
            'other than `none` (PATCH …/environments/{env} {"uuid": {"provider": …}})',
            "uuid.provider",
        )


def _project(request: Request) -> int:
    project_id = require(request, "users.view").project_id
    _require_uuid(request, project_id)
    return project_id


def _owner(request: Request, project_id: int) -> tuple[str, list[str]]:
    return _users(request).owner(project_id, request.path_params["user_key"])


def _int_param(request: Request, name: str, default: int | None = None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ApiError(400, "invalid_request", f"{name} must be a whole number", name) from None


@dataclass(frozen=True)
class ListQuery:
    """The user list's query parameters, checked: what `UserStore.list` needs besides the page bounds."""

    sort: str
    descending: bool
    filters: list[Filter]
    conditions: list
    search: str | None
    catalog: Catalog
    columns: list[str]


def list_query(request: Request, project_id: int) -> ListQuery:
    """`sort`, `order`, `filter`, `segment`, `rules`, `q` and `column` of a user-list request; ApiError 400
    (or 404 for an unknown saved segment) naming the parameter that is wrong."""
    params = request.query_params
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ApiError(400, "invalid_request", "order must be asc or desc", "order")
    with _users(request).engine.connect() as conn:
        catalog = catalog_of(conn, project_id)
    try:
        filters = [parse_filter(f) for f in params.getlist("filter")]
    except BadQuery as exc:
        raise ApiError(400, "invalid_query", str(exc), exc.path) from None
    return ListQuery(
        sort=params.get("sort", "Last seen"),
        descending=order == "desc",
        filters=filters,
        conditions=_segment_conditions(request, project_id, catalog),
        search=params.get("q") or None,
        catalog=catalog,
        columns=params.getlist("column"),
    )


def list_page(request: Request, project_id: int, query: ListQuery, limit: int) -> UserPage:
    """One page of the list for `query`, from `?offset=` and `?after=` (the `next` cursor of the page before)."""
    offset = _int_param(request, "offset", 0)
    if offset < 0:
        raise ApiError(400, "invalid_request", "offset must be ≥ 0", "offset")
    try:
        after = parse_cursor(request.query_params["after"]) if request.query_params.get("after") else None
        return _users(request).list(
            project_id,
            query.sort,
            query.descending,
            limit,
            offset,
            query.filters,
            query.conditions,
            query.search,
            catalog=query.catalog,
            columns=query.columns,
            after=after,
        )
    except BadQuery as exc:
        raise ApiError(400, "invalid_query", str(exc), exc.path) from None


async def list_users(request: Request) -> Response:
    """`?sort=<attribute>&order=asc|desc&limit=&offset=&after=&filter=<attribute>:<op>:<value>` (repeatable),
    `&segment=<saved segment id>`, `&rules=<segment rules as JSON>` (docs/segments.md), `&q=<text>`,
    `&column=<attribute>` (repeatable: its value in each user's `columns`)."""
    project_id = _project(request)
    query = list_query(request, project_id)
    page = await asyncio.to_thread(list_page, request, project_id, query, _limit(request, 50, 1000))
    users = []
    for row, values in zip(page.rows, page.values, strict=True):
        item = profile_json(row)
        if query.columns:
            item["columns"] = values
        users.append(item)
    return JSONResponse(
        {
            "total": page.total,
            "offset": _int_param(request, "offset", 0),
            "next": page.next.encode() if page.next else None,
            "users": users,
        }
    )


CSV_BATCH = 2_000


async def export_list(request: Request) -> Response:
    """The filtered, sorted user list as CSV, streamed: `users.csv` takes the list's parameters; the columns
    are `user_key` and the `column`s asked for, by default every standard attribute, analytics property and
    custom attribute. Audited (`end_users.list_export`)."""
    grant = require(request, "users.export")
    _require_uuid(request, grant.project_id)
    query = list_query(request, grant.project_id)
    if not query.columns:
        query = replace(query, columns=query.catalog.names())
    # Checks the names (a 400 before the stream starts) and reads the first batch.
    first = await asyncio.to_thread(list_page, request, grant.project_id, query, CSV_BATCH)
    details = {"total": first.total, "sort": query.sort, "columns": query.columns}
    request.app.state.audit.append(grant.project_id, grant.actor, "end_users.list_export", "users.csv", details)
    store = _users(request)

    def lines() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["user_key", *query.columns])
        page = first
        while True:
            for row, values in zip(page.rows, page.values, strict=True):
                writer.writerow([row.user_key, *(_csv_cell(values[name]) for name in query.columns)])
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            if page.next is None:
                return
            page = store.list(
                grant.project_id,
                query.sort,
                query.descending,
                CSV_BATCH,
                0,
                query.filters,
                query.conditions,
                query.search,
                catalog=query.catalog,
                columns=query.columns,
                after=page.next,
                count=False,
            )

    return StreamingResponse(
        lines(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="users-{grant.project_id}.csv"'},
    )


def _csv_cell(value: object) -> object:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return "" if value is None else value


def _segment_conditions(request: Request, project_id: int, catalog: Catalog) -> list:
    """WHERE clauses for `?segment=` and `?rules=`, through the segment engine."""
    trees = []
    engine = _users(request).engine
    params = request.query_params
    if params.get("segment"):
        row = request.app.state.segments.get(project_id, params["segment"])
        if row is None:
            raise ApiError(404, "not_found", "no such segment", "segment")
        trees.append(parse(msgspec.json.decode(row.rules), catalog, "$.rules"))
    if params.get("rules", "").strip():
        try:
            trees.append(parse(msgspec.json.decode(params["rules"]), catalog, "rules"))
        except msgspec.DecodeError as exc:
            raise ApiError(400, "invalid_request", f"rules is not JSON: {exc}", "rules") from None
        except InvalidRule as exc:
            raise ApiError(400, "invalid_segment", exc.reason, exc.path, suggestions=exc.suggestions) from None
    compiler = Compiler(project_id, int(time.time() * 1000), engine.dialect.name)
    return [compiler.condition(t) for t in trees]


async def get_user(request: Request) -> Response:
    project_id = _project(request)
    owner, members = _owner(request, project_id)
    row = _users(request).profile(project_id, owner)
    if row is None:
        has_sessions = bool(_users(request).sessions(project_id, owner, limit=1))
        reason = (
            "the user's first session has not closed yet: attributes exist only after it"
            if has_sessions
            else "no such end user"
        )
        raise ApiError(404, "not_found", reason, "user_key")
    body = profile_json(row, request.app.state.attributes.values(project_id, members))
    body["identities"] = members
    return JSONResponse(body)


async def user_sessions(request: Request) -> Response:
    project_id = _project(request)
    owner, _ = _owner(request, project_id)
    rows = _users(request).sessions(project_id, owner, _limit(request, 100, 1000), _int_param(request, "before"))
    return JSONResponse({"user_key": owner, "sessions": [session_json(r) for r in rows]})


async def session_stream(request: Request) -> Response:
    """The ordered events of one session, live or ended."""
    project_id = _project(request)
    owner, members = _owner(request, project_id)
    start = request.path_params["start_ts"]
    session = _users(request).session(project_id, owner, start)
    if session is None:
        raise ApiError(404, "not_found", "no such session", "start_ts")
    end = None if session.status == "open" else session.end_ts
    rows = _users(request).events_between(project_id, members, start, end, _limit(request, 1000, 10_000))
    return JSONResponse({"session": session_json(session), "events": [event_json(r) for r in rows]})


def recordings_of(request: Request, project_id: int, keys: list[str], limit: int = 100) -> list[dict]:
    """Session recordings of every key an end user holds (recordings keep the key their page had), newest first."""
    store = request.app.state.playback.store
    rows = [r for key in keys for r in store.list(project_id, Filters(user_key=key, limit=limit))]
    rows.sort(key=lambda r: (r.started_at, r.recording_id), reverse=True)
    return [recording_json(r) for r in rows[:limit]]


async def user_recordings(request: Request) -> Response:
    """The end user's session recordings (metadata; watching one needs playback.view), newest first."""
    project_id = _project(request)
    owner, members = _owner(request, project_id)
    items = await asyncio.to_thread(recordings_of, request, project_id, members, _limit(request, 100, 1000))
    return JSONResponse({"user_key": owner, "recordings": items})


async def user_events(request: Request) -> Response:
    """All of one end user's events (their own and their stitched anonymous ones) in time order."""
    project_id = _project(request)
    _, members = _owner(request, project_id)
    since = _int_param(request, "since", -(2**62))
    until = _int_param(request, "until")
    rows = _users(request).events_between(
        project_id, members, since, None if until is None else until - 1, _limit(request, 1000, 10_000)
    )
    return JSONResponse({"events": [event_json(r) for r in rows]})


async def export_user(request: Request) -> Response:
    """Everything stored about one end user, as one JSON document (GDPR access); audited."""
    grant = require(request, "users.export")
    _require_uuid(request, grant.project_id)
    store = _users(request)
    owner, members = _owner(request, grant.project_id)
    profile = store.profile(grant.project_id, owner)
    rows = store.events_between(grant.project_id, members, -(2**62), None, 10**9)
    sessions = store.sessions(grant.project_id, owner, limit=10**9)
    # What was recorded, and when; the replayable content is a recording's own export (playback.export).
    recordings = recordings_of(request, grant.project_id, members, limit=10**6)
    if profile is None and not rows and not sessions and not recordings:
        raise ApiError(404, "not_found", "no such end user", "user_key")
    request.app.state.audit.append(
        grant.project_id, grant.actor, "end_user.export", owner, {"keys": members, "events": len(rows)}
    )
    document = {
        "user_key": owner,
        "identities": members,
        "profile": profile_json(profile, request.app.state.attributes.values(grant.project_id, members))
        if profile
        else None,
        "custom_attributes": request.app.state.attributes.values(grant.project_id, members),
        "attribute_history": request.app.state.attributes.history(grant.project_id, members, limit=10**9),
        "sessions": [session_json(s) for s in sessions],
        "events": [event_json(r) for r in rows],
        "recordings": recordings,
    }
    return Response(
        msgspec.json.encode(document),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="end-user-{grant.project_id}.json"'},
    )


async def erase_user(request: Request) -> Response:
    """Delete an end user and everything derived from them (GDPR erasure); audited."""
    grant = require(request, "users.erase")
    _require_uuid(request, grant.project_id)
    owner, members = _owner(request, grant.project_id)
    counts = _users(request).delete(grant.project_id, owner)
    counts["recordings"] = request.app.state.playback.store.delete_for_users(grant.project_id, [owner, *members])
    if not any(counts.values()):
        raise ApiError(404, "not_found", "no such end user", "user_key")
    request.app.state.audit.append(grant.project_id, grant.actor, "end_user.erase", owner, {"keys": members, **counts})
    return JSONResponse({"erased": owner, "keys": members, **counts})


async def attribute_registry(request: Request) -> Response:
    """The project's custom attributes, with the cap they count against."""
    project_id = require(request, "users.view").project_id
    registry = request.app.state.attributes.registry(project_id)
    return JSONResponse({"cap": CAP, "count": len(registry), "attributes": registry})


async def update_attributes(request: Request) -> Response:
    """Set custom attributes of one end user (`{name: value}`; null clears), as source `admin_api`.

    The end user need not exist yet: values are kept and apply when they first appear.
    """
    grant = require(request, "users.edit")
    _require_uuid(request, grant.project_id)
    body = await _json_body(request)
    owner, _ = _owner(request, grant.project_id)
    report = await asyncio.to_thread(_write_logged, request.app.state, grant, owner, body)
    status = 200 if not report.errors else 400
    return JSONResponse(report.as_json(), status_code=status)


def _write_logged(state, grant, owner: str, values: dict) -> WriteReport:
    """Write an admin's values and their integration-log entry (integration `admin_api`) in one transaction."""
    with write_transaction(state.attributes.engine) as conn:
        report = state.attributes.write(grant.project_id, "admin_api", [(owner, values)], conn=conn)
        state.integration_log.append(
            grant.project_id,
            "admin_api",
            "update",
            records=1,
            applied=1 if report.applied else 0,
            errors=[e.as_json() for e in report.errors],
            details={
                "actor": grant.actor,
                "user_key": owner,
                "values_applied": report.applied,
                "values_changed": report.changed,
            },
            conn=conn,
        )
    return report


async def attribute_history(request: Request) -> Response:
    project_id = _project(request)
    _, members = _owner(request, project_id)
    items = request.app.state.attributes.history(project_id, members, request.query_params.get("name"), _limit(request))
    return JSONResponse({"history": items})


def _audit_query(request: Request) -> AuditQuery:
    params = request.query_params
    return AuditQuery(
        actor=params.get("actor") or None,
        action=params.get("action") or None,
        target=params.get("target") or None,
        since=_time_param(request, "since"),
        until=_time_param(request, "until"),
    )


async def audit_entries(request: Request) -> Response:
    """`?actor=&action=&target=&since=&until=&limit=&before=<entry id>`, newest first."""
    project_id = require(request, "audit.view").project_id
    query = _audit_query(request)
    entries = await asyncio.to_thread(
        request.app.state.audit.list, project_id, query, _limit(request), request.query_params.get("before") or None
    )
    return JSONResponse({"entries": entries, "next_before": entries[-1]["id"] if entries else None})


async def export_audit(request: Request) -> Response:
    """Every matching entry, oldest first, as CSV."""
    project_id = require(request, "audit.view").project_id
    query = _audit_query(request)
    audit = request.app.state.audit
    chunks = audit.export_csv(project_id, query)

    def next_chunk() -> str | None:
        return next(chunks, None)

    async def body():
        while (chunk := await asyncio.to_thread(next_chunk)) is not None:
            yield chunk

    return StreamingResponse(
        body(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="audit-log-{project_id}.csv"'},
    )


routes = [
    Route("/api/projects/{project_id}/users", list_users, methods=["GET"]),
    Route("/api/projects/{project_id}/users.csv", export_list, methods=["GET"]),
    Route(USERS, get_user, methods=["GET"]),
    Route(USERS, erase_user, methods=["DELETE"]),
    Route(USERS + "/events", user_events, methods=["GET"]),
    Route(USERS + "/export", export_user, methods=["GET"]),
    Route(USERS + "/sessions", user_sessions, methods=["GET"]),
    Route(USERS + "/recordings", user_recordings, methods=["GET"]),
    Route(USERS + "/sessions/{start_ts:int}/events", session_stream, methods=["GET"]),
    Route("/api/projects/{project_id}/audit-log", audit_entries, methods=["GET"]),
    Route("/api/projects/{project_id}/audit-log.csv", export_audit, methods=["GET"]),
    Route("/api/projects/{project_id}/attributes", attribute_registry, methods=["GET"]),
    Route(USERS + "/attributes", update_attributes, methods=["PATCH"]),
    Route(USERS + "/attributes/history", attribute_history, methods=["GET"]),
]
