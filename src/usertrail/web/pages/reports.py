"""The engagement report page: plays, completions and completion rates of every WalkMe item, widget opens
and searches, over a date range and optionally a saved segment; Walk-Thru step funnels open in place
(fetched by /static/app/reports.js from the funnel API). Numbers come from the same functions and the
same parameter handling as the reports API (web/reports_api.py), so the page and the API agree."""

from __future__ import annotations

import asyncio
import datetime as dt
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from usertrail.reports import engagement
from usertrail.reports.engagement import FLOW_STEP_TYPES, ITEM_KINDS
from usertrail.store.segments import SegmentStore
from usertrail.web.errors import ApiError
from usertrail.web.pages.layout import context, page_principal, render
from usertrail.web.reports_api import _read, _scope
from usertrail.web.users_api import _require_uuid

TOP_ITEMS_CHARTED = 10
PRESET_DAYS = (7, 30, 90)


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def _form(request: Request, today: dt.date) -> dict[str, str]:
    """The filters as the page shows them: `from`/`to` dates (the last 30 days by default) and a segment."""
    q = request.query_params
    return {
        "from": q.get("from", "").strip() or _last_days(today, engagement.DEFAULT_DAYS)["from"],
        "to": q.get("to", "").strip() or today.isoformat(),
        "segment": q.get("segment", "").strip(),
    }


def _last_days(today: dt.date, days: int) -> dict[str, str]:
    return {"from": (today - dt.timedelta(days=days - 1)).isoformat(), "to": today.isoformat()}


def _query(form: dict[str, str], **changes: str) -> str:
    return urlencode({k: v for k, v in {**form, **changes}.items() if v})


def _summary(items: list[dict]) -> dict:
    plays = sum(i["plays"] for i in items)
    completable = [i for i in items if i["completions"] is not None]
    completions = sum(i["completions"] for i in completable)
    completable_plays = sum(i["plays"] for i in completable)
    return {
        "plays": plays,
        "completions": completions,
        "completion_rate": round(completions / completable_plays, 4) if completable_plays else None,
        "items": sum(1 for i in items if i["plays"]),
    }


def _item_chart(items: list[dict]) -> dict:
    top = sorted(items, key=lambda i: (-i["plays"], i["app_type"], i["object_id"]))[:TOP_ITEMS_CHARTED]
    return {
        "type": "bar",
        "horizontal": True,
        "labels": [f"{i['name'] or i['object_id']} ({i['label']})" for i in top],
        "series": [
            {"label": "Plays", "data": [i["plays"] for i in top]},
            {"label": "Completions", "data": [i["completions"] for i in top]},
        ],
    }


def _widget_chart(days: list[dict]) -> dict:
    return {
        "type": "line",
        "labels": [d["day"] for d in days],
        "series": [
            {"label": "Opens", "data": [d["opens"] for d in days]},
            {"label": "Searches", "data": [d["searches"] for d in days]},
        ],
    }


async def reports_page(request: Request) -> Response:
    """Engagement with WalkMe content over a date range (and segment), as cards, charts and tables."""
    principal = page_principal(request, "users.view")
    if isinstance(principal, Response):
        return principal
    project_id = principal.project_id
    today = _today()
    form = _form(request, today)
    try:
        _require_uuid(request, project_id)
        segments = await asyncio.to_thread(SegmentStore(request.app.state.collector.events.engine).list, project_id)
    except ApiError:
        segments = None  # without UUID settings there are no segments to filter by
    error, items, widget, segment = None, [], None, None
    try:
        scope, segment = _scope(request, project_id, {k: v for k, v in form.items() if v})
        rows, widget = await asyncio.gather(
            _read(request, lambda conn: engagement.items(conn, scope, list(ITEM_KINDS))),
            _read(request, lambda conn: engagement.widget(conn, scope, 10)),
        )
        items = [r.as_json() for r in engagement.sort_items(rows, "plays", descending=True)]
    except ApiError as exc:
        error = exc
    groups = [
        {"app_type": kind.app_type, "label": kind.label, "completable": bool(kind.completions),
         "funnel": kind.app_type in FLOW_STEP_TYPES, "items": [i for i in items if i["app_type"] == kind.app_type]}
        for kind in ITEM_KINDS.values()
    ]  # fmt: skip
    presets = [{"days": n, "query": _query(form, **_last_days(today, n))} for n in PRESET_DAYS]
    return render(
        request,
        "reports.html",
        context(request, project_id, "reports"),
        status=error.status if error else 200,
        form=form,
        query=_query(form),
        presets=presets,
        segments=segments,
        segment=segment,
        error=error,
        groups=groups,
        summary=_summary(items),
        item_chart=_item_chart(items),
        widget=widget,
        widget_chart=_widget_chart(widget.days) if widget else None,
    )


routes = [Route("/app/projects/{project_id}/reports", reports_page, methods=["GET"])]
