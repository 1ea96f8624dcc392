"""The segments pages: saved segments with their member counts, and the editor (rule builder with a live
member count, the member list and the entered/left history). Every change goes through the segments API
from /static/app/segments.js; these handlers only read."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from usertrail.store.segments import SegmentStore, segment_json
from usertrail.web.errors import ApiError
from usertrail.web.pages.layout import context, page_principal, refused, render
from usertrail.web.users_api import _require_uuid


def _store(request: Request) -> SegmentStore:
    return request.app.state.segments


def _uuid_problem(request: Request, project_id: int) -> ApiError | None:
    """Segments exist only with UUID settings: the refusal to show instead of the page's data, if any."""
    try:
        _require_uuid(request, project_id)
    except ApiError as exc:
        return exc
    return None


async def segments_page(request: Request) -> Response:
    """Saved segments by name, with their stored member counts and when they were last recomputed."""
    principal = page_principal(request, "users.view")
    if isinstance(principal, Response):
        return principal
    project_id = principal.project_id
    problem = _uuid_problem(request, project_id)
    rows, counts = [], {}
    if problem is None:
        store = _store(request)
        rows, counts = await asyncio.gather(
            asyncio.to_thread(store.list, project_id), asyncio.to_thread(store.member_counts, project_id)
        )
    segments = [segment_json(r, counts.get(r.id, 0)) for r in rows]
    return render(
        request,
        "segments.html",
        context(request, project_id, "segments"),
        segments=segments,
        problem=problem,
    )


def _editor(request: Request, project_id: int, segment: dict | None, can_manage: bool) -> Response:
    return render(
        request,
        "segment.html",
        context(request, project_id, "segments"),
        segment=segment,
        can_manage=can_manage,
        problem=_uuid_problem(request, project_id),
    )


async def new_segment_page(request: Request) -> Response:
    """An empty editor (permission segments.manage); saving creates the segment through the API."""
    principal = page_principal(request, "segments.manage")
    if isinstance(principal, Response):
        return principal
    return _editor(request, principal.project_id, None, can_manage=True)


async def segment_page(request: Request) -> Response:
    """One saved segment: its rules (editable with segments.manage), live count, members and history."""
    principal = page_principal(request, "users.view")
    if isinstance(principal, Response):
        return principal
    store = _store(request)
    row = await asyncio.to_thread(store.get, principal.project_id, request.path_params["segment_id"])
    if row is None:
        return refused(request, ApiError(404, "not_found", "no such segment", "segment_id"))
    counts = await asyncio.to_thread(store.member_counts, principal.project_id, [row.id])
    body = segment_json(row, counts.get(row.id, 0))
    return _editor(request, principal.project_id, body, principal.can("segments.manage"))


routes = [
    Route("/app/projects/{project_id}/segments", segments_page, methods=["GET"]),
    Route("/app/projects/{project_id}/segments/new", new_segment_page, methods=["GET"]),
    Route("/app/projects/{project_id}/segments/{segment_id}", segment_page, methods=["GET"]),
]
