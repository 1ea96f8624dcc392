"""HTTP routes of the Salesforce import (docs/integrations.md, "Salesforce").

All under `/api/projects/{project_id}/integrations/salesforce`, with an admin token of the project.
Creating, changing and running a source need UUID settings (409 `uuid_settings_required`).
Runs and other database work happen in worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from usertrail.integrations.salesforce import (
    RunInProgress,
    SalesforceImporter,
    Source,
    SourceNotFound,
    parse_source,
)
from usertrail.integrations.update_api import InvalidRequest
from usertrail.web.admin_api import _json_body, _limit
from usertrail.web.auth import require
from usertrail.web.errors import ApiError
from usertrail.web.users_api import _require_uuid

BASE = "/api/projects/{project_id}/integrations/salesforce"


def _importer(request: Request) -> SalesforceImporter:
    return request.app.state.salesforce


def _not_found() -> ApiError:
    return ApiError(404, "not_found", "the project has no Salesforce source with this id", "source_id")


def _busy() -> ApiError:
    return ApiError(409, "run_in_progress", "a run of this source is in progress; wait for it to finish", "source_id")


async def _source_json(request: Request, source: Source, **extra) -> dict:
    importer = _importer(request)
    last = await asyncio.to_thread(importer.last_runs, [source])
    return {**source.as_json(importer.clock(), last.get(source.source_id)), **extra}


async def create_source(request: Request) -> Response:
    grant = require(request, "integrations.manage")
    _require_uuid(request, grant.project_id)
    body = await _json_body(request)
    try:
        spec = parse_source(body)
        source, warnings = await asyncio.to_thread(_importer(request).create, grant.project_id, spec, grant.key_id)
    except InvalidRequest as exc:
        raise ApiError(400, "invalid_request", exc.reason, exc.path) from None
    return JSONResponse(await _source_json(request, source, warnings=warnings), status_code=201)


async def list_sources(request: Request) -> Response:
    project_id = require(request, "integrations.manage").project_id
    importer = _importer(request)
    sources = await asyncio.to_thread(importer.sources, project_id)
    last = await asyncio.to_thread(importer.last_runs, sources)
    now = importer.clock()
    return JSONResponse({"sources": [s.as_json(now, last.get(s.source_id)) for s in sources]})


async def get_source(request: Request) -> Response:
    project_id = require(request, "integrations.manage").project_id
    source = await asyncio.to_thread(_importer(request).get, project_id, request.path_params["source_id"])
    if source is None:
        raise _not_found()
    return JSONResponse(await _source_json(request, source))


async def update_source(request: Request) -> Response:
    grant = require(request, "integrations.manage")
    _require_uuid(request, grant.project_id)
    body = await _json_body(request)
    try:
        source, warnings = await asyncio.to_thread(
            _importer(request).update, grant.project_id, request.path_params["source_id"], body, grant.key_id
        )
    except InvalidRequest as exc:
        raise ApiError(400, "invalid_request", exc.reason, exc.path) from None
    except SourceNotFound:
        raise _not_found() from None
    return JSONResponse(await _source_json(request, source, warnings=warnings))


async def delete_source(request: Request) -> Response:
    grant = require(request, "integrations.manage")
    importer = _importer(request)
    try:
        source = await asyncio.to_thread(
            importer.delete, grant.project_id, request.path_params["source_id"], grant.key_id
        )
    except SourceNotFound:
        raise _not_found() from None
    except RunInProgress:
        raise _busy() from None
    return JSONResponse({**source.as_json(importer.clock()), "deleted": True})


async def run_source(request: Request) -> Response:
    """Run the source now and answer with the finished run (a failed run is still a 200: see its status)."""
    grant = require(request, "integrations.manage")
    _require_uuid(request, grant.project_id)
    try:
        run = await asyncio.to_thread(_importer(request).run, grant.project_id, request.path_params["source_id"], "api")
    except SourceNotFound:
        raise _not_found() from None
    except RunInProgress:
        raise _busy() from None
    return JSONResponse(run)


async def list_runs(request: Request) -> Response:
    """`?limit=&before=<run id>`, newest first."""
    project_id = require(request, "integrations.manage").project_id
    importer = _importer(request)
    source_id = request.path_params["source_id"]
    if await asyncio.to_thread(importer.get, project_id, source_id) is None:
        raise _not_found()
    runs = await asyncio.to_thread(
        importer.runs, project_id, source_id, _limit(request), request.query_params.get("before")
    )
    return JSONResponse({"runs": runs, "next_before": runs[-1]["run_id"] if runs else None})


async def get_run(request: Request) -> Response:
    project_id = require(request, "integrations.manage").project_id
    params = request.path_params
    run = await asyncio.to_thread(_importer(request).run_result, project_id, params["source_id"], params["run_id"])
    if run is None:
        raise ApiError(404, "not_found", "this source has no run with this id", "run_id")
    return JSONResponse(run)


routes = [
    Route(BASE, create_source, methods=["POST"]),
    Route(BASE, list_sources, methods=["GET"]),
    Route(BASE + "/{source_id}", get_source, methods=["GET"]),
    Route(BASE + "/{source_id}", update_source, methods=["PATCH"]),
    Route(BASE + "/{source_id}", delete_source, methods=["DELETE"]),
    Route(BASE + "/{source_id}/run", run_source, methods=["POST"]),
    Route(BASE + "/{source_id}/runs", list_runs, methods=["GET"]),
    Route(BASE + "/{source_id}/runs/{run_id}", get_run, methods=["GET"]),
]
