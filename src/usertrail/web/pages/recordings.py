"""The recordings pages: the list with its filters, the player, and the player's sandboxed replay frame."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from usertrail.playback import quota
from usertrail.playback.replay import FRAME_CSP, walkme_markers
from usertrail.playback.store import Filters, RecordingGone, recording_json
from usertrail.segments.model import WALKME_EVENT_TYPES as WALKME_TYPES
from usertrail.store.segments import SegmentStore
from usertrail.web.errors import ApiError
from usertrail.web.pages.layout import context, headers, page_principal, refused, render, templates

PAGE_SIZE = 50


def _form_time(value: str, name: str, end_of_day: bool) -> int | None:
    """A date (`YYYY-MM-DD`, the whole UTC day; `to` includes it) or an ISO date-time, as ms."""
    if not value:
        return None
    try:
        if len(value) == 10:
            day = dt.date.fromisoformat(value)
            moment = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
            if end_of_day:
                moment += dt.timedelta(days=1)
        else:
            moment = dt.datetime.fromisoformat(value)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=dt.UTC)
    except ValueError:
        reason = f"`{name}` must be a date (YYYY-MM-DD) or an ISO date-time"
        raise ApiError(400, "invalid_request", reason, name) from None
    return int(moment.timestamp() * 1000)


def _form_seconds(value: str, name: str) -> int | None:
    if not value:
        return None
    if not value.isdigit() or len(value) > 9:
        raise ApiError(400, "invalid_request", f"`{name}` must be a whole number of seconds", name)
    return int(value) * 1000


FILTER_FIELDS = (
    "user",
    "from",
    "to",
    "url",
    "min_duration",
    "max_duration",
    "segment",
    "walkme_type",
    "walkme_item",
)


def filters_from_form(form: dict[str, str], segment_ids: set[str], before: int | None) -> Filters:
    """The list page's query string as store filters; ApiError 400 naming the field that is wrong."""
    segment = form["segment"] or None
    if segment is not None and segment not in segment_ids:
        raise ApiError(400, "invalid_request", "no such saved segment", "segment")
    return Filters(
        user_key=form["user"] or None,
        since=_form_time(form["from"], "from", end_of_day=False),
        until=_form_time(form["to"], "to", end_of_day=True),
        url=form["url"] or None,
        min_duration_ms=_form_seconds(form["min_duration"], "min_duration"),
        max_duration_ms=_form_seconds(form["max_duration"], "max_duration"),
        before=before,
        segment_id=segment,
        walkme_type=form["walkme_type"] or None,
        walkme_item=form["walkme_item"] or None,
        limit=PAGE_SIZE,
    )


async def recordings_page(request: Request) -> Response:
    """Recordings, newest first, with filters (end user, dates, URL, duration, segment, WalkMe events)."""
    principal = page_principal(request, "playback.view")
    if isinstance(principal, Response):
        return principal
    project_id = principal.project_id
    q = request.query_params
    form = {name: q.get(name, "").strip() for name in FILTER_FIELDS}
    segments = await asyncio.to_thread(SegmentStore(request.app.state.collector.events.engine).list, project_id)
    error, rows, older = None, [], None
    try:
        before_raw = q.get("before", "")
        if before_raw and not before_raw.isdigit():
            raise ApiError(400, "invalid_request", "`before` must be a whole number (ms)", "before")
        filters = filters_from_form(form, {s.id for s in segments}, int(before_raw) if before_raw else None)
        rows = await asyncio.to_thread(request.app.state.playback.store.list, project_id, filters)
    except ApiError as exc:
        error = exc
    recordings = [recording_json(r) for r in rows]
    usage = await asyncio.to_thread(_usage, request.app.state.playback.store.engine, project_id)
    if len(recordings) == PAGE_SIZE:
        kept = {k: v for k, v in form.items() if v}
        older = f"{request.url.path}?{urlencode({**kept, 'before': recordings[-1]['started_at']})}"
    return render(
        request,
        "recordings.html",
        context(request, project_id, "recordings"),
        status=400 if error else 200,
        form=form,
        segments=segments,
        walkme_types=WALKME_TYPES,
        recordings=recordings,
        older=older,
        error=error,
        usage=usage,
    )


def _usage(engine, project_id: int) -> dict:
    """This period's recorded sessions against the quota, as `GET …/playback/usage` answers it."""
    with engine.connect() as conn:
        return quota.usage(conn, project_id, int(time.time() * 1000)).as_json()


async def player_page(request: Request) -> Response:
    """One recording in the player; its events are fetched by the page (that fetch is the logged view)."""
    principal = page_principal(request, "playback.view")
    if isinstance(principal, Response):
        return principal
    store = request.app.state.playback.store
    try:
        row = await asyncio.to_thread(store.find, principal.project_id, request.path_params["recording_id"])
    except RecordingGone:
        return refused(request, ApiError(404, "not_found", "no such recording (deleted, or expired)", "recording_id"))
    walkme = await asyncio.to_thread(walkme_markers, store.engine, row)
    return render(
        request,
        "player.html",
        context(request, principal.project_id, "recordings"),
        recording=recording_json(row),
        walkme=walkme,
        can_export=principal.can("playback.export"),
        can_delete=principal.can("playback.delete"),
    )


async def replay_frame(request: Request) -> Response:
    """The player's sandboxed frame: the same for every recording, so it holds no data and needs no sign-in."""
    body = templates.get_template("replay_frame.html").render()
    frame_headers = headers(FRAME_CSP)
    frame_headers["Cache-Control"] = "private, max-age=300"
    return HTMLResponse(body, headers=frame_headers)


routes = [
    Route("/app/projects/{project_id}/recordings", recordings_page, methods=["GET"]),
    Route("/app/projects/{project_id}/recordings/{recording_id}", player_page, methods=["GET"]),
    Route("/app/replay-frame", replay_frame, methods=["GET"]),
]
