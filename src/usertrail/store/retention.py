"""Retention periods per project: how long inactive end users and session recordings are kept.

A project without its own period uses the installation's (`USERTRAIL_USER_RETENTION_DAYS`,
`USERTRAIL_PLAYBACK_RETENTION_DAYS`); the server's daily maintenance and `usertrail retention` apply
whichever is in force for each project.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from usertrail.store.database import write_transaction
from usertrail.store.projects import now_ms
from usertrail.store.schema import retention_settings
from usertrail.store.users import AuditLog, delete_inactive

MAX_DAYS = 3650


@dataclass(frozen=True)
class Retention:
    """A project's own periods in days; None where it uses the installation's default."""

    user_days: int | None = None
    playback_days: int | None = None

    def effective(self, default_user_days: int, default_playback_days: int) -> tuple[int, int]:
        """The periods in force: the project's own, else the defaults."""
        return (
            self.user_days if self.user_days is not None else default_user_days,
            self.playback_days if self.playback_days is not None else default_playback_days,
        )


class RetentionStore:
    """Reads and sets the per-project retention periods."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def get(self, project_id: int) -> Retention:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(retention_settings.c.user_days, retention_settings.c.playback_days).where(
                    retention_settings.c.project_id == project_id
                )
            ).first()
        return Retention() if row is None else Retention(row.user_days, row.playback_days)

    def set(self, project_id: int, retention: Retention) -> None:
        """Replace the project's periods (None: back to the installation's default)."""
        values = {"user_days": retention.user_days, "playback_days": retention.playback_days, "updated_at": now_ms()}
        with write_transaction(self.engine) as conn:
            updated = conn.execute(
                retention_settings.update().where(retention_settings.c.project_id == project_id).values(**values)
            ).rowcount
            if not updated:
                conn.execute(retention_settings.insert().values(project_id=project_id, **values))


RETENTION_ACTOR = "retention"
DAY_MS = 86_400_000


def delete_inactive_users(engine: sa.Engine, project_id: int, days: int, now: int) -> list[tuple[str, int]]:
    """Delete the project's end users with no session for `days` before `now`, and audit each deletion.

    Each deleted end user gets an `end_user.retention_delete` entry in the admin audit log (actor
    `retention`, target the user key, details the period and when their last session ended), as an
    erasure by an admin does. Returns the deleted (user key, last session end) pairs.
    """
    deleted = delete_inactive(engine, project_id, now - days * DAY_MS)
    audit = AuditLog(engine)
    for owner, last_end in deleted:
        details = {"days": days, "last_session_end": last_end}
        audit.append(project_id, RETENTION_ACTOR, "end_user.retention_delete", owner, details)
    return deleted
