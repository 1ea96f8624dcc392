"""The way in: the sign-in form, and `/app`, which lands on the first section the account may see."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from usertrail.web.errors import ApiError
from usertrail.web.pages.layout import PageContext, context, landing, path_project_id, refused, render


async def login_page(request: Request) -> Response:
    """The sign-in form; it posts JSON to /api/auth/login from /static/app/login.js."""
    next_path = request.query_params.get("next", "/app")
    if not next_path.startswith("/") or next_path.startswith("//"):
        next_path = "/app"
    sso = bool(request.app.state.settings.oidc_issuer)
    return render(request, "login.html", PageContext(None, [], None, "login"), next=next_path, sso=sso)


async def home(request: Request) -> Response:
    """The account's projects; straight into the project when there is only one."""
    page = context(request)
    if page.account is None and not page.projects:
        return RedirectResponse("/app/login?next=/app", status_code=303)
    if len(page.projects) == 1:
        return RedirectResponse(page.projects[0]["href"], status_code=303)
    return render(request, "projects.html", page)


async def project_home(request: Request) -> Response:
    """A project's address: its first section this account may see, or a page saying it may see none."""
    project_id = path_project_id(request)
    page = context(request, project_id)
    if page.account is None and not page.projects:
        return refused(request, ApiError(401, "unauthorized", "sign in", "cookie"))
    role = next((p["role"] for p in page.projects if p["id"] == project_id), None)
    target = landing(project_id, role) if project_id is not None else None
    if target is None:
        return refused(request, ApiError(403, "forbidden", "your account has no role on this project", "project_id"))
    return RedirectResponse(target, status_code=303)


routes = [
    Route("/app", home, methods=["GET"]),
    Route("/app/login", login_page, methods=["GET"]),
    Route("/app/projects/{project_id}", project_home, methods=["GET"]),
]
