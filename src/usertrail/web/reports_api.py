"""The engagement reports API (admin token): WalkMe items, Walk-Thru step funnels and widget use,
as JSON or CSV (`?format=csv`). Definitions and parameters: docs/reports.md.

Reports are aggregates and work without UUID settings; only the `segment` filter needs them, like
every segment route (409 `uuid_settings_required`).
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

import msgspec
import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from usertrail.reports import engagement
from usertrail.reports.engagement import (
    FLOW_STEP_TYPES,
    ITEM_KINDS,
    ITEM_SORTS,
    MAX_FUNNEL_STEPS,
    BadParameter,
    Scope,
)
from usertrail.segments.columns import member_count
from usertrail.segments.membership import catalog_of
from usertrail.segments.model import InvalidRule, parse
from usertrail.segments.sql import Compiler
from usertrail.web.auth import require
from usertrail.web.errors import ApiError
from usertrail.web.users_api import _require_uuid

T = TypeVar("T")


def _now() -> int:
    return int(time.time() * 1000)


def _engine(request: Request) -> sa.Engine:
    return request.app.state.collector.events.engine


def _format(request: Request) -> str:
    fmt = request.query_params.get("format", "json")
    if fmt not in ("json", "csv"):
        raise ApiError(400, "invalid_request", "format must be json or csv", "format")
    return fmt


def _whole(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ApiError(400, "invalid_request", f"{name} must be a whole number from {low} to {high}", name)
    return int(raw)


def _scope(request: Request, project_id: int, params: Mapping[str, str] | None = None) -> tuple[Scope, dict | None]:
    """The project, the `from`/`to` range and the optional `segment` of the query (or of `params`, as the
    report page fills them); the segment's summary."""
    params = request.query_params if params is None else params
    now = _now()
    try:
        time_range = engagement.parse_range(params.get("from"), params.get("to"), now)
    except BadParameter as exc:
        raise ApiError(400, "invalid_request", exc.reason, exc.path) from None
    segment_id = params.get("segment")
    if not segment_id:
        return Scope(project_id, time_range), None
    _require_uuid(request, project_id)
    row = request.app.state.segments.get(project_id, segment_id)
    if row is None:
        raise ApiError(404, "not_found", f"no segment {segment_id!r} in this project", "segment")
    engine = _engine(request)
    with engine.connect() as conn:
        try:
            tree = parse(msgspec.json.decode(row.rules), catalog_of(conn, project_id), "$.rules")
        except InvalidRule as exc:  # e.g. a custom attribute it names was removed since
            raise ApiError(409, "segment_invalid", exc.reason, "segment") from None
        compiler = Compiler(project_id, now, engine.dialect.name)
        members = member_count(request.app.state.segment_columns, conn, compiler, tree)
    summary = {"id": row.id, "name": row.name, "members": members}
    return Scope(project_id, time_range, compiler.members(tree)), summary


async def _read(request: Request, report: Callable[[sa.Connection], T]) -> T:
    """Run a report on its own connection in a worker thread (reports can take seconds)."""
    engine = _engine(request)

    def run() -> T:
        with engine.connect() as conn:
            return report(conn)

    try:
        return await run_in_threadpool(run)
    except BadParameter as exc:
        raise ApiError(400, "invalid_request", exc.reason, exc.path) from None


def _csv(filename: str, header: list[str], rows: Iterable[Iterable]) -> Response:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(["" if v is None else v for v in row] for row in rows)
    return Response(
        buffer.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _envelope(scope: Scope, segment: dict | None) -> dict:
    return {"range": scope.range.as_json(), "segment": segment}


def _app_types(request: Request) -> list[str]:
    raw = request.query_params.get("app_type")
    if not raw:
        return list(ITEM_KINDS)
    chosen = [a.strip() for a in raw.split(",")]
    for a in chosen:
        if a not in ITEM_KINDS:
            raise ApiError(400, "invalid_request", f"app_type {a!r} is not one of {', '.join(ITEM_KINDS)}", "app_type")
    return list(dict.fromkeys(chosen))


async def item_report(request: Request) -> Response:
    """`?from=&to=&app_type=wt,bizFlow&segment=&sort=plays&order=desc&format=json|csv`."""
    project_id = require(request, "users.view").project_id
    fmt = _format(request)
    app_types = _app_types(request)
    sort = request.query_params.get("sort", "plays")
    if sort not in ITEM_SORTS:
        raise ApiError(400, "invalid_request", f"sort must be one of {', '.join(ITEM_SORTS)}", "sort")
    order = request.query_params.get("order", "asc" if sort in ("name", "app_type", "object_id") else "desc")
    if order not in ("asc", "desc"):
        raise ApiError(400, "invalid_request", "order must be asc or desc", "order")
    scope, segment = _scope(request, project_id)
    rows = await _read(request, lambda conn: engagement.items(conn, scope, app_types))
    rows = engagement.sort_items(rows, sort, descending=order == "desc")
    items = [r.as_json() for r in rows]
    if fmt == "csv":
        columns = ["app_type", "label", "object_id", "name", "plays", "unique_users", "completions",
                   "completion_rate", "last_event_ts"]  # fmt: skip
        name = f"items-{project_id}-{scope.range.start}-{scope.range.end}.csv"
        return _csv(name, columns, ([item[c] for c in columns] for item in items))
    return JSONResponse({**_envelope(scope, segment), "items": items})


def _steps(request: Request) -> list[str] | None:
    values = [v for raw in request.query_params.getlist("steps") for v in raw.split(",")]
    if not values:
        return None
    steps = [v.strip() for v in values]
    if any(not s for s in steps):
        raise ApiError(400, "invalid_request", "steps is a comma-separated list of step ids, none empty", "steps")
    if len(set(steps)) != len(steps):
        raise ApiError(400, "invalid_request", "a step may appear only once in steps", "steps")
    if len(steps) > MAX_FUNNEL_STEPS:
        raise ApiError(400, "invalid_request", f"at most {MAX_FUNNEL_STEPS} steps", "steps")
    return steps


async def funnel_report(request: Request) -> Response:
    """`/reports/items/{wt|bizFlow}/{id}/funnel?steps=a,b,c&from=&to=&segment=&format=json|csv`."""
    project_id = require(request, "users.view").project_id
    fmt = _format(request)
    app_type, flow_id = request.path_params["app_type"], request.path_params["object_id"]
    if app_type not in FLOW_STEP_TYPES:
        raise ApiError(
            400,
            "invalid_request",
            f"step funnels exist for {' and '.join(FLOW_STEP_TYPES)} (Walk-Thrus and Smart Walk-Thrus), "
            f"not {app_type!r}",
            "app_type",
        )
    steps = _steps(request)
    scope, segment = _scope(request, project_id)
    result = await _read(request, lambda conn: engagement.funnel(conn, scope, app_type, flow_id, steps))
    step_rows = result.step_json()
    if fmt == "csv":
        columns = ["position", "step_id", "name", "reached", "played", "conversion", "conversion_from_first",
                   "drop_off"]  # fmt: skip
        name = f"funnel-{project_id}-{app_type}-{flow_id}-{scope.range.start}-{scope.range.end}.csv"
        return _csv(name, columns, ([s[c] for c in columns] for s in step_rows))
    return JSONResponse(
        {
            **_envelope(scope, segment),
            "app_type": app_type,
            "flow_id": flow_id,
            "order": result.order,
            "more_steps": result.more_steps,
            "steps": step_rows,
        }
    )


async def widget_report(request: Request) -> Response:
    """`?from=&to=&segment=&terms=10&format=json|csv` (CSV: the days)."""
    project_id = require(request, "users.view").project_id
    fmt = _format(request)
    terms = _whole(request, "terms", 10, 0, 100)
    scope, segment = _scope(request, project_id)
    report = await _read(request, lambda conn: engagement.widget(conn, scope, 0 if fmt == "csv" else terms))
    if fmt == "csv":
        columns = ["day", "opens", "searches", "unique_users"]
        name = f"widget-{project_id}-{scope.range.start}-{scope.range.end}.csv"
        return _csv(name, columns, ([d[c] for c in columns] for d in report.days))
    return JSONResponse(
        {
            **_envelope(scope, segment),
            "totals": report.totals,
            "days": report.days,
            "top_search_terms": report.top_search_terms,
        }
    )


async def search_terms_report(request: Request) -> Response:
    """`?from=&to=&segment=&limit=100&format=json|csv`."""
    project_id = require(request, "users.view").project_id
    fmt = _format(request)
    limit = _whole(request, "limit", 100, 1, 10_000)
    scope, segment = _scope(request, project_id)
    terms = await _read(request, lambda conn: engagement.search_terms(conn, scope, limit))
    if fmt == "csv":
        columns = ["term", "searches", "unique_users"]
        name = f"search-terms-{project_id}-{scope.range.start}-{scope.range.end}.csv"
        return _csv(name, columns, ([t[c] for c in columns] for t in terms))
    return JSONResponse({**_envelope(scope, segment), "terms": terms})


async def definitions(request: Request) -> Response:
    """What each report counts: the play and completion events per app type, step and widget events."""
    require(request, "users.view")
    return JSONResponse(
        {
            "items": [
                {"app_type": k.app_type, "label": k.label, "plays": list(k.plays), "completions": list(k.completions)}
                for k in ITEM_KINDS.values()
            ],
            "funnel_steps": {
                flow: {"app_type": step, "event": engagement.STEP_PLAY} for flow, step in FLOW_STEP_TYPES.items()
            },
            "widget": {
                "open": {"type": engagement.WIDGET_OPEN[0], "app_type": engagement.WIDGET_OPEN[1]},
                "search": {"type": engagement.SEARCH_TYPE, "or_app_type": engagement.SEARCH_APP_TYPE},
                "search_term": "data.oName",
            },
        }
    )


routes = [
    Route("/api/projects/{project_id}/reports/definitions", definitions, methods=["GET"]),
    Route("/api/projects/{project_id}/reports/items", item_report, methods=["GET"]),
    Route("/api/projects/{project_id}/reports/items/{app_type}/{object_id}/funnel", funnel_report, methods=["GET"]),
    Route("/api/projects/{project_id}/reports/widget", widget_report, methods=["GET"]),
    Route("/api/projects/{project_id}/reports/widget/search-terms", search_terms_report, methods=["GET"]),
]
