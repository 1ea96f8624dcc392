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
class StoredStamps:
    """The close times of a project's stored closed sessions, and its stored End User Objects."""

    closes: dict[tuple[str, int], int]  # (user_key, start_ts) -> closed_at
    profiles: dict[str, tuple]  # user_key -> end_users row, PROFILE_COLUMNS order

    @classmethod
    def read(cls, conn: sa.Connection, project_id: int) -> StoredStamps:
        """Read them (on the rebuild's reading connection: the same snapshot as its read of the events)."""
        closes = _fetch(
            conn,
            sa.select(sessions.c.user_key, sessions.c.start_ts, sessions.c.closed_at).where(
                sessions.c.project_id == project_id, sessions.c.status == "closed", sessions.c.closed_at.is_not(None)
            ),
        )
        profiles = _fetch(
            conn,
            sa.select(*(end_users.c[name] for name in PROFILE_COLUMNS)).where(end_users.c.project_id == project_id),
        )
        return cls({(key, start): at for key, start, at in closes}, {row[1]: tuple(row) for row in profiles})

    def closed_at(self, key: str, start: int, now: int) -> int:
        """When a session closed now by the rebuild is said to have closed: when it was stored closed, if it was."""
        return self.closes.get((key, start), now)

    def table_closes(self, table: SessionTable) -> np.ndarray | None:
        """Per session of the column-wise `table`, its stored close time, or -1 if it was not stored closed
        (None when no session of the project was)."""
        if not self.closes:
            return None
        keys = np.array(table.keys, object)[table.key].tolist()
        found = map(self.closes.get, zip(keys, table.start.tolist(), strict=True), [-1] * len(keys))
        return np.fromiter(found, np.int64, len(keys))

    def profile_rows(self, rows: Sequence[tuple]) -> list[tuple]:
        """These new End User Object rows, each with its stored `updated_at` if nothing else in it changed."""
        stored = self.profiles
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
