"""The monthly quota of recorded sessions per project.

The count starts at the activation (the project's first recording decision) or at the last quota
update, and resets every month on that day of the month (00:00 UTC; clamped to the month's last
day, so an activation on the 31st resets on 30 April and 28/29 February). Taking a unit of quota
is one conditional UPDATE, so concurrent session starts can never take more than the quota.
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from usertrail.store.database import insert_ignore
from usertrail.store.schema import playback_projects

DEFAULT_QUOTA = 1_000
FIRST_KEY_VERSION = 1


def _utc(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def _ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


def _reset_in(year: int, month: int, day: int) -> dt.datetime:
    return dt.datetime(year, month, min(day, calendar.monthrange(year, month)[1]), tzinfo=dt.UTC)


def _previous_month(year: int, month: int) -> tuple[int, int]:
    return (year - 1, 12) if month == 1 else (year, month - 1)


def _next_month(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def period_start(anchor_ms: int, now_ms: int) -> int:
    """Start of the quota period containing `now_ms`: the latest monthly reset, never before the anchor."""
    anchor, now = _utc(anchor_ms), _utc(now_ms)
    reset = _reset_in(now.year, now.month, anchor.day)
    if reset > now:
        reset = _reset_in(*_previous_month(now.year, now.month), anchor.day)
    return max(anchor_ms, _ms(reset))


def next_reset(anchor_ms: int, now_ms: int) -> int:
    """When the period containing `now_ms` ends."""
    start = _utc(period_start(anchor_ms, now_ms))
    return _ms(_reset_in(*_next_month(start.year, start.month), _utc(anchor_ms).day))


@dataclass(frozen=True)
class Usage:
    quota: int
    used: int
    period_start: int
    next_reset: int
    anchor: int | None  # None: no recording was decided yet, so the quota has not started

    def as_json(self) -> dict:
        return {
            "quota": self.quota,
            "used": self.used,
            "remaining": max(0, self.quota - self.used),
            "period_start": self.period_start,
            "next_reset": self.next_reset,
            "activated_at": self.anchor,
        }


def ensure_project(conn: sa.Connection, project_id: int, now_ms: int) -> None:
    """Activate playback accounting for the project (default quota, key version 1) if not yet done."""
    conn.execute(
        insert_ignore(playback_projects, conn.dialect.name).values(
            project_id=project_id,
            key_version=FIRST_KEY_VERSION,
            quota=DEFAULT_QUOTA,
            quota_anchor=now_ms,
            period_start=now_ms,
            used=0,
            updated_at=now_ms,
        )
    )


def take(conn: sa.Connection, project_id: int, now_ms: int) -> bool:
    """Count one more recorded session if the quota of the current period allows it."""
    ensure_project(conn, project_id, now_ms)
    anchor = conn.execute(
        sa.select(playback_projects.c.quota_anchor).where(playback_projects.c.project_id == project_id)
    ).scalar_one()
    start = period_start(anchor, now_ms)
    t = playback_projects
    same_period = t.c.period_start == start
    taken = conn.execute(
        t.update()
        .where(
            t.c.project_id == project_id,
            t.c.quota > 0,
            sa.or_(t.c.period_start != start, t.c.used < t.c.quota),
        )
        .values(used=sa.case((same_period, t.c.used + 1), else_=1), period_start=start)
    ).rowcount
    return taken == 1


def set_quota(conn: sa.Connection, project_id: int, quota: int, now_ms: int) -> None:
    """A new monthly quota: the count restarts at zero and today becomes the reset day."""
    ensure_project(conn, project_id, now_ms)
    conn.execute(
        playback_projects.update()
        .where(playback_projects.c.project_id == project_id)
        .values(quota=quota, quota_anchor=now_ms, period_start=now_ms, used=0, updated_at=now_ms)
    )


def usage(conn: sa.Connection, project_id: int, now_ms: int) -> Usage:
    row = conn.execute(sa.select(playback_projects).where(playback_projects.c.project_id == project_id)).first()
    if row is None:
        return Usage(DEFAULT_QUOTA, 0, now_ms, next_reset(now_ms, now_ms), None)
    start = period_start(row.quota_anchor, now_ms)
    used = row.used if row.period_start == start else 0
    return Usage(row.quota, used, start, next_reset(row.quota_anchor, now_ms), row.quota_anchor)
