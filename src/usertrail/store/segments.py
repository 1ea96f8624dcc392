"""Saved segments, their current members and their entered/left history."""

from __future__ import annotations

import secrets
from collections.abc import Iterable

import msgspec
import sqlalchemy as sa

from usertrail.store.database import write_transaction
from usertrail.store.schema import segment_changes, segment_members, segments


class DuplicateName(ValueError):
    """Another segment of the project has this name."""


def segment_json(row, member_count: int) -> dict:
    """A saved segment as the API shows it; `member_count` is its member list's size (`SegmentStore.member_counts`)."""
    return {
        "id": row.id,
        "name": row.name,
        "description": row.description,
        "rules": msgspec.json.decode(row.rules),
        "client_visible": bool(row.client_visible),
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "refreshed_at": row.refreshed_at,
        "member_count": member_count,
    }


class SegmentStore:
    """CRUD for saved segments and the size of their maintained member lists (segments/membership.py)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def list(self, project_id: int, client_visible: bool | None = None) -> list:
        query = sa.select(segments).where(segments.c.project_id == project_id).order_by(segments.c.name)
        if client_visible is not None:
            query = query.where(segments.c.client_visible == client_visible)
        with self.engine.connect() as conn:
            return conn.execute(query).all()

    def member_counts(self, project_id: int, segment_ids: Iterable[str] | None = None) -> dict[str, int]:
        """Members per saved segment, read from `segment_members` rather than by evaluating the rules.

        One covering index range per segment, so it costs the same for any rules; the list is as
        current as its last change (a session close, a rule change, the hourly recompute:
        docs/segments.md). Segments without members are absent.
        """
        m = segment_members
        query = sa.select(m.c.segment_id, sa.func.count()).where(m.c.project_id == project_id).group_by(m.c.segment_id)
        if segment_ids is not None:
            query = query.where(m.c.segment_id.in_(list(segment_ids)))
        with self.engine.connect() as conn:
            return {segment_id: count for segment_id, count in conn.execute(query)}

    def get(self, project_id: int, segment_id: str):
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(segments).where(segments.c.project_id == project_id, segments.c.id == segment_id)
            ).first()

    def create(self, project_id: int, fields: dict, now: int) -> str:
        segment_id = "seg_" + secrets.token_hex(8)
        with write_transaction(self.engine) as conn:
            self._check_name(conn, project_id, fields["name"], None)
            conn.execute(
                segments.insert().values(
                    project_id=project_id,
                    id=segment_id,
                    name=fields["name"],
                    description=fields.get("description", ""),
                    rules=msgspec.json.encode(fields["rules"]).decode(),
                    client_visible=fields.get("client_visible", False),
                    created_at=now,
                    updated_at=now,
                )
            )
        return segment_id

    def update(self, project_id: int, segment_id: str, fields: dict, now: int) -> bool:
        values = {k: v for k, v in fields.items() if k in ("name", "description", "client_visible")}
        if "rules" in fields:
            values["rules"] = msgspec.json.encode(fields["rules"]).decode()
        with write_transaction(self.engine) as conn:
            if "name" in values:
                self._check_name(conn, project_id, values["name"], segment_id)
            return bool(
                conn.execute(
                    segments.update()
                    .where(segments.c.project_id == project_id, segments.c.id == segment_id)
                    .values(**values, updated_at=now)
                ).rowcount
            )

    def delete(self, project_id: int, segment_id: str) -> bool:
        """Delete a segment with its member list and membership history."""
        with write_transaction(self.engine) as conn:
            for table in (segment_members, segment_changes):
                conn.execute(table.delete().where(table.c.project_id == project_id, table.c.segment_id == segment_id))
            return bool(
                conn.execute(
                    segments.delete().where(segments.c.project_id == project_id, segments.c.id == segment_id)
                ).rowcount
            )

    @staticmethod
    def _check_name(conn: sa.Connection, project_id: int, name: str, own_id: str | None) -> None:
        other = conn.execute(
            sa.select(segments.c.id).where(segments.c.project_id == project_id, segments.c.name == name)
        ).scalar()
        if other is not None and other != own_id:
            raise DuplicateName(name)

    def changes(
        self,
        project_id: int,
        segment_id: str | None = None,
        user_keys: Iterable[str] | None = None,
        change: str | None = None,
        since: int | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list:
        """Entered/left records, newest first."""
        c = segment_changes
        query = sa.select(c).where(c.c.project_id == project_id)
        if segment_id is not None:
            query = query.where(c.c.segment_id == segment_id)
        if user_keys is not None:
            query = query.where(c.c.user_key.in_(list(user_keys)))
        if change is not None:
            query = query.where(c.c.change == change)
        if since is not None:
            query = query.where(c.c.ts >= since)
        with self.engine.connect() as conn:
            return conn.execute(query.order_by(c.c.ts.desc(), c.c.id.desc()).limit(limit).offset(offset)).all()
