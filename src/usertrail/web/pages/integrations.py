"""The integrations section (`integrations.manage`), one tab per page: CSV upload with its mapping step and
the import jobs, End User Update API clients, S3 sources, Salesforce sources, SCIM, the integration log;
and the attribute registry with its budget (`users.view`, so whoever reads end users can see it).

Pages read through the integrations' own stores; every change is made by `static/app/integrations.js`
through the public API (`/api/projects/{id}/imports…`, `…/integrations/…`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from usertrail.integrations.scim.mapping import DEFAULT_MAPPING, USER_ID_ATTRIBUTES
from usertrail.profiles.custom import ATTRIBUTE_TYPES, CAP
from usertrail.web.pages.layout import context, page_principal, render
from usertrail.web.scim_routes import _base_url as scim_base_url

JOBS_SHOWN = 20
LOG_PAGE = 50


@dataclass(frozen=True)
class Tab:
    key: str
    label: str
    path: str  # under /app/projects/{id}/


TABS = (
    Tab("import", "CSV import", "integrations"),
    Tab("clients", "Update API clients", "integrations/api-clients"),
    Tab("s3", "Amazon S3", "integrations/s3"),
    Tab("salesforce", "Salesforce", "integrations/salesforce"),
    Tab("scim", "SCIM", "integrations/scim"),
    Tab("log", "Integration log", "integrations/log"),
    Tab("attributes", "Attribute registry", "attributes"),
)


def _uuid_ready(request: Request, project_id: int) -> bool:
    """End users (and so imports) exist only with UUID settings in some environment."""
    environments = request.app.state.collector.environments(project_id)
    return any(s.uuid.provider != "none" for s in environments.values())


async def _page(request: Request, tab: str, template: str, permission: str = "integrations.manage", **values):
    principal = page_principal(request, permission)
    if isinstance(principal, Response):
        return principal
    project_id = principal.project_id
    loaded = {}
    for name, load in values.items():
        loaded[name] = await asyncio.to_thread(load, request, project_id) if callable(load) else load
    page = context(request, project_id, "integrations" if tab != "attributes" else "attributes")
    return render(
        request,
        template,
        page,
        tab=tab,
        tabs=TABS,
        types=ATTRIBUTE_TYPES,
        uuid_ready=_uuid_ready(request, project_id),
        api=f"/api/projects/{project_id}",
        **loaded,
    )


def _registry(request: Request, project_id: int) -> dict:
    attributes = request.app.state.attributes.registry(project_id)
    return {"cap": CAP, "count": len(attributes), "attributes": attributes}


def _jobs(request: Request, project_id: int) -> list[dict]:
    return request.app.state.csv_importer.list(project_id, None, JOBS_SHOWN, None)


async def import_page(request: Request) -> Response:
    """CSV upload: pick a file, map its columns, watch the job, read its error report; the recent jobs."""
    return await _page(request, "import", "integrations_import.html", jobs=_jobs, registry=_registry)


async def clients_page(request: Request) -> Response:
    def clients(request: Request, project_id: int) -> list[dict]:
        return [c.as_json() for c in request.app.state.update_api.clients(project_id)]

    return await _page(request, "clients", "integrations_clients.html", clients=clients)


async def s3_page(request: Request) -> Response:
    def sources(request: Request, project_id: int) -> list[dict]:
        return [s.as_json() for s in request.app.state.s3_imports.list(project_id)]

    return await _page(request, "s3", "integrations_s3.html", sources=sources)


async def salesforce_page(request: Request) -> Response:
    def sources(request: Request, project_id: int) -> list[dict]:
        importer = request.app.state.salesforce
        found = importer.sources(project_id)
        last = importer.last_runs(found)
        now = importer.clock()
        return [s.as_json(now, last.get(s.source_id)) for s in found]

    return await _page(request, "salesforce", "integrations_salesforce.html", sources=sources)


async def scim_page(request: Request) -> Response:
    def scim(request: Request, project_id: int) -> dict:
        integration = request.app.state.scim
        settings = integration.settings(project_id)
        default = [f.as_json() for f in DEFAULT_MAPPING]
        body = settings.as_json() if settings is not None else {"enabled": False, "token_created_at": None}
        return {
            **body,
            "configured": settings is not None,
            "mapping": body.get("mapping", default),
            "user_id_attribute": body.get("user_id_attribute", USER_ID_ATTRIBUTES[0]),
            "base_url": scim_base_url(request, project_id),
            "users": integration.user_count(project_id),
            "user_id_attributes": list(USER_ID_ATTRIBUTES),
            "default_mapping": default,
        }

    return await _page(request, "scim", "integrations_scim.html", scim=scim)


LOG_FIELDS = ("integration", "kind")


async def log_page(request: Request) -> Response:
    """The integration log, newest first, filtered by integration (name or id) and kind."""
    principal = page_principal(request, "integrations.manage")
    if isinstance(principal, Response):
        return principal
    form = {name: request.query_params.get(name, "").strip() for name in LOG_FIELDS}
    log = request.app.state.integration_log
    entries = await asyncio.to_thread(
        log.list,
        principal.project_id,
        form["integration"] or None,
        form["kind"] or None,
        LOG_PAGE,
        request.query_params.get("before") or None,
    )
    older = None
    if len(entries) == LOG_PAGE:
        kept = {k: v for k, v in form.items() if v}
        older = f"{request.url.path}?{urlencode({**kept, 'before': entries[-1]['id']})}"
    return await _page(request, "log", "integrations_log.html", form=form, entries=entries, older=older)


async def attributes_page(request: Request) -> Response:
    """The attribute registry: every custom attribute, its type and writers, against the cap of 100."""
    return await _page(request, "attributes", "attributes.html", "users.view", registry=_registry)


routes = [
    Route("/app/projects/{project_id}/integrations", import_page, methods=["GET"]),
    Route("/app/projects/{project_id}/integrations/api-clients", clients_page, methods=["GET"]),
    Route("/app/projects/{project_id}/integrations/s3", s3_page, methods=["GET"]),
    Route("/app/projects/{project_id}/integrations/salesforce", salesforce_page, methods=["GET"]),
    Route("/app/projects/{project_id}/integrations/scim", scim_page, methods=["GET"]),
    Route("/app/projects/{project_id}/integrations/log", log_page, methods=["GET"]),
    Route("/app/projects/{project_id}/attributes", attributes_page, methods=["GET"]),
]
