"""Collection endpoints: WalkMe's `/event/tell` wire format and the native `/v1/batch` API."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from usertrail.collect.service import NATIVE, WALKME, CollectError, Collector, RequestFacts
from usertrail.collect.traffic import origin_allowed
from usertrail.web.errors import error_response

_CORS_HEADERS = "Content-Type, X-Usertrail-Key"


def _facts(request: Request, body: bytes) -> RequestFacts:
    headers = request.headers
    key = request.query_params.get("key") or headers.get("x-usertrail-key")
    auth = headers.get("authorization", "")
    if not key and auth.lower().startswith("bearer "):
        key = auth[7:].strip()
    return RequestFacts(
        body=body,
        content_type=headers.get("content-type", "text/plain").lower(),
        peer=request.client.host if request.client else None,
        forwarded_for=headers.get("x-forwarded-for"),
        user_agent=headers.get("user-agent", ""),
        origin=headers.get("origin"),
        key=key,
        path=request.url.path,
    )


def _cors(response: Response, origin: str | None) -> Response:
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
    return response


async def _read_body(request: Request, limit: int) -> bytes:
    """Read at most limit+1 bytes, so an oversized body is refused without buffering all of it."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        chunks.append(chunk)
        if size > limit:
            break
    return b"".join(chunks)


async def _collect(request: Request, wire_format: str) -> Response:
    collector: Collector = request.app.state.collector
    body = await _read_body(request, collector.settings.limits.max_body_bytes)
    facts = _facts(request, body)
    try:
        result = await collector.collect(facts, wire_format)
    except CollectError as exc:
        # The origin is echoed on errors too, so the browser can show the reason to the developer.
        response = error_response(exc.status, "request_refused", exc.reason, exc.path)
        if exc.retry_after_s is not None:
            response.headers["Retry-After"] = str(exc.retry_after_s)
        return _cors(response, facts.origin if exc.status != 403 else None)
    if result.errors:
        response = error_response(
            400,
            "invalid_events",
            f"{len(result.errors)} of {result.received} events were rejected; the others were stored",
            None,
            **result.as_json(),
        )
    elif wire_format == WALKME:
        response = PlainTextResponse("ok")
    else:
        response = JSONResponse({"ok": True, **result.as_json()})
    return _cors(response, result.allowed_origin)


async def walkme_tell(request: Request) -> Response:
    return await _collect(request, WALKME)


async def native_batch(request: Request) -> Response:
    return await _collect(request, NATIVE)


async def preflight(request: Request) -> Response:
    """CORS preflight: allowed only for origins configured on the key's project."""
    collector: Collector = request.app.state.collector
    origin = request.headers.get("origin", "")
    key = request.query_params.get("key")
    grant = collector.projects.authenticate(key) if key else None
    if grant is None or not origin:
        return error_response(403, "cors_refused", "preflight needs `key` in the query and an Origin header")
    allowed = [o for s in collector.environments(grant.project_id).values() for o in s.allowed_origins]
    if not origin_allowed(origin, allowed):
        return error_response(403, "cors_refused", f"origin {origin} is not allowed for this project")
    response = Response(status_code=204)
    response.headers["Access-Control-Allow-Methods"] = "POST, GET, OPTIONS"
    response.headers["Access-Control-Allow-Headers"] = _CORS_HEADERS
    response.headers["Access-Control-Max-Age"] = "600"
    return _cors(response, origin)


async def snippet_config(request: Request) -> Response:
    """What the browser snippet needs to know: where to read the user id, what to collect."""
    collector: Collector = request.app.state.collector
    key = request.query_params.get("key", "")
    grant = collector.projects.authenticate(key) if key else None
    if grant is None:
        return error_response(401, "unknown_key", "a valid write key is required", "key")
    env = request.query_params.get("env", "production")
    environments = collector.environments(grant.project_id)
    if env not in environments:
        return error_response(404, "unknown_environment", f"no environment {env!r}", "env")
    s = environments[env]
    body = {
        "environment": env,
        "tracking_level": s.tracking_level.value,
        "collect_url": s.collect_url,
        "collect_title": s.collect_title,
        "uuid": {"provider": s.uuid.provider, "source": s.uuid.source},
    }
    return cors_for(request, JSONResponse(body), environments)


def cors_for(request: Request, response: Response, environments: dict) -> Response:
    """CORS headers for a GET from the snippet, if its origin is allowed for the project."""
    origin = request.headers.get("origin")
    allowed = [o for e in environments.values() for o in e.allowed_origins]
    return _cors(response, origin if origin and origin_allowed(origin, allowed) else None)


routes = [
    Route("/event/tell", walkme_tell, methods=["POST"]),
    Route("/event/tell", preflight, methods=["OPTIONS"]),
    Route("/v1/batch", native_batch, methods=["POST"]),
    Route("/v1/batch", preflight, methods=["OPTIONS"]),
    Route("/v1/config", snippet_config, methods=["GET"]),
]
