"""The overview API: activity per day and the top pages of a project (docs/admin-app.md#overview).

`from` / `to` take ms, a UTC date (`YYYY-MM-DD`; `to` includes the whole day) or an ISO 8601 time,
as the reports do; `to` defaults to now and `from` to 30 days before `to`; at most 366 days.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from usertrail.reports import overview
from usertrail.reports.engagement import BadParameter, TimeRange, parse_range
from usertrail.web.auth import require
from usertrail.web.errors import ApiError


def _engine(request: Request) -> sa.Engine:
    return request.app.state.collector.events.engine


def time_range(request: Request) -> TimeRange:
    """The request's `from` / `to` as a range of at most overview.MAX_DAYS days; 400 naming the parameter."""
    params = request.query_params
    try:
        return overview.check_range(parse_range(params.get("from"), params.get("to"), int(time.time() * 1000)))
    except BadParameter as exc:
        raise ApiError(400, "invalid_request", exc.reason, exc.path) from None


async def daily(request: Request) -> Response:
    """Active users, sessions and events (closed sessions, by start day), dropped and rejected events per day."""
    project_id = require(request, "project.view").project_id
    span = time_range(request)

    def read() -> overview.Daily:
        with _engine(request).connect() as conn:
            return overview.daily(conn, project_id, span)

    result = await run_in_threadpool(read)
    return JSONResponse({**span.as_json(), **result.as_json()})


async def pages(request: Request) -> Response:
    """The most viewed pages of the range (`limit`, 1–100, default 10)."""
    project_id = require(request, "project.view").project_id
    span = time_range(request)
    raw = request.query_params.get("limit", "10")
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise ApiError(400, "invalid_request", "limit must be a whole number from 1 to 100", "limit")

    def read() -> overview.TopPages:
        with _engine(request).connect() as conn:
            return overview.top_pages(conn, project_id, span, int(raw))

    result = await run_in_threadpool(read)
    return JSONResponse({**span.as_json(), **result.as_json()})


routes = [
    Route("/api/projects/{project_id}/stats/daily", daily, methods=["GET"]),
    Route("/api/projects/{project_id}/stats/pages", pages, methods=["GET"]),
]
