"""What the full rebuild keeps of the rows it replaces: when each session closed, and when each End User
Object last changed.

A rebuild recomputes sessions and End User Objects from the events, and most come out as they were. The
incremental path keeps the stamps of what it does not change (processor.py): a session it recomputes keeps
its `closed_at` if it was already closed, and an End User Object whose closed sessions did not change is not
rewritten, so its `updated_at` stays. The rebuild keeps them by the same rules, so "last update" keeps
meaning when an attribute last changed, and a rebuild that changes nothing writes rows equal to the stored
ones, which PostgreSQL then leaves in place (store/bulk.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa

from usertrail.sessions.derive import PROFILE_COLUMNS
from usertrail.sessions.table import SessionTable
from usertrail.store.schema import end_users, sessions

_UPDATED = PROFILE_COLUMNS.index("updated_at")


@dataclass(frozen=True)
class StoredCloses:
    """The close times of a project's stored closed sessions: (user_key, start_ts, closed_at) rows."""

    rows: list[tuple[str, int, int]]

    @classmethod
    def read(cls, conn: sa.Connection, project_id: int) -> StoredCloses:
        """Read them (on the rebuild's reading connection: the same snapshot as its read of the events)."""
        statement = sa.select(sessions.c.user_key, sessions.c.start_ts, sessions.c.closed_at).where(
            sessions.c.project_id == project_id, sessions.c.status == "closed", sessions.c.closed_at.is_not(None)
        )
        if conn.dialect.name == "sqlite":
            # In key order SQLite walks the primary key's index, and through it the table in the order the
            # rebuild wrote it; otherwise it takes the (status, end) index and jumps around the table (5M
            # events: 0.36-0.59 s against 0.84-1.08 s).
            statement = statement.order_by(sessions.c.user_key, sessions.c.start_ts)
        return cls(_fetch(conn, statement))

    def of_keys(self, keys: set[str]) -> dict[tuple[str, int], int]:
        """(user_key, start_ts) -> closed_at of these keys' stored closed sessions."""
        return {(key, start): at for key, start, at in self.rows if key in keys}

    def table_closes(self, table: SessionTable) -> np.ndarray | None:
        """Per session of the column-wise `table`, its stored close time, or -1 if it was not stored closed
        (None when no session of the project was).

        Matched in numpy on (key number, start rank), not through a dict of (key, start) pairs: 612k sessions
        took a third of the time."""
        if not self.rows:
            return None
        number = {key: i for i, key in enumerate(table.keys)}
        stored_key = np.fromiter((number.get(key, -1) for key, _, _ in self.rows), np.int64, len(self.rows))
        known = stored_key >= 0
        if not known.any():
            return np.full(len(table.key), -1, np.int64)
        stored_start = np.fromiter((start for _, start, _ in self.rows), np.int64, len(self.rows))[known]
        stored_at = np.fromiter((at for _, _, at in self.rows), np.int64, len(self.rows))[known]
        # Starts as ranks among all starts, so key * ranks + rank is one exact int64 per (key, start) pair.
        starts, rank = np.unique(np.concatenate([stored_start, table.start]), return_inverse=True)
        pair = stored_key[known] * len(starts) + rank[: len(stored_start)]
        wanted = table.key.astype(np.int64) * len(starts) + rank[len(stored_start) :]
        order = np.argsort(pair)
        found = order[np.searchsorted(pair, wanted, sorter=order).clip(max=len(pair) - 1)]
        return np.where(pair[found] == wanted, stored_at[found], -1)


def keep_update_times(conn: sa.Connection, project_id: int, rows: Sequence[tuple]) -> list[tuple]:
    """These new End User Object rows of the project, each with its stored `updated_at` if nothing else in it
    changed (read on the rebuild's reading connection)."""
    statement = sa.select(*(end_users.c[name] for name in PROFILE_COLUMNS)).where(end_users.c.project_id == project_id)
    if conn.dialect.name == "sqlite":
        statement = statement.order_by(end_users.c.user_key)  # as above: 0.36 s against 0.52 s at 185k users
    stored = {row[1]: tuple(row) for row in _fetch(conn, statement)}
    kept = []
    for row in rows:
        old = stored.get(row[1])
        if old is not None and old[:_UPDATED] == row[:_UPDATED] and old[_UPDATED + 1 :] == row[_UPDATED + 1 :]:
            row = old
        kept.append(row)
    return kept


def _fetch(conn: sa.Connection, statement: sa.Select) -> list[tuple]:
    """All rows of `statement` (of literal values only) as the driver gives them: SQLAlchemy's rows took twice
    the time for 612k sessions (5M events)."""
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        cursor.execute(str(statement.compile(conn, compile_kwargs={"literal_binds": True})))
        return cursor.fetchall()
    finally:
        cursor.close()
