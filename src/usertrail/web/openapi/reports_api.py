"""Engagement reports on WalkMe content events: item plays and completions, step funnels, widget opens and
searches, over a date range and optionally a saved segment; JSON or CSV (docs/reports.md)."""

from __future__ import annotations

import msgspec

from usertrail.reports.engagement import ITEM_KINDS, ITEM_SORTS
from usertrail.web.openapi.model import JSONObject, Op, Param

TAG = "Reports"


class Range(msgspec.Struct):
    """The resolved range in ms; `to` is exclusive."""

    from_: int = msgspec.field(name="from")
    to: int = 0


class SegmentSummary(msgspec.Struct):
    id: str
    name: str
    members: int


class Item(msgspec.Struct):
    app_type: str
    label: str
    object_id: str
    name: str | None
    plays: int
    unique_users: int
    completions: int | None
    completion_rate: float | None
    last_event_ts: int


class ItemsReport(msgspec.Struct):
    range: Range
    segment: SegmentSummary | None
    items: list[Item]


class FunnelStep(msgspec.Struct):
    position: int
    step_id: str
    name: str | None
    reached: int
    played: int
    conversion: float | None
    conversion_from_first: float | None
    drop_off: float | None


class FunnelReport(msgspec.Struct):
    range: Range
    segment: SegmentSummary | None
    app_type: str
    flow_id: str
    order: str
    more_steps: int
    steps: list[FunnelStep]


class WidgetTotals(msgspec.Struct):
    opens: int
    searches: int
    unique_users: int


class WidgetDay(WidgetTotals):
    day: str = ""


class SearchTerm(msgspec.Struct):
    term: str
    searches: int
    unique_users: int


class WidgetReport(msgspec.Struct):
    range: Range
    segment: SegmentSummary | None
    totals: WidgetTotals
    days: list[WidgetDay]
    top_search_terms: list[SearchTerm]


class SearchTermsReport(msgspec.Struct):
    range: Range
    segment: SegmentSummary | None
    terms: list[SearchTerm]


class Definitions(msgspec.Struct):
    items: list[JSONObject]
    funnel_steps: JSONObject
    widget: JSONObject


_RANGE = (
    Param("from", "range start: ms, `YYYY-MM-DD` (UTC) or ISO 8601; default `to` − 30 days"),
    Param("to", "range end (exclusive; a date includes its day): ms, `YYYY-MM-DD` or ISO 8601; default now"),
    Param("segment", "a saved segment id: only its members' events"),
    Param("format", "JSON, or a CSV download", enum=("json", "csv"), default="json"),
)
_ERRORS = {
    404: "not_found: no such segment (`segment`)",
    409: "uuid_settings_required (with `segment`), or segment_invalid: the segment's rules no longer parse",
}

OPERATIONS = [
    Op(
        "GET",
        "/api/projects/{project_id}/reports/definitions",
        "What each report counts",
        permission="users.view",
        response=Definitions,
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/reports/items",
        "Plays, unique users, completions and rate per item",
        permission="users.view",
        query=(
            *_RANGE,
            Param("app_type", "comma-separated app types: " + ", ".join(ITEM_KINDS)),
            Param("sort", "sort column", enum=ITEM_SORTS, default="plays"),
            Param("order", "default desc for numbers, asc for names and ids", enum=("asc", "desc")),
        ),
        response=ItemsReport,
        errors=_ERRORS,
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/reports/items/{app_type}/{object_id}/funnel",
        "The step funnel of a Walk-Thru or Smart Walk-Thru, per session, in order",
        permission="users.view",
        query=(*_RANGE, Param("steps", "comma-separated step ids in order (at most 100); default: observed order")),
        response=FunnelReport,
        errors=_ERRORS,
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/reports/widget",
        "Widget opens and searches per day, top terms",
        permission="users.view",
        query=(*_RANGE, Param("terms", "top terms, 0–100", int, default=10)),
        response=WidgetReport,
        errors=_ERRORS,
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/reports/widget/search-terms",
        "The most searched widget terms",
        permission="users.view",
        query=(*_RANGE, Param("limit", "1–10,000", int, default=100)),
        response=SearchTermsReport,
        errors=_ERRORS,
    ),
]
