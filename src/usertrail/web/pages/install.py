"""The install page: the snippet tag of every environment, the project's keys, and key rotation."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from usertrail.web.pages.layout import context, page_principal, render
from usertrail.web.snippet import snippet_tag


async def install_page(request: Request) -> Response:
    """Snippets (copy-paste ready) and keys; rotation (settings.manage) goes through the admin API."""
    principal = page_principal(request, "project.view")
    if isinstance(principal, Response):
        return principal
    project_id = principal.project_id
    projects = request.app.state.collector.projects
    environments = await asyncio.to_thread(projects.environments, project_id)
    keys = await asyncio.to_thread(projects.keys, project_id)
    write_key = next((k["key"] for k in keys if k["kind"] == "write" and k["expires_at"] is None), None)
    base = str(request.base_url).rstrip("/")
    snippets = [
        {"env": name, "walkme_env": s.walkme_env, "tag": snippet_tag(base, write_key or "", name)}
        for name, s in sorted(environments.items(), key=lambda item: item[1].walkme_env)
    ]
    return render(
        request,
        "install.html",
        context(request, project_id, "install"),
        snippets=snippets,
        write_key=write_key,
        keys=list(reversed(keys)),
        base_url=base,
    )


routes = [Route("/app/projects/{project_id}/install", install_page, methods=["GET"])]
