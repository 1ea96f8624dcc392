"""The change log of the rows segment counts read: `end_users` and `custom_attributes`.

Every transaction that writes either table calls `note_users_changed` (or, when it rewrites a whole
project, `note_project_changed`) before it commits. Each call bumps the project's `version` in
`user_change_state` and, for users, records `(user_key, version)` in `user_changes`. The bump
takes the state row's lock until the transaction ends, so versions follow commit order: a reader
that sees version V (in one snapshot) sees every change numbered ≤ V, and none numbered later has
committed before it. That is what lets a process-local copy of those rows (segments/columns.py)
catch up by re-reading only the users changed after its own version, however long a writing
transaction took (the full rebuild commits rows computed minutes before: its version is taken at
the end, so it is ordered by its commit, not by when its rows were made).

Writers call these as the last writes of their transaction where they can: the lock is held from
the call to the commit, and serialises that tail of concurrent writers of one project.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa

from usertrail.store.database import insert_rows
from usertrail.store.schema import user_change_state, user_changes

# Above this many users in one transaction (a large import), the change is recorded for the whole
# project: re-reading that many users costs about what re-reading every user does.
WHOLE_PROJECT_KEYS = 50_000

_BUMP = sa.text(
    "INSERT INTO user_change_state (project_id, version, rebuilt_version, pruned_version, checkpoint_version) "
    "VALUES (:p, 1, :rebuilt, 0, 0) "
    "ON CONFLICT (project_id) DO UPDATE SET version = user_change_state.version + 1, "
    "rebuilt_version = CASE WHEN :whole = 1 THEN user_change_state.version + 1 "
    "ELSE user_change_state.rebuilt_version END "
    "RETURNING version"
)


@dataclass(frozen=True)
class ChangeState:
    """A project's change counter as one snapshot sees it."""

    version: int = 0
    rebuilt_version: int = 0  # the last version that changed every user of the project
    pruned_version: int = 0  # `user_changes` holds every change numbered above this


def note_users_changed(conn: sa.Connection, project_id: int, keys: Iterable[str]) -> None:
    """Record, in the caller's write transaction, that these users' `end_users` / `custom_attributes`
    rows changed (written, replaced or deleted)."""
    distinct = sorted(set(keys))
    if not distinct:
        return
    if len(distinct) > WHOLE_PROJECT_KEYS:
        note_project_changed(conn, project_id)
        return
    version = _bump(conn, project_id, whole=False)
    insert_rows(conn, user_changes, ("project_id", "user_key", "version"), [(project_id, k, version) for k in distinct])


def note_project_changed(conn: sa.Connection, project_id: int) -> None:
    """Record, in the caller's write transaction, that any user of the project may have changed."""
    _bump(conn, project_id, whole=True)


def _bump(conn: sa.Connection, project_id: int, whole: bool) -> int:
    return conn.execute(_BUMP, {"p": project_id, "rebuilt": 1 if whole else 0, "whole": 1 if whole else 0}).scalar_one()


def read_state(conn: sa.Connection, project_id: int) -> ChangeState:
    """The project's counter (all zero before its first change)."""
    s = user_change_state
    row = conn.execute(
        sa.select(s.c.version, s.c.rebuilt_version, s.c.pruned_version).where(s.c.project_id == project_id)
    ).first()
    return ChangeState(*row) if row is not None else ChangeState()


def changed_since(conn: sa.Connection, project_id: int, after: int, upto: int) -> list[str]:
    """The users changed by versions in (after, upto]; only complete when `after` ≥ the pruned version."""
    c = user_changes
    query = (
        sa.select(c.c.user_key).where(c.c.project_id == project_id, c.c.version > after, c.c.version <= upto).distinct()
    )
    return list(conn.execute(query).scalars())


def prune(conn: sa.Connection) -> int:
    """Drop the log rows older than the previous prune (run hourly: each change stays 1–2 hours, so a
    process whose copy is older than that reads the whole project again). Returns rows deleted."""
    s, c = user_change_state, user_changes
    deleted = 0
    for project_id, checkpoint, version in conn.execute(
        sa.select(s.c.project_id, s.c.checkpoint_version, s.c.version)
    ).all():
        deleted += conn.execute(c.delete().where(c.c.project_id == project_id, c.c.version <= checkpoint)).rowcount
        conn.execute(
            s.update().where(s.c.project_id == project_id).values(pruned_version=checkpoint, checkpoint_version=version)
        )
    return deleted
