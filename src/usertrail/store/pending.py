"""The queue of end users whose sessions must be recomputed (written by ingest, read by the processor)."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa

from usertrail.store.database import upsert_pending
from usertrail.store.schema import pending_users


def mark_pending(conn: sa.Connection, items: Iterable[tuple[int, str, int]]) -> None:
    """Ask for (project, user, since) to be recomputed; keeps the earliest `since` per user."""
    earliest: dict[tuple[int, str], int] = {}
    for project_id, key, since in items:
        k = (project_id, key)
        earliest[k] = min(since, earliest.get(k, since))
    if not earliest:
        return
    conn.execute(
        upsert_pending(pending_users, conn.dialect.name, ["project_id", "user_key"]),
        [
            {"project_id": p, "user_key": k, "since_ts": s, "version": 0, "claimed_until": None, "claim": None}
            for (p, k), s in sorted(earliest.items())
        ],
    )
