"""HTTP routes of SCIM provisioning (docs/scim.md).

- admin (admin token of the project): settings and token under `/api/projects/{id}/integrations/scim`;
- SCIM 2.0 (the project's SCIM token): everything under `/scim/v2/{project_id}/`, answered by
  `ScimIntegration.serve` in a worker thread.
"""

from __future__ import annotations

import asyncio
import json

from scim2_models import NotFoundException, PayloadTooLargeException
from scim2_server.requests import ScimRequest
from scim2_server.responses import ScimResponse
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from usertrail.integrations.scim import ScimIntegration, SettingsConflict
from usertrail.integrations.scim.mapping import DEFAULT_MAPPING, USER_ID_ATTRIBUTES
from usertrail.integrations.scim.protocol import MAX_BODY_BYTES, SERVICE
from usertrail.integrations.update_api import InvalidRequest
from usertrail.web.admin_api import _json_body
from usertrail.web.auth import require
from usertrail.web.errors import ApiError
from usertrail.web.users_api import _require_uuid

SCIM_PREFIX = "/scim/v2"


def _scim(request: Request) -> ScimIntegration:
    return request.app.state.scim


def _base_url(request: Request, project_id: int) -> str:
    return f"{str(request.base_url).rstrip('/')}{SCIM_PREFIX}/{project_id}"


# --- admin: settings and token ---------------------------------------------------------------


async def get_settings(request: Request) -> Response:
    project_id = require(request, "integrations.manage").project_id
    scim = _scim(request)
    settings = await asyncio.to_thread(scim.settings, project_id)
    users = await asyncio.to_thread(scim.user_count, project_id)
    body = settings.as_json() if settings is not None else {"enabled": False, "token_created_at": None}
    return JSONResponse(
        {
            **body,
            "base_url": _base_url(request, project_id),
            "users": users,
            "user_id_attributes": list(USER_ID_ATTRIBUTES),
            "default_mapping": [f.as_json() for f in DEFAULT_MAPPING],
        }
    )


async def put_settings(request: Request) -> Response:
    """Set `user_id_attribute` and/or `mapping` (the whole list); 400 with the field path, 409 on conflict."""
    grant = require(request, "integrations.manage")
    _require_uuid(request, grant.project_id)
    body = await _json_body(request)
    try:
        settings, warnings = await asyncio.to_thread(_scim(request).configure, grant.project_id, body, grant.key_id)
    except InvalidRequest as exc:
        raise ApiError(400, "invalid_request", exc.reason, exc.path) from None
    except SettingsConflict as exc:
        raise ApiError(409, "scim_users_exist", exc.reason, exc.path) from None
    return JSONResponse({**settings.as_json(), "base_url": _base_url(request, grant.project_id), "warnings": warnings})


async def create_token(request: Request) -> Response:
    """Create or rotate the project's SCIM token; it is shown only in this answer."""
    grant = require(request, "integrations.manage")
    _require_uuid(request, grant.project_id)
    token = await asyncio.to_thread(_scim(request).issue_token, grant.project_id, grant.key_id)
    return JSONResponse(
        {"token": token, "base_url": _base_url(request, grant.project_id)},
        status_code=201,
        headers={"Cache-Control": "no-store"},
    )


async def revoke_token(request: Request) -> Response:
    grant = require(request, "integrations.manage")
    revoked = await asyncio.to_thread(_scim(request).revoke_token, grant.project_id, grant.key_id)
    if not revoked:
        raise ApiError(404, "not_found", "the project has no SCIM token", "token")
    return JSONResponse({"revoked": True})


# --- SCIM 2.0 ----------------------------------------------------------------------------------


def _scim_answer(response: ScimResponse) -> Response:
    content = b"" if response.body is None else json.dumps(response.body).encode()
    return Response(content, status_code=int(response.status), headers=response.headers)


async def scim_endpoint(request: Request) -> Response:
    raw_project = request.path_params["project_id"]
    if not raw_project.isdigit() or len(raw_project) > 12:
        return _scim_answer(SERVICE.error_response(NotFoundException(detail="no such SCIM base URL")))
    project_id = int(raw_project)
    scim_request = ScimRequest(
        method=request.method,
        base_url=_base_url(request, project_id),
        path="/" + request.path_params.get("path", ""),
        query=dict(request.query_params),
        headers=list(request.headers.items()),
    )
    too_large = PayloadTooLargeException(detail=f"the body exceeds {MAX_BODY_BYTES} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return _scim_answer(SERVICE.error_response(too_large))
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        return _scim_answer(SERVICE.error_response(too_large))
    scim_request.body = body
    response = await asyncio.to_thread(
        _scim(request).serve, project_id, scim_request, request.headers.get("authorization")
    )
    return _scim_answer(response)


_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]

routes = [
    Route("/api/projects/{project_id}/integrations/scim", get_settings, methods=["GET"]),
    Route("/api/projects/{project_id}/integrations/scim", put_settings, methods=["PUT"]),
    Route("/api/projects/{project_id}/integrations/scim/token", create_token, methods=["POST"]),
    Route("/api/projects/{project_id}/integrations/scim/token", revoke_token, methods=["DELETE"]),
    Route(SCIM_PREFIX + "/{project_id}", scim_endpoint, methods=_METHODS),
    Route(SCIM_PREFIX + "/{project_id}/{path:path}", scim_endpoint, methods=_METHODS),
]
