"""What every admin page shares: the templates, the layout's context (account, projects, navigation), the
permission check that turns an API refusal into a page, and the headers (CSP) pages are served with.

Each section of the app is a module beside this one with its own `routes`; `NAV` lists the sections in
the order the navigation shows them, each with the permission a role needs to see it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from usertrail.access.permissions import UnknownRole, permissions_of
from usertrail.access.principal import Principal
from usertrail.playback.replay import PAGE_CSP
from usertrail.web.auth import authenticate, require
from usertrail.web.errors import ApiError

WEB = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class NavItem:
    """One section in the navigation: `/app/projects/{id}/{path}`, shown to roles holding `permission`."""

    key: str
    label: str
    path: str
    permission: str


# The navigation, in order; the first section a role may see is where `/app` lands.
NAV: tuple[NavItem, ...] = (
    NavItem("overview", "Overview", "overview", "project.view"),
    NavItem("users", "Users", "users", "users.view"),
    NavItem("segments", "Segments", "segments", "users.view"),
    NavItem("recordings", "Recordings", "recordings", "playback.view"),
    NavItem("reports", "Reports", "reports", "users.view"),
    NavItem("integrations", "Integrations", "integrations", "integrations.manage"),
    NavItem("activity", "Activity", "activity", "audit.view"),
    NavItem("settings", "Settings", "settings", "project.view"),
    NavItem("install", "Install", "install", "project.view"),
)


def utc(ms: int | None) -> str:
    """Epoch milliseconds as `YYYY-MM-DD HH:MM:SS` (UTC); empty for None."""
    if ms is None:
        return ""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def clock(ms: int | None) -> str:
    """A duration in milliseconds as `m:ss` or `h:mm:ss`."""
    seconds = max(0, int((ms or 0) // 1000))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(WEB / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
templates.filters["utc"] = utc
templates.filters["clock"] = clock


def headers(csp: str) -> dict[str, str]:
    """The security headers of an app page under `csp`; pages are never cached (they hold project data)."""
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
    }


def _permissions(role: str | None) -> frozenset[str]:
    try:
        return permissions_of(role) if role else frozenset()
    except UnknownRole:
        return frozenset()


@dataclass(frozen=True)
class PageContext:
    """What the base layout shows: the account, its projects, the current project and section."""

    account: object | None
    projects: list[dict]
    project: dict | None
    section: str
    permissions: frozenset[str] = frozenset()

    def nav(self) -> list[dict]:
        """The sections of the current project this role may see."""
        if self.project is None:
            return []
        pid = self.project["id"]
        return [
            {"key": item.key, "label": item.label, "href": f"/app/projects/{pid}/{item.path}"}
            for item in NAV
            if item.permission in self.permissions
        ]

    def as_dict(self) -> dict:
        return {
            "account": self.account,
            "projects": self.projects,
            "project": self.project,
            "section": self.section,
            "nav": self.nav(),
            "can": self.permissions,
        }


def landing(project_id: int, role: str | None) -> str | None:
    """The first section `role` may see in the project, as a path; None when it may see none."""
    allowed = _permissions(role)
    for item in NAV:
        if item.permission in allowed:
            return f"/app/projects/{project_id}/{item.path}"
    return None


def context(request: Request, project_id: int | None = None, section: str = "") -> PageContext:
    """The layout's context for this request; an anonymous one when nobody is signed in."""
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
    for p in projects:
        p["href"] = landing(p["id"], p["role"]) or f"/app/projects/{p['id']}"
    project, permissions = None, frozenset()
    if project_id is not None and project_id in names:
        project = {"id": project_id, "name": names[project_id]}
        role = next((p["role"] for p in projects if p["id"] == project_id), None)
        permissions = _permissions(role)
    return PageContext(identity.account, projects, project, section, permissions)


def render(request: Request, name: str, page: PageContext, status: int = 200, **values) -> HTMLResponse:
    """A template rendered with the layout's context, under the app pages' CSP."""
    body = templates.get_template(name).render(**page.as_dict(), **values)
    return HTMLResponse(body, status_code=status, headers=headers(PAGE_CSP))


def path_project_id(request: Request) -> int | None:
    """The `{project_id}` of the URL, when it is a number."""
    try:
        return int(request.path_params["project_id"])
    except (KeyError, ValueError):
        return None


def refused(request: Request, exc: ApiError) -> Response:
    """An API refusal as a page: sign-in for 401, otherwise an error page with the reason."""
    if exc.status == 401:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/app/login?next={quote(target, safe='')}", status_code=303)
    heading = {403: "Not allowed", 404: "Not found"}.get(exc.status, "Cannot show this page")
    return render(
        request,
        "error.html",
        context(request, path_project_id(request)),
        status=exc.status,
        heading=heading,
        reason=exc.reason,
        sign_in=False,
        request_path=request.url.path,
    )


def page_principal(request: Request, permission: str) -> Principal | Response:
    """The principal when it holds `permission` on the URL's project; otherwise the page that refuses it."""
    try:
        return require(request, permission)
    except ApiError as exc:
        return refused(request, exc)
