"""The queue of end users whose sessions must be recomputed (written by ingest, read by the processor)."""

from __future__ import annotations

import time
from collections.abc import Iterable

import sqlalchemy as sa

from usertrail.store.database import upsert_pending
from usertrail.store.schema import pending_users


def mark_pending(conn: sa.Connection, items: Iterable[tuple[int, str, int]], marked_at: int | None = None) -> None:
    """Ask for (project, user, since) to be recomputed; keeps the earliest `since` per user.

    `marked_at` is the server time of the mark (default: now); 0 asks for the work without delay.
    """
    if marked_at is None:
        marked_at = int(time.time() * 1000)
    earliest: dict[tuple[int, str], int] = {}
    for project_id, key, since in items:
        k = (project_id, key)
        earliest[k] = min(since, earliest.get(k, since))
    if not earliest:
        return
    conn.execute(
        upsert_pending(pending_users, conn.dialect.name, ["project_id", "user_key"]),
        [
            {
                "project_id": p,
                "user_key": k,
                "since_ts": s,
                "version": 0,
                "claimed_until": None,
                "claim": None,
                "marked_at": marked_at,
                "first_marked_at": marked_at,
            }
            for (p, k), s in sorted(earliest.items())
        ],
    )
