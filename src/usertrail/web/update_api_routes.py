"""HTTP routes of the End User Update API (docs/integrations.md).

- admin (permission `integrations.manage`): API clients and the integration log under
  `/api/projects/{project_id}/integrations/…`;
- public, WalkMe-shaped: `POST /accounts/connect/token` (OAuth2 client credentials) and
  `POST /public/v1/user/data`, `GET /public/v1/user/data/requests/{request_id}` (bearer token).

The database work runs in worker threads so a slow write never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
from urllib.parse import parse_qs, unquote_plus

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from usertrail.integrations import IntegrationLog
from usertrail.integrations.update_api import (
    MAX_BODY_BYTES,
    MAX_IDEMPOTENCY_KEY,
    AuthError,
    IdempotencyConflict,
    InvalidRequest,
    NameTaken,
    OAuthError,
    TokenGrant,
    UpdateApi,
    body_hash,
    parse_client_spec,
    validate_update_body,
)
from usertrail.web.admin_api import _json_body, _limit
from usertrail.web.auth import require
from usertrail.web.errors import ApiError, error_response
from usertrail.web.users_api import _require_uuid

TOKEN_PATH = "/accounts/connect/token"
UPDATE_PATH = "/public/v1/user/data"
MAX_TOKEN_BODY = 8 * 1024
REALM = 'realm="usertrail"'


def _api(request: Request) -> UpdateApi:
    return request.app.state.update_api


def _log(request: Request) -> IntegrationLog:
    return request.app.state.integration_log


# --- admin: API clients and the integration log ----------------------------------------------


async def create_client(request: Request) -> Response:
    grant = require(request, "integrations.manage")
    _require_uuid(request, grant.project_id)
    body = await _json_body(request)
    api = _api(request)
    try:
        spec = parse_client_spec(body)
        new = await asyncio.to_thread(api.create_client, grant.project_id, spec, grant.actor)
    except InvalidRequest as exc:
        raise ApiError(400, "invalid_request", exc.reason, exc.path) from None
    except NameTaken as exc:
        raise ApiError(409, "name_taken", str(exc), "$.name") from None
    base = str(request.base_url).rstrip("/")
    return JSONResponse(
        {
            **new.client.as_json(),
            "client_secret": new.secret,
            "token_url": base + TOKEN_PATH,
            "update_url": base + UPDATE_PATH,
            "warnings": new.warnings,
        },
        status_code=201,
    )


async def list_clients(request: Request) -> Response:
    project_id = require(request, "integrations.manage").project_id
    clients = await asyncio.to_thread(_api(request).clients, project_id)
    return JSONResponse({"clients": [c.as_json() for c in clients]})


async def revoke_client(request: Request) -> Response:
    grant = require(request, "integrations.manage")
    client = await asyncio.to_thread(
        _api(request).revoke_client, grant.project_id, request.path_params["client_id"], grant.actor
    )
    if client is None:
        raise ApiError(404, "not_found", "the project has no API client with this id", "client_id")
    return JSONResponse(client.as_json())


async def integration_log(request: Request) -> Response:
    """`?integration=<name or client id>&kind=&limit=&before=<entry id>`, newest first."""
    project_id = require(request, "integrations.manage").project_id
    params = request.query_params
    entries = await asyncio.to_thread(
        _log(request).list,
        project_id,
        params.get("integration"),
        params.get("kind"),
        _limit(request),
        params.get("before"),
    )
    return JSONResponse({"entries": entries, "next_before": entries[-1]["id"] if entries else None})


# --- public: OAuth2 token endpoint -----------------------------------------------------------


class _Answer(Exception):
    """Carries a finished error response out of a public handler."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def _answers(handler):
    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except _Answer as answer:
            return answer.response

    return wrapper


_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _oauth_error(status: int, error: str, description: str, basic: bool = False) -> _Answer:
    headers = dict(_NO_STORE)
    if status == 401:
        headers["WWW-Authenticate"] = f"Basic {REALM}" if basic else f"Bearer {REALM}"
    return _Answer(JSONResponse({"error": error, "error_description": description}, status, headers=headers))


def _basic_credentials(header: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise _oauth_error(401, "invalid_client", "malformed Basic credentials", basic=True) from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise _oauth_error(401, "invalid_client", "Basic credentials must be client_id:client_secret", basic=True)
    # RFC 6749 §2.3.1: both parts are form-encoded before base64.
    return unquote_plus(client_id), unquote_plus(secret)


@_answers
async def token(request: Request) -> Response:
    """`grant_type=client_credentials` with Basic client authentication (or client_id/secret in the form)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise _oauth_error(400, "invalid_request", "send Content-Type: application/x-www-form-urlencoded")
    raw = await request.body()
    if len(raw) > MAX_TOKEN_BODY:
        raise _oauth_error(400, "invalid_request", "the request body is too large")
    try:
        params = parse_qs(raw.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise _oauth_error(400, "invalid_request", "the body is not UTF-8") from None
    repeated = sorted(k for k, v in params.items() if len(v) > 1)
    if repeated:
        raise _oauth_error(400, "invalid_request", f"parameter {repeated[0]!r} is repeated")
    form = {k: v[0] for k, v in params.items()}
    auth = request.headers.get("authorization", "")
    basic = auth[:6].lower() == "basic "
    in_form = "client_id" in form or "client_secret" in form
    if basic and in_form:
        raise _oauth_error(400, "invalid_request", "authenticate the client one way only (Basic or form)")
    if basic:
        client_id, secret = _basic_credentials(auth)
    elif in_form:
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
    else:
        raise _oauth_error(
            401, "invalid_client", "send Authorization: Basic base64(client_id:client_secret)", basic=True
        )
    api = _api(request)
    try:
        client = await asyncio.to_thread(api.authenticate_client, client_id, secret)
        grant_type = form.get("grant_type")
        if not grant_type:
            raise OAuthError(400, "invalid_request", "grant_type is required (client_credentials)")
        if grant_type != "client_credentials":
            raise OAuthError(400, "unsupported_grant_type", f"{grant_type!r} is not supported; use client_credentials")
        issued = await asyncio.to_thread(api.issue_token, client, form.get("scope"))
    except OAuthError as exc:
        raise _oauth_error(exc.status, exc.error, exc.description, basic=basic) from None
    return JSONResponse(issued.as_json(), headers=_NO_STORE)


# --- public: the update call and its results -------------------------------------------------


def _public_error(status: int, error: str, reason: str, path: str | None = None, headers=None, **extra) -> _Answer:
    response = error_response(status, error, reason, path, **extra)
    response.headers.update(headers or {})
    return _Answer(response)


async def _grant(request: Request) -> TokenGrant:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() != "bearer " or not auth[7:].strip():
        raise _public_error(
            401,
            "unauthorized",
            f"send Authorization: Bearer <access token> (from POST {TOKEN_PATH})",
            "Authorization",
            {"WWW-Authenticate": f"Bearer {REALM}"},
        )
    try:
        return await asyncio.to_thread(_api(request).authenticate, auth[7:].strip())
    except AuthError as exc:
        headers = {}
        if exc.error in ("invalid_token", "insufficient_scope"):  # RFC 6750 §3 challenge codes
            headers["WWW-Authenticate"] = f'Bearer {REALM}, error="{exc.error}", error_description="{exc.reason}"'
        raise _public_error(exc.status, exc.error, exc.reason, "Authorization", headers) from None


async def _refuse(request: Request, grant: TokenGrant, status: int, error: str, reason: str, path: str | None):
    await asyncio.to_thread(_api(request).log_refused, grant, status, error, reason, path)
    return _public_error(status, error, reason, path)


def _accepted(outcome) -> dict:
    result = outcome.result
    return {
        "message": "Request has been received",
        "request_id": outcome.request_id,
        "records": result["records"],
        "records_applied": result["records_applied"],
        "error_count": result["error_count"],
        "result_url": f"{UPDATE_PATH}/requests/{outcome.request_id}",
    }


@_answers
async def update_users(request: Request) -> Response:
    """Apply up to 100 records to end users' custom attributes; 202 once written."""
    grant = await _grant(request)
    api = _api(request)
    retry_after = await asyncio.to_thread(api.count_request, grant)
    if retry_after is not None:
        raise _public_error(
            429,
            "rate_limited",
            f"at most {api.rate_limit} calls per {api.rate_window_ms // 1000} s per API client; "
            f"retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
            retry_after=retry_after,
            limit=api.rate_limit,
            window_seconds=api.rate_window_ms // 1000,
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise await _refuse(request, grant, 413, "payload_too_large", f"the body exceeds {MAX_BODY_BYTES} bytes", "$")
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise await _refuse(request, grant, 413, "payload_too_large", f"the body exceeds {MAX_BODY_BYTES} bytes", "$")
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise await _refuse(request, grant, 400, "invalid_json", f"malformed JSON: {exc}", "$") from None
    try:
        data = validate_update_body(body)
    except InvalidRequest as exc:
        raise await _refuse(request, grant, 400, "invalid_request", exc.reason, exc.path) from None
    key = request.headers.get("idempotency-key")
    if key is not None and not (0 < len(key) <= MAX_IDEMPOTENCY_KEY and key.isprintable()):
        raise await _refuse(
            request,
            grant,
            400,
            "invalid_request",
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters",
            "Idempotency-Key",
        )
    try:
        outcome = await asyncio.to_thread(api.submit, grant, data, key, body_hash(body))
    except IdempotencyConflict as exc:
        raise await _refuse(request, grant, 409, exc.error, exc.reason, "Idempotency-Key") from None
    headers = {"Location": f"{UPDATE_PATH}/requests/{outcome.request_id}"}
    if outcome.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(_accepted(outcome), status_code=202, headers=headers)


@_answers
async def request_result(request: Request) -> Response:
    """The result of one of this client's update calls: counts and every error by record and field."""
    grant = await _grant(request)
    result = await asyncio.to_thread(_api(request).request_result, grant, request.path_params["request_id"])
    if result is None:
        raise _public_error(404, "not_found", "this API client made no request with this id", "request_id")
    return JSONResponse(result)


routes = [
    Route("/api/projects/{project_id}/integrations/api-clients", create_client, methods=["POST"]),
    Route("/api/projects/{project_id}/integrations/api-clients", list_clients, methods=["GET"]),
    Route("/api/projects/{project_id}/integrations/api-clients/{client_id}", revoke_client, methods=["DELETE"]),
    Route("/api/projects/{project_id}/integrations/log", integration_log, methods=["GET"]),
    Route(TOKEN_PATH, token, methods=["POST"]),
    Route(UPDATE_PATH, update_users, methods=["POST"]),
    Route(UPDATE_PATH + "/requests/{request_id}", request_result, methods=["GET"]),
]
