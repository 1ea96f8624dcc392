"""The end-user pages: the user list (columns, sorting, search, segment and rule filters, CSV export) and one
user's page (attributes with their sources, histories, segments, sessions with their streams, recordings,
export and erase).

Both read through the same code as `/api/projects/{id}/users…` (web/users_api.py), so the list page and
the API sort, filter and page identically; erasing goes through the API from static/app/users.js.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from usertrail.collect.wire import ANALYTICS_PROPERTIES
from usertrail.profiles.standard import (
    AVERAGE_SESSION_DURATION,
    AVERAGE_TIME_BETWEEN_SESSIONS,
    BROWSER_NAME,
    COUNTRY,
    FIRST_SEEN,
    LAST_SEEN,
    STANDARD_ATTRIBUTES,
    TOTAL_SESSION_DURATION,
    TOTAL_SESSIONS,
)
from usertrail.segments.membership import catalog_of
from usertrail.store.users import UserPage, profile_json, session_json
from usertrail.web.errors import ApiError
from usertrail.web.pages.layout import clock, context, page_principal, refused, render, utc
from usertrail.web.paths import USER_PAGE
from usertrail.web.users_api import _require_uuid, list_page, list_query, recordings_of

PAGE_SIZE = 50
DEFAULT_COLUMNS = (LAST_SEEN, FIRST_SEEN, TOTAL_SESSIONS, TOTAL_SESSION_DURATION, COUNTRY, BROWSER_NAME, "name", "role")
DURATIONS = {AVERAGE_SESSION_DURATION, TOTAL_SESSION_DURATION, AVERAGE_TIME_BETWEEN_SESSIONS}
TIMES = {FIRST_SEEN, LAST_SEEN}
# The query parameters the list keeps from one view to the next (sorting and paging are set per link).
KEPT = ("q", "segment", "rules", "column")


def user_href(project_id: int, user_key: str) -> str:
    """The user page's path; keys hold `:` and may hold `/`, so the whole key is escaped."""
    return f"/app/projects/{project_id}/users/{quote(user_key, safe='')}"


def show(name: str, kind: str, type_: str, value: object) -> str:
    """An attribute value as the pages print it: times in UTC, durations as h:mm:ss, booleans as yes/no."""
    if value is None:
        return ""
    if kind == "standard" and name in TIMES:
        return utc(int(value))  # type: ignore[call-overload]
    if kind == "standard" and name in DURATIONS:
        return clock(int(value))  # type: ignore[call-overload]
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _query_string(request: Request, **changes: object) -> str:
    """The current list's parameters with `changes` (None removes one); paging always starts over."""
    pairs = [(k, v) for k in KEPT if k not in changes for v in request.query_params.getlist(k) if v]
    for name in ("sort", "order"):
        if name not in changes and request.query_params.get(name):
            pairs.append((name, request.query_params[name]))
    for name, value in changes.items():
        if value is not None:
            pairs.append((name, str(value)))
    return urlencode(pairs)


async def users_page(request: Request) -> Response:
    """The end users, in pages of 50, with chosen columns, sorting, search and segment/rule filters."""
    principal = page_principal(request, "users.view")
    if isinstance(principal, Response):
        return principal
    project_id = principal.project_id
    try:
        _require_uuid(request, project_id)
    except ApiError as exc:
        return refused(request, exc)
    segments = await asyncio.to_thread(request.app.state.segments.list, project_id)
    params = request.query_params
    error, page, query = None, None, None
    try:
        query = list_query(request, project_id)
        if not query.columns:
            query = replace(query, columns=list(DEFAULT_COLUMNS))
        page = await asyncio.to_thread(list_page, request, project_id, query, PAGE_SIZE)
    except ApiError as exc:
        error = exc
    if query is not None:
        catalog = query.catalog
    else:
        with request.app.state.users.engine.connect() as conn:
            catalog = catalog_of(conn, project_id)
    registry = {a["name"]: a for a in await asyncio.to_thread(request.app.state.attributes.registry, project_id)}
    chosen = query.columns if query else list(DEFAULT_COLUMNS)
    sort = params.get("sort", LAST_SEEN)
    order = params.get("order", "desc")
    columns = []
    for name in chosen:
        attribute = catalog.resolve(name)
        if attribute is None:
            continue
        descending_next = not (sort == name and order == "desc")
        columns.append(
            {
                "name": name,
                "kind": attribute.kind,
                "sorted": ("descending" if order == "desc" else "ascending") if sort == name else None,
                "href": "?" + _query_string(request, sort=name, order="desc" if descending_next else "asc"),
            }
        )
    rows = _rows(project_id, page, catalog, chosen) if page else []
    kept = _query_string(request)
    return render(
        request,
        "users.html",
        context(request, project_id, "users"),
        status=error.status if error else 200,
        error=error,
        form={"q": params.get("q", ""), "segment": params.get("segment", ""), "rules": params.get("rules", "")},
        segments=segments,
        columns=columns,
        choices=_choices(catalog, registry, chosen),
        rows=rows,
        total=page.total if page else 0,
        all_users=await asyncio.to_thread(_project_total, request, project_id),
        filtered=bool(params.get("q") or params.get("segment") or params.get("rules", "").strip()),
        next_href=f"?{_query_string(request, after=page.next.encode())}" if page and page.next else None,
        first_href=f"?{kept}" if params.get("after") else None,
        export_href=f"/api/projects/{project_id}/users.csv?{kept}",
        sort=sort,
        order=order,
        erased=bool(params.get("erased")),
    )


def _project_total(request: Request, project_id: int) -> int:
    return request.app.state.users.list(project_id, LAST_SEEN, True, 1, 0, []).total


def _rows(project_id: int, page: UserPage, catalog, chosen: list[str]) -> list[dict]:
    out = []
    for row, values in zip(page.rows, page.values, strict=True):
        cells = []
        for name in chosen:
            attribute = catalog.resolve(name)
            if attribute is not None:
                cells.append(show(name, attribute.kind, attribute.type, values[name]))
        out.append({"user_key": row.user_key, "href": user_href(project_id, row.user_key), "cells": cells})
    return out


def _choices(catalog, registry: dict, chosen: list[str]) -> list[dict]:
    """The column picker's groups: every attribute a column can show, ticked when shown."""
    groups = [
        ("Standard attributes", list(STANDARD_ATTRIBUTES)),
        ("Analytics properties", list(ANALYTICS_PROPERTIES)),
        ("Custom attributes", sorted(catalog.custom)),
    ]
    return [
        {
            "label": label,
            "items": [
                {
                    "name": n,
                    "checked": n in chosen,
                    "hint": ", ".join(registry[n]["integrations"]) if n in registry else "",
                }
                for n in names
            ],
        }
        for label, names in groups
        if names
    ]


def _source(item: dict) -> tuple[str, str]:
    """(kind, integration) of an attribute's source, for the user page's Source column."""
    if item["source"] == "sessions":
        return "standard", "sessions"
    if item["source"] == "analytics_properties":
        return "analytics", "events"
    return "custom", item["source"]


async def user_page(request: Request) -> Response:
    """One end user: attributes with source and last update, histories, segments, sessions, recordings."""
    principal = page_principal(request, "users.view")
    if isinstance(principal, Response):
        return principal
    project_id = principal.project_id
    try:
        _require_uuid(request, project_id)
    except ApiError as exc:
        return refused(request, exc)
    users = request.app.state.users
    key = request.path_params["user_key"]
    owner, members = await asyncio.to_thread(users.owner, project_id, key)
    if owner != key:
        return RedirectResponse(user_href(project_id, owner), status_code=303)
    row = await asyncio.to_thread(users.profile, project_id, owner)
    if row is None:
        has_sessions = bool(await asyncio.to_thread(users.sessions, project_id, owner, 1))
        reason = "the user's first session has not closed yet" if has_sessions else "no such end user"
        return refused(request, ApiError(404, "not_found", reason, "user_key"))
    attributes_store = request.app.state.attributes
    custom = await asyncio.to_thread(attributes_store.values, project_id, members)
    profile = profile_json(row, custom)
    attributes = [
        {"name": name, "value": show(name, "standard", "", item["value"]), "kind": "standard",
         "source": "sessions", "updated_at": item["updated_at"]}
        for name, item in profile["attributes"].items()
    ]  # fmt: skip
    for name, item in sorted(profile["custom_attributes"].items()):
        kind, source = _source(item)
        attributes.append(
            {"name": name, "value": show(name, kind, "", item["value"]), "kind": kind, "source": source,
             "updated_at": item["updated_at"]}
        )  # fmt: skip
    history = await asyncio.to_thread(attributes_store.history, project_id, members, None, 100)
    segment_store = request.app.state.segments
    names = {s.id: s.name for s in await asyncio.to_thread(segment_store.list, project_id)}
    changes = await asyncio.to_thread(segment_store.changes, project_id, user_keys=[owner], limit=100)
    sessions = [session_json(s) for s in await asyncio.to_thread(users.sessions, project_id, owner, 50)]
    recordings = await asyncio.to_thread(recordings_of, request, project_id, members, 20)
    api = f"/api/projects/{project_id}/users/{quote(owner, safe='')}"
    return render(
        request,
        "user.html",
        context(request, project_id, "users"),
        user_key=owner,
        identities=members,
        attributes=attributes,
        history=history,
        segment_changes=[
            {"segment": names.get(c.segment_id, c.segment_id), "change": c.change, "ts": c.ts} for c in changes
        ],
        sessions=sessions,
        recordings=recordings,
        api=api,
        list_href=f"/app/projects/{project_id}/users",
        can_play=principal.can("playback.view"),
    )


routes = [
    Route("/app/projects/{project_id}/users", users_page, methods=["GET"]),
    Route(USER_PAGE, user_page, methods=["GET"]),
]
