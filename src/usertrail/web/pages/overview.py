"""The overview page (active users, sessions and events per day, top pages, dropped and rejected events)
and the rejected-events page with its re-process and discard actions."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from usertrail.reports import overview
from usertrail.reports.engagement import DAY_MS, DEFAULT_DAYS, TimeRange
from usertrail.web.errors import ApiError
from usertrail.web.overview_api import time_range
from usertrail.web.pages.layout import context, page_principal, render

REJECTED_PAGE_SIZE = 50
REJECTED_STATUSES = ("pending", "reprocessed", "discarded", "all")


def _form_dates(span: TimeRange) -> dict[str, str]:
    """The range as the form's two dates (`to` is the last day it includes)."""

    def day(ms: int) -> str:
        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d")

    return {"from": day(span.start), "to": day(span.end - 1)}


def _chart(kind: str, labels: list[str], series: dict[str, list[int]], horizontal: bool = False) -> dict:
    return {
        "type": kind,
        "labels": labels,
        "series": [{"label": name, "data": data} for name, data in series.items()],
        "horizontal": horizontal,
    }


async def overview_page(request: Request) -> Response:
    """The project at a glance over a date range (default: the last 30 days)."""
    principal = page_principal(request, "project.view")
    if isinstance(principal, Response):
        return principal
    project_id = principal.project_id
    error = None
    try:
        span = time_range(request)
    except ApiError as exc:
        error = exc
        now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
        span = TimeRange(now + 1 - DEFAULT_DAYS * DAY_MS, now + 1)
    engine = request.app.state.collector.events.engine

    def read(compute: Callable[..., Any]) -> Any:
        with engine.connect() as conn:
            return compute(conn, project_id, span)

    # The two reads are independent: on two connections they run side by side (SQLite releases the GIL).
    daily, pages = await asyncio.gather(
        asyncio.to_thread(read, overview.daily), asyncio.to_thread(read, overview.top_pages)
    )
    labels = [d["day"] for d in daily.days]
    charts = {
        "users": _chart("line", labels, {"Active users": [d["active_users"] for d in daily.days]}),
        "sessions": _chart("bar", labels, {"Sessions": [d["sessions"] for d in daily.days]}),
        "events": _chart("bar", labels, {"Events": [d["events"] for d in daily.days]}),
        "drops": _chart(
            "bar", list(daily.dropped_by_reason), {"Dropped": list(daily.dropped_by_reason.values())}, horizontal=True
        ),
    }
    return render(
        request,
        "overview.html",
        context(request, project_id, "overview"),
        status=400 if error else 200,
        form=_form_dates(span),
        error=error,
        daily=daily,
        pages=pages,
        charts=charts,
        page_view_limit=overview.PAGE_VIEW_LIMIT,
    )


async def rejected_page(request: Request) -> Response:
    """Rejected events (oldest first, by status), with re-process and discard through the admin API."""
    principal = page_principal(request, "settings.manage")
    if isinstance(principal, Response):
        return principal
    project_id = principal.project_id
    status = request.query_params.get("status", "pending")
    after = request.query_params.get("after") or None
    error = None
    if status not in REJECTED_STATUSES:
        error = ApiError(400, "invalid_request", "status must be pending, reprocessed, discarded or all", "status")
        status = "pending"
    rows = await asyncio.to_thread(
        request.app.state.collector.events.rejected,
        project_id,
        None if status == "all" else status,
        after,
        REJECTED_PAGE_SIZE + 1,
    )
    more = len(rows) > REJECTED_PAGE_SIZE
    rows = rows[:REJECTED_PAGE_SIZE]
    items = [
        {
            "id": r.id,
            "received_at": r.received_at,
            "env": r.env,
            "source": r.source,
            "reason": r.reason,
            "message": r.message,
            "path": r.path,
            "status": r.status,
            "payload": r.payload,
        }
        for r in rows
    ]
    return render(
        request,
        "rejected.html",
        context(request, project_id, "overview"),
        status=400 if error else 200,
        items=items,
        status_filter=status,
        statuses=REJECTED_STATUSES,
        next_after=items[-1]["id"] if more else None,
        error=error,
    )


routes = [
    Route("/app/projects/{project_id}/overview", overview_page, methods=["GET"]),
    Route("/app/projects/{project_id}/rejected", rejected_page, methods=["GET"]),
]
