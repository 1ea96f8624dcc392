"""The overview: activity per day and the top pages of a project (docs/admin-app.md#overview)."""

from __future__ import annotations

import msgspec

from usertrail.web.openapi.model import JSONObject, Op, Param

TAG = "Overview"


class Daily(msgspec.Struct):
    """The resolved range in ms (`to` exclusive); per UTC day of it, active users, sessions and events of
    the closed sessions that started that day, and the dropped and rejected events; the range's totals;
    drops and rejections by reason."""

    from_: int = msgspec.field(name="from")
    to: int
    days: list[JSONObject]
    totals: JSONObject
    dropped_by_reason: dict[str, int]
    rejected_by_reason: dict[str, int]


class TopPages(msgspec.Struct):
    """The resolved range in ms (`to` exclusive) and its most viewed pages (by host and path); `complete`
    is false when the range held more page views than are counted, and `counted_since` is then the oldest
    one counted."""

    from_: int = msgspec.field(name="from")
    to: int
    pages: list[JSONObject]
    page_views: int
    complete: bool
    counted_since: int | None


_RANGE = (
    Param("from", "range start: ms, `YYYY-MM-DD` (UTC) or ISO 8601; default `to` − 30 days"),
    Param("to", "range end (exclusive; a date includes its day): ms, `YYYY-MM-DD` or ISO 8601; default now"),
)

OPERATIONS = [
    Op(
        "GET",
        "/api/projects/{project_id}/stats/daily",
        "Active users, sessions and events per day; dropped and rejected events per day and by reason",
        permission="project.view",
        query=_RANGE,
        response=Daily,
        errors={400: "invalid_request: a bad `from`/`to`, or a range over 366 days"},
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/stats/pages",
        "The most viewed pages of the range",
        permission="project.view",
        query=(*_RANGE, Param("limit", "how many pages, 1–100", int, default=10)),
        response=TopPages,
        errors={400: "invalid_request: a bad `from`/`to`/`limit`"},
    ),
]
