"""The queue of end users whose sessions must be recomputed (written by ingest, read by the processor)."""

from __future__ import annotations

import time
from collections.abc import Iterable

import sqlalchemy as sa

# On an existing mark: keep the earliest `since_ts` and the first mark's time, bump `version`, record
# the latest mark's time. Plain SQL handed to the driver: every ingest commit runs it for each user it
# touched, and SQLAlchemy's per-row parameter processing cost more than the upsert.
_UPSERT = (
    "INSERT INTO pending_users (project_id, user_key, since_ts, version, claimed_until, claim, marked_at,"
    " first_marked_at) {source} ON CONFLICT (project_id, user_key) DO UPDATE SET"
    " since_ts = {least}(pending_users.since_ts, excluded.since_ts),"
    " version = pending_users.version + 1, marked_at = excluded.marked_at"
)
_SQLITE = _UPSERT.format(source="VALUES (?, ?, ?, 0, NULL, NULL, ?, ?)", least="min")
# PostgreSQL: the marks as three column arrays, one statement whatever their number.
_POSTGRESQL = _UPSERT.format(
    source="SELECT p, k, s, 0, NULL, NULL, %s, %s FROM unnest(%s::integer[], %s::text[], %s::bigint[]) AS m (p, k, s)",
    least="least",
)


def mark_pending(conn: sa.Connection, items: Iterable[tuple[int, str, int]], marked_at: int | None = None) -> None:
    """Ask for (project, user, since) to be recomputed; keeps the earliest `since` per user.

    `marked_at` is the server time of the mark (default: now); 0 asks for the work without delay.
    Marks go in key order, so concurrent commits lock the same rows in one order (no deadlocks).
    """
    if marked_at is None:
        marked_at = int(time.time() * 1000)
    earliest: dict[tuple[int, str], int] = {}
    for project_id, key, since in items:
        k = (project_id, key)
        earliest[k] = min(since, earliest.get(k, since))
    if not earliest:
        return
    marks = sorted(earliest.items())
    if conn.dialect.name == "postgresql":
        projects, keys, since = [p for (p, _), _ in marks], [k for (_, k), _ in marks], [s for _, s in marks]
        conn.exec_driver_sql(_POSTGRESQL, (marked_at, marked_at, projects, keys, since))
    else:
        conn.exec_driver_sql(_SQLITE, [(p, k, s, marked_at, marked_at) for (p, k), s in marks])
