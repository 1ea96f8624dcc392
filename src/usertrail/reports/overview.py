"""The project overview (docs/admin-app.md#overview): activity per UTC day, the top pages, and what was
dropped or rejected, over a time range of at most `MAX_DAYS` days.

Every number comes from one indexed range scan, so the cost grows with the range's activity and not
with the project's history:

- active users, sessions and events per day read the closed sessions (the index
  `sessions (project_id, start_ts, status, is_empty, user_key, event_count)` covers the query). A day's
  numbers belong to the sessions that started on it; active users are session owners, so a person
  who signed in part-way counts once, and empty sessions (no interaction, at most one page view)
  count as events but not as sessions or active users, as in the End User Object;
- top pages count page views (`sessions.rules.PAGE_TYPES`, `schema.PAGE_VIEWS_WHERE`) through a
  partial index on `events (project_id, ts)` that holds page views only, so other events cost nothing
  to index; at most `PAGE_VIEW_LIMIT` page views (the latest in the range) are read, and the answer
  says when the range held more and from when it counted;
- dropped events are the daily tallies of `drop_counts`; rejected events are a range of their primary
  key `(project_id, id)`, whose ids start with the time they arrived.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from usertrail.reports.engagement import DAY_MS, BadParameter, TimeRange, _day_name
from usertrail.store.schema import PAGE_VIEWS_WHERE, drop_counts, events, rejected_events, sessions

MAX_DAYS = 366
# Each page view read costs one row lookup (URLs and titles have no length limit, so no index can
# hold them): the cap keeps the query near a quarter of a second (docs/benchmarks.md#overview-issue-7).
PAGE_VIEW_LIMIT = 50_000


def check_range(span: TimeRange) -> TimeRange:
    """`span` if it covers at most MAX_DAYS days; BadParameter naming `from` otherwise."""
    if span.end - span.start > MAX_DAYS * DAY_MS:
        raise BadParameter("from", f"the range may cover at most {MAX_DAYS} days")
    return span


def _day_numbers(span: TimeRange) -> range:
    return range(span.start // DAY_MS, (span.end - 1) // DAY_MS + 1)


def _day_text(span: TimeRange) -> tuple[str, str]:
    """The first and last UTC day (`YYYY-MM-DD`) the range touches."""
    days = _day_numbers(span)
    return _day_name(days[0]), _day_name(days[-1])


@dataclass(frozen=True)
class Daily:
    """Per-day series (one entry per UTC day of the range, zeros included) and the range's totals."""

    days: list[dict]
    totals: dict[str, int]
    dropped_by_reason: dict[str, int]
    rejected_by_reason: dict[str, dict[str, int]]

    def as_json(self) -> dict:
        return {
            "days": self.days,
            "totals": self.totals,
            "dropped_by_reason": self.dropped_by_reason,
            "rejected_by_reason": self.rejected_by_reason,
        }


def session_counts(project_id: int, span: TimeRange, by_day: bool) -> sa.Select:
    """Active users, sessions and events of the closed sessions that started in `span`, per start day
    (`by_day`) or over the whole range (active users then count each owner once); one index range."""
    s = sessions.c
    counted = sa.not_(s.is_empty)
    columns = [
        sa.func.count(sa.distinct(sa.case((counted, s.user_key)))).label("active_users"),
        sa.func.sum(sa.case((counted, 1), else_=0)).label("sessions"),
        sa.func.sum(s.event_count).label("events"),
    ]
    query = sa.select(*columns).where(
        s.project_id == project_id, s.start_ts >= span.start, s.start_ts < span.end, s.status == "closed"
    )
    if by_day:
        day = (s.start_ts // DAY_MS).label("day")
        query = query.add_columns(day).group_by(day)
    return query


def daily(conn: sa.Connection, project_id: int, span: TimeRange) -> Daily:
    """Active users, sessions, events, dropped and rejected events per UTC day of `span`, with totals."""
    by_day = {r.day: r for r in conn.execute(session_counts(project_id, span, by_day=True))}
    total = conn.execute(session_counts(project_id, span, by_day=False)).one()

    first, last = _day_text(span)
    d = drop_counts.c
    drops: dict[str, dict[str, int]] = {}
    for row in conn.execute(
        sa.select(d.day, d.reason, sa.func.sum(d.count).label("n"))
        .where(d.project_id == project_id, d.day >= first, d.day <= last)
        .group_by(d.day, d.reason)
    ):
        drops.setdefault(row.day, {})[row.reason] = int(row.n)

    r = rejected_events.c
    # Ids are "<13-digit ms>-<random>": comparing them as text compares the times they arrived.
    rejected_where = [r.project_id == project_id, r.id >= f"{span.start:013d}", r.id < f"{span.end:013d}"]
    rejected_by_reason: dict[str, dict[str, int]] = {}
    for row in conn.execute(
        sa.select(r.reason, r.status, sa.func.count().label("n")).where(*rejected_where).group_by(r.reason, r.status)
    ):
        rejected_by_reason.setdefault(row.reason, {})[row.status] = row.n
    arrived_day = sa.cast(sa.func.substr(r.id, 1, 13), sa.BigInteger) // DAY_MS
    rejected_days = {
        row.day: row.n
        for row in conn.execute(
            sa.select(arrived_day.label("day"), sa.func.count().label("n")).where(*rejected_where).group_by(arrived_day)
        )
    }

    days = []
    for n in _day_numbers(span):
        row, name = by_day.get(n), _day_name(n)
        days.append(
            {
                "day": name,
                "active_users": row.active_users if row else 0,
                "sessions": int(row.sessions or 0) if row else 0,
                "events": int(row.events or 0) if row else 0,
                "dropped": sum(drops.get(name, {}).values()),
                "rejected": rejected_days.get(n, 0),
            }
        )
    dropped_by_reason: dict[str, int] = {}
    for reasons in drops.values():
        for reason, n in reasons.items():
            dropped_by_reason[reason] = dropped_by_reason.get(reason, 0) + n
    totals = {
        "active_users": total.active_users,
        "sessions": int(total.sessions or 0),
        "events": int(total.events or 0),
        "dropped": sum(dropped_by_reason.values()),
        "rejected": sum(n for statuses in rejected_by_reason.values() for n in statuses.values()),
        "rejected_pending": sum(statuses.get("pending", 0) for statuses in rejected_by_reason.values()),
    }
    return Daily(days, totals, dict(sorted(dropped_by_reason.items(), key=lambda kv: -kv[1])), rejected_by_reason)


@dataclass(frozen=True)
class TopPages:
    """The most viewed pages of a range: host, path, a title (the greatest when it varied), views, user keys."""

    pages: list[dict]
    page_views: int  # page views read
    complete: bool  # False when the range held more than PAGE_VIEW_LIMIT page views (the latest were read)
    counted_since: int | None  # the time of the oldest page view read (ms); None when there was none

    def as_json(self) -> dict:
        return {
            "pages": self.pages,
            "page_views": self.page_views,
            "complete": self.complete,
            "counted_since": self.counted_since,
        }


def page_views(project_id: int, span: TimeRange) -> sa.Select:
    """The latest PAGE_VIEW_LIMIT page views of `span`, newest first, through the partial index."""
    e = events.c
    return (
        sa.select(e.url_host, e.url_path, e.title, e.user_key, e.ts)
        .where(e.project_id == project_id, sa.text(PAGE_VIEWS_WHERE), e.ts >= span.start, e.ts < span.end)
        .order_by(e.ts.desc())
        .limit(PAGE_VIEW_LIMIT)
    )


def top_pages(conn: sa.Connection, project_id: int, span: TimeRange, limit: int = 10) -> TopPages:
    """The `limit` pages with the most page views in `span` (by host and path), most viewed first."""
    views = page_views(project_id, span).subquery("views")
    v = views.c
    rows = conn.execute(
        sa.select(
            v.url_host,
            v.url_path,
            sa.func.max(v.title).label("title"),
            sa.func.count().label("views"),
            sa.func.count(sa.distinct(v.user_key)).label("visitors"),
            sa.func.sum(sa.func.count()).over().label("read"),
            sa.func.min(sa.func.min(v.ts)).over().label("since"),
        )
        .group_by(v.url_host, v.url_path)
        .order_by(sa.func.count().desc(), v.url_host, v.url_path)
        .limit(limit)
    ).all()
    read = int(rows[0].read) if rows else 0
    # More page views than were read? One look past the limit in the index answers it.
    beyond = read == PAGE_VIEW_LIMIT and (
        conn.execute(page_views(project_id, span).offset(PAGE_VIEW_LIMIT).limit(1)).first() is not None
    )
    pages = [
        {"host": r.url_host, "path": r.url_path, "title": r.title, "views": r.views, "visitors": r.visitors}
        for r in rows
    ]
    return TopPages(pages, read, not beyond, int(rows[0].since) if rows else None)
