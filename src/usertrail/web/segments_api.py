"""The segments API: saved segments, previews, member lists and CSV export, membership history,
"which segments is this user in?" with explanations, and the snippet's client-visible check.

Like every end-user route, segments need UUID settings (409 `uuid_settings_required`).
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Iterator

import msgspec
import sqlalchemy as sa
from cachetools import TTLCache
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from usertrail.collect.pipeline import identity_for
from usertrail.profiles import standard
from usertrail.profiles.standard import STANDARD_ATTRIBUTES
from usertrail.segments.columns import member_count
from usertrail.segments.evaluate import compile_tree, explain, load_facts
from usertrail.segments.membership import catalog_of, refresh_segment
from usertrail.segments.model import (
    MAX_DAYS,
    MAX_DEPTH,
    MAX_LIST,
    MAX_RULES,
    UNIT_MS,
    WALKME_EVENT_TYPES,
    Group,
    InvalidRule,
    operators_of,
    parse,
)
from usertrail.segments.sql import Compiler
from usertrail.sessions.rules import PAGE_TYPES
from usertrail.store.database import write_transaction
from usertrail.store.identity import owner_of
from usertrail.store.schema import end_users
from usertrail.store.segments import DuplicateName, SegmentStore, segment_json
from usertrail.store.users import STANDARD_COLUMNS, profile_json
from usertrail.web.admin_api import _json_body, _limit
from usertrail.web.auth import require
from usertrail.web.collect_routes import cors_for
from usertrail.web.errors import ApiError, error_response
from usertrail.web.paths import USERS
from usertrail.web.users_api import _int_param, _owner, _project, _require_uuid

MAX_NAME = 200
# Standard attributes measured in milliseconds (a rule builder can offer minutes and convert).
DURATIONS = (
    standard.AVERAGE_SESSION_DURATION,
    standard.TOTAL_SESSION_DURATION,
    standard.AVERAGE_TIME_BETWEEN_SESSIONS,
)
CLIENT_CACHE_SIZE = 100_000


def client_cache(ttl_s: float, timer: Callable[[], float] = time.monotonic) -> TTLCache:
    """The snippet's answers per (project, end-user key), each kept `ttl_s` seconds by `timer`'s clock."""
    return TTLCache(maxsize=CLIENT_CACHE_SIZE, ttl=ttl_s, timer=timer)


def _manage(request: Request) -> int:
    """The project id, for routes that change segments (permission `segments.manage`)."""
    project_id = require(request, "segments.manage").project_id
    _require_uuid(request, project_id)
    return project_id


def _now() -> int:
    return int(time.time() * 1000)


def _store(request: Request) -> SegmentStore:
    return request.app.state.segments


def _engine(request: Request) -> sa.Engine:
    return _store(request).engine


def _parse(engine: sa.Engine, project_id: int, rules: object, path: str = "$.rules") -> Group:
    with engine.connect() as conn:
        catalog = catalog_of(conn, project_id)
    try:
        return parse(rules, catalog, path)
    except InvalidRule as exc:
        raise ApiError(400, "invalid_segment", exc.reason, exc.path, suggestions=exc.suggestions) from None


def _segment_fields(body: dict, partial: bool) -> dict:
    allowed = {"name", "description", "rules", "client_visible"}
    for key in body:
        if key not in allowed:
            raise ApiError(400, "invalid_segment", f"unknown field {key!r}", f"$.{key}")
    if not partial or "name" in body:
        name = body.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
            raise ApiError(
                400, "invalid_segment", f"name is a non-empty string of at most {MAX_NAME} characters", "$.name"
            )
    if "description" in body and not isinstance(body["description"], str):
        raise ApiError(400, "invalid_segment", "description is a string", "$.description")
    if "client_visible" in body and not isinstance(body["client_visible"], bool):
        raise ApiError(400, "invalid_segment", "client_visible is true or false", "$.client_visible")
    if not partial and "rules" not in body:
        raise ApiError(400, "invalid_segment", "rules are required", "$.rules")
    return body


def _get_segment(request: Request, project_id: int):
    row = _store(request).get(project_id, request.path_params["segment_id"])
    if row is None:
        raise ApiError(404, "not_found", "no such segment", "segment_id")
    return row


def _refresh(engine: sa.Engine, project_id: int, segment_id: str, tree: Group) -> dict:
    with write_transaction(engine) as conn:
        entered, left = refresh_segment(conn, project_id, segment_id, tree, _now())
    return {"entered": entered, "left": left}


def _segment_body(request: Request, project_id: int, row) -> dict:
    count = _store(request).member_counts(project_id, [row.id]).get(row.id, 0)
    return segment_json(row, count)


async def list_segments(request: Request) -> Response:
    """Saved segments by name, each with `member_count`: its stored member count (as of `refreshed_at`)."""
    project_id = _project(request)
    store = _store(request)
    counts = store.member_counts(project_id)
    return JSONResponse({"segments": [segment_json(r, counts.get(r.id, 0)) for r in store.list(project_id)]})


async def catalog(request: Request) -> Response:
    """What rules may name, for rule builders: every attribute with its kind, type and operators (each
    with the shape of its value), the behaviour rule's operators and known event types, and the limits."""
    project_id = _project(request)
    with _engine(request).connect() as conn:
        names = catalog_of(conn, project_id)
    attributes = []
    for name in names.names():
        attribute = names.resolve(name)
        entry = {"name": name, "kind": attribute.kind, "type": attribute.type, "operators": operators_of(attribute)}
        if name in DURATIONS:
            entry["unit"] = "ms"
        attributes.append(entry)
    return JSONResponse(
        {
            "attributes": attributes,
            "behaviour": {
                "targets": ["event", "item", "page"],
                "operators": [
                    {"operator": "did", "fields": ["times", "days"]},
                    {"operator": "did_not", "fields": ["days"]},
                    {"operator": "stopped", "fields": ["since_days", "days"]},
                ],
                "event_types": [*WALKME_EVENT_TYPES, *sorted(PAGE_TYPES), "track"],
            },
            "units": list(UNIT_MS),
            "limits": {"rules": MAX_RULES, "depth": MAX_DEPTH, "list": MAX_LIST, "days": MAX_DAYS},
        }
    )


async def create_segment(request: Request) -> Response:
    project_id = _manage(request)
    fields = _segment_fields(await _json_body(request), partial=False)
    tree = _parse(_engine(request), project_id, fields["rules"])
    try:
        segment_id = _store(request).create(project_id, fields, _now())
    except DuplicateName:
        raise ApiError(409, "name_taken", f"a segment named {fields['name']!r} exists", "$.name") from None
    membership = _refresh(_engine(request), project_id, segment_id, tree)
    body = _segment_body(request, project_id, _store(request).get(project_id, segment_id))
    return JSONResponse({**body, "membership": membership}, status_code=201)


async def get_segment(request: Request) -> Response:
    project_id = _project(request)
    return JSONResponse(_segment_body(request, project_id, _get_segment(request, project_id)))


async def update_segment(request: Request) -> Response:
    project_id = _manage(request)
    row = _get_segment(request, project_id)
    fields = _segment_fields(await _json_body(request), partial=True)
    rules = fields.get("rules", msgspec.json.decode(row.rules))
    tree = _parse(_engine(request), project_id, rules)
    try:
        _store(request).update(project_id, row.id, fields, _now())
    except DuplicateName:
        raise ApiError(409, "name_taken", f"a segment named {fields['name']!r} exists", "$.name") from None
    membership = _refresh(_engine(request), project_id, row.id, tree) if "rules" in fields else None
    body = _segment_body(request, project_id, _store(request).get(project_id, row.id))
    return JSONResponse({**body, "membership": membership})


async def delete_segment(request: Request) -> Response:
    project_id = _manage(request)
    if not _store(request).delete(project_id, request.path_params["segment_id"]):
        raise ApiError(404, "not_found", "no such segment", "segment_id")
    return Response(status_code=204)


async def preview(request: Request) -> Response:
    """Count and a sample of members for rules that are not saved: `{"rules": …, "sample": 20}`."""
    project_id = _project(request)
    body = await _json_body(request)
    sample = body.get("sample", 20)
    if isinstance(sample, bool) or not isinstance(sample, int) or not 0 <= sample <= 100:
        raise ApiError(400, "invalid_request", "sample is a whole number from 0 to 100", "$.sample")
    engine = _engine(request)
    tree = _parse(engine, project_id, body.get("rules"))
    compiler = Compiler(project_id, _now(), engine.dialect.name)
    with engine.connect() as conn:
        count = member_count(request.app.state.segment_columns, conn, compiler, tree)
        rows = _member_rows(conn, compiler, tree, sample, 0) if sample else []
    return JSONResponse({"count": count, "sample": [profile_json(r) for r in rows]})


def _member_rows(conn: sa.Connection, compiler: Compiler, tree: Group, limit: int, offset: int) -> list:
    query = (
        sa.select(end_users)
        .where(end_users.c.project_id == compiler.project_id, compiler.condition(tree))
        .order_by(end_users.c.last_seen.desc(), end_users.c.user_key)
        .limit(limit)
        .offset(offset)
    )
    return conn.execute(query).all()


async def members(request: Request) -> Response:
    """`?limit=&offset=`, or `?format=csv` for every member as CSV (standard attributes and analytics properties)."""
    project_id = _project(request)
    row = _get_segment(request, project_id)
    engine = _engine(request)
    tree = _parse(engine, project_id, msgspec.json.decode(row.rules))
    compiler = Compiler(project_id, _now(), engine.dialect.name)
    if request.query_params.get("format") == "csv":
        filename = f"segment-{row.id}.csv"
        return StreamingResponse(
            _csv_rows(engine, compiler, tree),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
    offset = _int_param(request, "offset", 0)
    if offset < 0:
        raise ApiError(400, "invalid_request", "offset must be ≥ 0", "offset")
    with engine.connect() as conn:
        total = member_count(request.app.state.segment_columns, conn, compiler, tree)
        rows = _member_rows(conn, compiler, tree, _limit(request, 50, 1000), offset)
    return JSONResponse({"total": total, "offset": offset, "users": [profile_json(r) for r in rows]})


def _csv_rows(engine: sa.Engine, compiler: Compiler, tree: Group) -> Iterator[str]:
    properties = ("name", "role", "type", "status", "info")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["user_key", *STANDARD_ATTRIBUTES, *properties])
    with engine.connect() as conn:
        query = (
            sa.select(end_users)
            .where(end_users.c.project_id == compiler.project_id, compiler.condition(tree))
            .order_by(end_users.c.user_key)
        )
        for i, r in enumerate(conn.execution_options(yield_per=2_000).execute(query)):
            analytics = msgspec.json.decode(r.analytics_properties) if r.analytics_properties else {}
            writer.writerow(
                [
                    r.user_key,
                    *(getattr(r, STANDARD_COLUMNS[n].name) for n in STANDARD_ATTRIBUTES),
                    *(analytics.get(p) for p in properties),
                ]
            )
            if i % 500 == 0:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
    yield buffer.getvalue()


def _change_json(r) -> dict:
    return {"user_key": r.user_key, "segment_id": r.segment_id, "change": r.change, "ts": r.ts}


async def segment_changes(request: Request) -> Response:
    """Entered/left records of a segment: `?change=entered|left&since=<ms>` or `&days=7`."""
    project_id = _project(request)
    row = _get_segment(request, project_id)
    change = request.query_params.get("change")
    if change not in (None, "entered", "left"):
        raise ApiError(400, "invalid_request", "change is entered or left", "change")
    since = _int_param(request, "since")
    days = _int_param(request, "days")
    if days is not None:
        since = _now() - days * 86_400_000
    rows = _store(request).changes(
        project_id,
        row.id,
        change=change,
        since=since,
        limit=_limit(request, 100, 1000),
        offset=_int_param(request, "offset", 0),
    )
    return JSONResponse({"changes": [_change_json(r) for r in rows]})


async def user_segments(request: Request) -> Response:
    """Every saved segment with whether this user is in it and why, rule by rule."""
    project_id = _project(request)
    owner, _ = _owner(request, project_id)
    engine, now = _engine(request), _now()
    saved = _store(request).list(project_id)
    with engine.connect() as conn:
        catalog = catalog_of(conn, project_id)
        trees = [(row, parse(msgspec.json.decode(row.rules), catalog, "$.rules")) for row in saved]
        facts = load_facts(conn, project_id, owner, [t for _, t in trees], now)
    out = []
    for row, tree in trees:
        explanation = explain(tree, facts, now)
        out.append(
            {
                "id": row.id,
                "name": row.name,
                "member": explanation["result"] == "true",
                "explanation": explanation,
            }
        )
    return JSONResponse({"user_key": owner, "has_end_user_object": facts.exists, "segments": out})


async def evaluate_user(request: Request) -> Response:
    """Explain unsaved rules for one user: `{"rules": …}`."""
    project_id = _project(request)
    owner, _ = _owner(request, project_id)
    engine, now = _engine(request), _now()
    tree = _parse(engine, project_id, (await _json_body(request)).get("rules"))
    with engine.connect() as conn:
        facts = load_facts(conn, project_id, owner, [tree], now)
    explanation = explain(tree, facts, now)
    return JSONResponse({"user_key": owner, "member": explanation["result"] == "true", "explanation": explanation})


async def user_segment_history(request: Request) -> Response:
    project_id = _project(request)
    owner, _ = _owner(request, project_id)
    rows = _store(request).changes(project_id, user_keys=[owner], limit=_limit(request, 100, 1000))
    return JSONResponse({"user_key": owner, "changes": [_change_json(r) for r in rows]})


# --- the snippet's question: which client-visible segments am I in? ----------------------------


async def client_segments(request: Request) -> Response:
    """`GET /v1/segments?key=<write key>&env=&user_id=&anonymous_id=` → the client-visible segments the
    end user is in, from their stored End User Object (cached: `Settings.client_segments_cache_s`)."""
    collector = request.app.state.collector
    params = request.query_params
    key = params.get("key", "")
    grant = collector.projects.authenticate(key) if key else None
    if grant is None:
        return error_response(401, "unknown_key", "a valid write key is required", "key")
    env = params.get("env", "production")
    environments = collector.environments(grant.project_id)
    if env not in environments:
        return error_response(404, "unknown_environment", f"no environment {env!r}", "env")
    user_id, anon_id = params.get("user_id") or None, params.get("anonymous_id") or None
    if user_id is None and anon_id is None:
        return error_response(400, "invalid_request", "send user_id or anonymous_id", "user_id")
    _, _, user_key = identity_for(environments[env].uuid, user_id, anon_id)
    cache_key = (grant.project_id, user_key)
    cache: TTLCache = request.app.state.client_segments
    found = cache.get(cache_key)
    if found is None:
        found = _client_answer(request, grant.project_id, user_key)
        cache[cache_key] = found
    return cors_for(request, JSONResponse({"segments": found}), environments)


def _client_answer(request: Request, project_id: int, user_key: str) -> list[dict]:
    visible = _store(request).list(project_id, client_visible=True)
    if not visible:
        return []
    engine, now = _engine(request), _now()
    with engine.connect() as conn:
        catalog = catalog_of(conn, project_id)
        owner = owner_of(conn, project_id, user_key)
        trees = [(row, parse(msgspec.json.decode(row.rules), catalog, "$.rules")) for row in visible]
        facts = load_facts(conn, project_id, owner, [t for _, t in trees], now)
    return [{"id": row.id, "name": row.name} for row, tree in trees if compile_tree(tree)(facts, now) is True]


routes = [
    Route("/api/projects/{project_id}/segments", list_segments, methods=["GET"]),
    Route("/api/projects/{project_id}/segments", create_segment, methods=["POST"]),
    Route("/api/projects/{project_id}/segments/preview", preview, methods=["POST"]),
    Route("/api/projects/{project_id}/segments/catalog", catalog, methods=["GET"]),
    Route("/api/projects/{project_id}/segments/{segment_id}", get_segment, methods=["GET"]),
    Route("/api/projects/{project_id}/segments/{segment_id}", update_segment, methods=["PATCH"]),
    Route("/api/projects/{project_id}/segments/{segment_id}", delete_segment, methods=["DELETE"]),
    Route("/api/projects/{project_id}/segments/{segment_id}/members", members, methods=["GET"]),
    Route("/api/projects/{project_id}/segments/{segment_id}/changes", segment_changes, methods=["GET"]),
    Route(USERS + "/segments", user_segments, methods=["GET"]),
    Route(USERS + "/segments/evaluate", evaluate_user, methods=["POST"]),
    Route(USERS + "/segments/history", user_segment_history, methods=["GET"]),
    Route("/v1/segments", client_segments, methods=["GET"]),
]
