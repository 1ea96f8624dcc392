"""Session Playback over HTTP: the snippet's start and chunk endpoints, and the admin API."""

from __future__ import annotations

import asyncio
import datetime as dt

import msgspec
import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from usertrail.access import activity_log
from usertrail.collect.traffic import origin_allowed
from usertrail.playback import quota
from usertrail.playback.assets import is_sha256, rewrite_chunk
from usertrail.playback.replay import ExportPage
from usertrail.playback.service import Caller, PlaybackError, PlaybackService
from usertrail.playback.store import Filters, RecordingGone, recording_json
from usertrail.store.database import write_transaction
from usertrail.web.admin_api import _json_body, _limit
from usertrail.web.auth import require
from usertrail.web.collect_routes import _cors, _read_body, preflight
from usertrail.web.errors import ApiError, error_response


def _service(request: Request) -> PlaybackService:
    return request.app.state.playback


def _caller(request: Request) -> Caller:
    h = request.headers
    return Caller(
        key=request.query_params.get("key") or h.get("x-usertrail-key"),
        peer=request.client.host if request.client else None,
        forwarded_for=h.get("x-forwarded-for"),
        user_agent=h.get("user-agent", ""),
        origin=h.get("origin"),
    )


def _allowed_origin(service: PlaybackService, project_id: int, origin: str | None) -> str | None:
    """The Origin to echo, or PlaybackError 403 when the page's origin is not allowed."""
    if not origin:
        return None
    allowed = [o for s in service.collector.environments(project_id).values() for o in s.allowed_origins]
    if not origin_allowed(origin, allowed):
        raise PlaybackError(403, "request_refused", "Origin", f"origin {origin} is not allowed for this project")
    return origin


async def _snippet_call(request: Request, handle) -> Response:
    service = _service(request)
    caller = _caller(request)
    echo = None
    try:
        project_id = service.project_for(caller.key)
        echo = _allowed_origin(service, project_id, caller.origin)
        body = await _read_body(request, service.settings.playback_max_chunk_bytes)
        answer = await asyncio.to_thread(handle, service, project_id, body, caller)
    except PlaybackError as exc:
        return _cors(error_response(exc.status, exc.error, exc.reason, exc.path), echo)
    return _cors(JSONResponse(answer), echo)


async def start(request: Request) -> Response:
    """Session start: record this page or not (and with which recording id and options)."""
    return await _snippet_call(request, lambda s, pid, body, caller: s.start(pid, body, caller))


async def chunk(request: Request) -> Response:
    """One sequence-numbered chunk of rrweb events (`enc=gzip` or `json`)."""
    q = request.query_params

    def handle(s: PlaybackService, pid: int, body: bytes, caller: Caller) -> dict:
        return s.ingest(pid, q.get("token", ""), q.get("seq", ""), q.get("enc", "json"), body, caller)

    return await _snippet_call(request, handle)


# --- admin API ------------------------------------------------------------------------------------


def _now() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp() * 1000)


async def usage(request: Request) -> Response:
    """This month's recorded sessions against the quota."""
    project_id = require(request, "playback.view").project_id
    engine = _service(request).store.engine
    with engine.connect() as conn:
        current = quota.usage(conn, project_id, _now())
    return JSONResponse(current.as_json())


async def set_quota(request: Request) -> Response:
    """A new monthly quota; the count restarts and today becomes the monthly reset day."""
    project_id = require(request, "settings.manage").project_id
    body = await _json_body(request)
    value = body.get("quota")
    if set(body) - {"quota"}:
        raise ApiError(400, "invalid_request", "unknown field", f"$.{sorted(set(body) - {'quota'})[0]}")
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 100_000_000:
        raise ApiError(400, "invalid_request", "quota must be a whole number from 0 to 100000000", "$.quota")
    engine = _service(request).store.engine
    now = _now()
    with write_transaction(engine) as conn:
        quota.set_quota(conn, project_id, value, now)
    with engine.connect() as conn:
        current = quota.usage(conn, project_id, now)
    return JSONResponse(current.as_json())


def _int_param(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise ApiError(400, "invalid_request", f"{name} must be a whole number (ms)", name)
    return int(raw)


def _time_param(request: Request, name: str) -> int | None:
    """Milliseconds since the epoch, or an ISO 8601 date/time (UTC unless it says otherwise)."""
    raw = request.query_params.get(name)
    if raw is None or raw == "" or raw.isdigit():
        return _int_param(request, name)
    try:
        moment = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise ApiError(400, "invalid_request", f"{name} must be ms since the epoch or ISO 8601", name) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1000)


async def list_recordings(request: Request) -> Response:
    """Recordings, newest first; filters: user, started since/until, URL substring, duration (ms), saved
    segment, WalkMe event type/item during the recording."""
    project_id = require(request, "playback.view").project_id
    q = request.query_params
    filters = Filters(
        user_key=q.get("user") or None,
        since=_time_param(request, "since"),
        until=_time_param(request, "until"),
        url=q.get("url") or None,
        min_duration_ms=_int_param(request, "min_duration_ms"),
        max_duration_ms=_int_param(request, "max_duration_ms"),
        before=_int_param(request, "before"),
        segment_id=q.get("segment") or None,
        walkme_type=q.get("walkme_type") or None,
        walkme_item=q.get("walkme_item") or None,
        limit=_limit(request),
    )
    if filters.segment_id is not None:
        segment = await asyncio.to_thread(request.app.state.segments.get, project_id, filters.segment_id)
        if segment is None:
            raise ApiError(400, "invalid_request", "no such saved segment", "segment")
    rows = await asyncio.to_thread(_service(request).store.list, project_id, filters)
    items = [recording_json(r) for r in rows]
    return JSONResponse(
        {"items": items, "next_before": items[-1]["started_at"] if len(items) == filters.limit else None}
    )


def _recording(request: Request, project_id: int):
    try:
        return _service(request).store.find(project_id, request.path_params["recording_id"])
    except RecordingGone:
        raise ApiError(404, "not_found", "no such recording", "recording_id") from None


async def get_recording(request: Request) -> Response:
    project_id = require(request, "playback.view").project_id
    return JSONResponse(recording_json(_recording(request, project_id)))


async def recording_events(request: Request) -> Response:
    """The decrypted rrweb events in sequence order: a JSON array, NDJSON with `format=ndjson`, or, with
    `format=chunks` (the player's), one stored chunk a line with its asset URLs pointing at stored copies."""
    principal = require(request, "playback.view")
    fmt = request.query_params.get("format", "json")
    if fmt not in ("json", "ndjson", "chunks"):
        raise ApiError(400, "invalid_request", "format must be `json`, `ndjson` or `chunks`", "format")
    row = _recording(request, principal.project_id)
    service = _service(request)
    store = service.store
    with write_transaction(store.engine) as conn:
        activity_log.append(conn, principal.project_id, principal, "view", row.recording_id, request)
    chunks = store.chunks(row)

    def next_chunk() -> bytes | None:
        return next(chunks, None)

    async def json_array():
        yield b"["
        first = True
        while (raw := await asyncio.to_thread(next_chunk)) is not None:
            inner = raw.strip()[1:-1].strip()
            if inner:
                yield inner if first else b"," + inner
                first = False
        yield b"]"

    async def ndjson():
        while (raw := await asyncio.to_thread(next_chunk)) is not None:
            lines = [bytes(e) for e in msgspec.json.decode(raw, type=list[msgspec.Raw])]
            yield b"\n".join(lines) + b"\n"

    async def chunk_lines():
        replacements = await asyncio.to_thread(service.assets.replacements, row)
        while (raw := await asyncio.to_thread(next_chunk)) is not None:
            # JSON has no raw line breaks inside strings, so outside them they are only whitespace.
            yield rewrite_chunk(raw, replacements).replace(b"\r", b" ").replace(b"\n", b" ") + b"\n"

    if fmt == "json":
        return StreamingResponse(json_array(), media_type="application/json")
    headers = {"X-Recording-Chunks": str(row.chunk_count), "Cache-Control": "no-store"}
    return StreamingResponse(
        ndjson() if fmt == "ndjson" else chunk_lines(), media_type="application/x-ndjson", headers=headers
    )


async def recording_assets(request: Request) -> Response:
    """The recording's asset URLs: fetched and stored (`ok`, with the hash), `pending`, `refused` or `failed`."""
    principal = require(request, "playback.view")
    row = _recording(request, principal.project_id)
    items = await asyncio.to_thread(_service(request).assets.listing, row)
    return JSONResponse({"items": items})


# Stored assets are served to the replay frame only: as their stored type, never sniffed, never as a
# document that could run anything (an SVG opened directly gets the sandbox), cached as immutable.
ASSET_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; sandbox",
    "Content-Disposition": "attachment",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "private, max-age=31536000, immutable",
}


async def get_asset(request: Request) -> Response:
    """A stored asset by its SHA-256, with the type it was stored as."""
    project_id = require(request, "playback.view").project_id
    sha = request.path_params["sha256"]
    if not is_sha256(sha):
        raise ApiError(400, "invalid_request", "an asset is named by its SHA-256 in lower-case hex", "sha256")
    found = await asyncio.to_thread(_service(request).assets.get, project_id, sha)
    if found is None:
        raise ApiError(404, "not_found", "no such asset", "sha256")
    content_type, body = found
    return Response(body, media_type=content_type, headers=ASSET_HEADERS)


EXPORT_PAGE = ExportPage()


async def export_recording(request: Request) -> Response:
    """The recording as one self-contained HTML file (player, styles, events and the stored copies of the
    page's assets inlined), as an attachment.

    Every export is appended to the activity log before the file is sent.
    """
    principal = require(request, "playback.export")
    row = _recording(request, principal.project_id)
    service = _service(request)
    store = service.store
    with write_transaction(store.engine) as conn:
        activity_log.append(conn, principal.project_id, principal, "export", row.recording_id, request)
    recording = recording_json(row)
    embedded, left_out = await asyncio.to_thread(service.assets.embedded, row)
    meta = {
        "recording": row.recording_id,
        "end user": row.user_key,
        "started (UTC)": _utc(row.started_at),
        "duration": f"{recording['duration_ms'] / 1000:.0f} s",
        "pages": ", ".join(recording["urls"]),
        "browser": row.browser,
        "exported (UTC)": _utc(_now()),
        "exported by": principal.actor,
        "stored assets embedded": len(embedded),
        "stored assets left out (over the file's size limit)": left_out or None,
    }
    parts = EXPORT_PAGE.render(meta, (rewrite_chunk(raw, embedded) for raw in store.chunks(row)))

    def next_part() -> bytes | None:
        return next(parts, None)

    async def body():
        while (part := await asyncio.to_thread(next_part)) is not None:
            yield part

    return StreamingResponse(
        body(),
        media_type="text/html; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="recording-{row.recording_id}.html"',
            "Content-Security-Policy": EXPORT_PAGE.csp,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        },
    )


def _utc(ms: int | None) -> str:
    if ms is None:
        return ""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


async def delete_recording(request: Request) -> Response:
    """Delete a recording: its key (its chunks are unreadable from then on), metadata and blobs."""
    principal = require(request, "playback.delete")
    row = _recording(request, principal.project_id)

    def audit(conn: sa.Connection) -> None:
        activity_log.append(conn, principal.project_id, principal, "delete", row.recording_id, request)

    try:
        await asyncio.to_thread(
            _service(request).store.delete, principal.project_id, row.user_key, row.recording_id, audit
        )
    except RecordingGone:  # deleted meanwhile by another request: that one logged it
        raise ApiError(404, "not_found", "no such recording", "recording_id") from None
    return JSONResponse({"deleted": row.recording_id})


routes = [
    Route("/v1/playback/start", start, methods=["POST"]),
    Route("/v1/playback/start", preflight, methods=["OPTIONS"]),
    Route("/v1/playback/chunks", chunk, methods=["POST"]),
    Route("/v1/playback/chunks", preflight, methods=["OPTIONS"]),
    Route("/api/projects/{project_id}/playback/usage", usage, methods=["GET"]),
    Route("/api/projects/{project_id}/playback/quota", set_quota, methods=["PUT"]),
    Route("/api/projects/{project_id}/playback/recordings", list_recordings, methods=["GET"]),
    Route("/api/projects/{project_id}/playback/recordings/{recording_id}", get_recording, methods=["GET"]),
    Route("/api/projects/{project_id}/playback/recordings/{recording_id}", delete_recording, methods=["DELETE"]),
    Route("/api/projects/{project_id}/playback/recordings/{recording_id}/events", recording_events, methods=["GET"]),
    Route("/api/projects/{project_id}/playback/recordings/{recording_id}/export", export_recording, methods=["GET"]),
    Route("/api/projects/{project_id}/playback/recordings/{recording_id}/assets", recording_assets, methods=["GET"]),
    Route("/api/projects/{project_id}/playback/assets/{sha256}", get_asset, methods=["GET"]),
]
