"""The server-rendered admin web app (`/app/…`): sign-in, the recordings list and the player.

Pages are Jinja2 templates under `web/templates/` with one base layout; their scripts and styles are
static files (`/static/app/…`), so every page runs under a CSP without inline script or style. Pages
use the sign-in cookie and the same permission check as the API (`web/auth.py`): without a session a
page redirects to `/app/login`, without the permission it answers a 403 page.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from usertrail.access.principal import Principal
from usertrail.playback.replay import FRAME_CSP, PAGE_CSP, walkme_markers
from usertrail.playback.store import Filters, RecordingGone, recording_json
from usertrail.store.segments import SegmentStore
from usertrail.web.auth import authenticate, require
from usertrail.web.errors import ApiError

WEB = Path(__file__).resolve().parent
PAGE_SIZE = 50
# WalkMe's event types (shared/research/walkme-spec.md §9), offered as suggestions in the filter.
WALKME_TYPES = (
    "play",
    "playFailed",
    "click",
    "close",
    "open",
    "complete",
    "goalReach",
    "search",
    "submitted",
    "passed",
    "failed",
    "progressUpdate",
    "custom",
)


def _utc(ms: int | None) -> str:
    if ms is None:
        return ""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _clock(ms: int | None) -> str:
    seconds = max(0, int((ms or 0) // 1000))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(WEB / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
templates.filters["utc"] = _utc
templates.filters["clock"] = _clock


def _headers(csp: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
    }


@dataclass(frozen=True)
class PageContext:
    """What the base layout shows: the account, its projects, the current project and section."""

    account: object | None
    projects: list[dict]
    project: dict | None
    section: str

    def as_dict(self) -> dict:
        nav = []
        if self.project is not None:
            pid = self.project["id"]
            nav.append({"key": "recordings", "label": "Recordings", "href": f"/app/projects/{pid}/recordings"})
        return {
            "account": self.account,
            "projects": self.projects,
            "project": self.project,
            "section": self.section,
            "nav": nav,
        }


def _context(request: Request, project_id: int | None = None, section: str = "") -> PageContext:
    try:
        identity = authenticate(request)
    except ApiError:
        return PageContext(None, [], None, section)
    names = {p.id: p.name for p in request.app.state.collector.projects.list()}
    projects = []
    if identity.account is not None:
        roles = request.app.state.accounts.roles(identity.account.id)
        projects = [{"id": pid, "name": names.get(pid), "role": role} for pid, role in sorted(roles.items())]
    elif identity.grant is not None:
        projects = [{"id": identity.grant.project_id, "name": names.get(identity.grant.project_id), "role": "admin"}]
    project = None
    if project_id is not None and project_id in names:
        project = {"id": project_id, "name": names[project_id]}
    return PageContext(identity.account, projects, project, section)


def render(request: Request, name: str, context: PageContext, status: int = 200, **values) -> HTMLResponse:
    """A template rendered with the layout's context, under the app pages' CSP."""
    body = templates.get_template(name).render(**context.as_dict(), **values)
    return HTMLResponse(body, status_code=status, headers=_headers(PAGE_CSP))


def _project_id(request: Request) -> int | None:
    try:
        return int(request.path_params["project_id"])
    except (KeyError, ValueError):
        return None


def _refused(request: Request, exc: ApiError) -> Response:
    """An API refusal as a page: sign-in for 401, otherwise an error page with the reason."""
    if exc.status == 401:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/app/login?next={quote(target, safe='')}", status_code=303)
    heading = {403: "Not allowed", 404: "Not found"}.get(exc.status, "Cannot show this page")
    return render(
        request,
        "error.html",
        _context(request, _project_id(request)),
        status=exc.status,
        heading=heading,
        reason=exc.reason,
        sign_in=False,
        request_path=request.url.path,
    )


def _page_principal(request: Request, permission: str) -> Principal | Response:
    try:
        return require(request, permission)
    except ApiError as exc:
        return _refused(request, exc)


# --- pages ------------------------------------------------------------------------------------


async def login_page(request: Request) -> Response:
    """The sign-in form; it posts JSON to /api/auth/login from /static/app/login.js."""
    next_path = request.query_params.get("next", "/app")
    if not next_path.startswith("/") or next_path.startswith("//"):
        next_path = "/app"
    sso = bool(request.app.state.settings.oidc_issuer)
    return render(request, "login.html", PageContext(None, [], None, "login"), next=next_path, sso=sso)


async def home(request: Request) -> Response:
    """The account's projects; straight to the recordings when there is only one."""
    context = _context(request)
    if context.account is None and not context.projects:
        return RedirectResponse("/app/login?next=/app", status_code=303)
    if len(context.projects) == 1:
        return RedirectResponse(f"/app/projects/{context.projects[0]['id']}/recordings", status_code=303)
    return render(request, "projects.html", context)


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
    principal = _page_principal(request, "playback.view")
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
    if len(recordings) == PAGE_SIZE:
        kept = {k: v for k, v in form.items() if v}
        older = f"{request.url.path}?{urlencode({**kept, 'before': recordings[-1]['started_at']})}"
    return render(
        request,
        "recordings.html",
        _context(request, project_id, "recordings"),
        status=400 if error else 200,
        form=form,
        segments=segments,
        walkme_types=WALKME_TYPES,
        recordings=recordings,
        older=older,
        error=error,
    )


async def player_page(request: Request) -> Response:
    """One recording in the player; its events are fetched by the page (that fetch is the logged view)."""
    principal = _page_principal(request, "playback.view")
    if isinstance(principal, Response):
        return principal
    store = request.app.state.playback.store
    try:
        row = await asyncio.to_thread(store.find, principal.project_id, request.path_params["recording_id"])
    except RecordingGone:
        return _refused(request, ApiError(404, "not_found", "no such recording (deleted, or expired)", "recording_id"))
    walkme = await asyncio.to_thread(walkme_markers, store.engine, row)
    return render(
        request,
        "player.html",
        _context(request, principal.project_id, "recordings"),
        recording=recording_json(row),
        walkme=walkme,
        can_export=principal.can("playback.export"),
    )


async def replay_frame(request: Request) -> Response:
    """The player's sandboxed frame: the same for every recording, so it holds no data and needs no sign-in."""
    body = templates.get_template("replay_frame.html").render()
    headers = _headers(FRAME_CSP)
    headers["Cache-Control"] = "private, max-age=300"
    return HTMLResponse(body, headers=headers)


routes = [
    Route("/app", home, methods=["GET"]),
    Route("/app/login", login_page, methods=["GET"]),
    Route("/app/projects/{project_id}/recordings", recordings_page, methods=["GET"]),
    Route("/app/projects/{project_id}/recordings/{recording_id}", player_page, methods=["GET"]),
    Route("/app/replay-frame", replay_frame, methods=["GET"]),
    Mount("/static", app=StaticFiles(directory=WEB / "static"), name="static"),
]
