"""Keeping saved segments' member lists current and recording who entered or left, and when.

Membership changes when a session close changes a user's End User Object (the session processor
calls `refresh_users` for that user, evaluated in process), when a segment's rules change, and as
time passes for relative rules ("within the last 7 days"): `refresh_segment` recomputes a whole
segment in SQL and is run for every saved segment by the hourly maintenance.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import msgspec
import sqlalchemy as sa

from usertrail.segments.evaluate import Check, compile_tree, load_facts
from usertrail.segments.model import Catalog, Group, InvalidRule, parse
from usertrail.segments.sql import Compiler
from usertrail.store.database import write_transaction
from usertrail.store.schema import attribute_registry, segment_changes, segment_members, segments

log = logging.getLogger(__name__)


def catalog_of(conn: sa.Connection, project_id: int) -> Catalog:
    """The names a project's rules may use, with the registry's types and slots."""
    rows = conn.execute(
        sa.select(attribute_registry.c.name, attribute_registry.c.type, attribute_registry.c.slot).where(
            attribute_registry.c.project_id == project_id
        )
    ).all()
    return Catalog(custom={r.name: r.type for r in rows}, slots={r.name: r.slot for r in rows})


@dataclass(frozen=True)
class SavedSegment:
    id: str
    tree: Group
    check: Check


class SavedSegments:
    """Parsed saved segments per project, re-parsed only when a segment changes."""

    def __init__(self) -> None:
        self._parsed: dict[tuple[int, str, int], SavedSegment] = {}

    def of(self, conn: sa.Connection, project_id: int) -> list[SavedSegment]:
        rows = conn.execute(
            sa.select(segments.c.id, segments.c.rules, segments.c.updated_at).where(segments.c.project_id == project_id)
        ).all()
        found, catalog = [], None
        for row in rows:
            key = (project_id, row.id, row.updated_at)
            if key not in self._parsed:
                catalog = catalog or catalog_of(conn, project_id)
                try:
                    tree = parse(msgspec.json.decode(row.rules), catalog, "$.rules")
                except InvalidRule as exc:
                    # Validated when saved; only a registry change can make it fail now.
                    log.warning("segment %s of project %d no longer validates: %s", row.id, project_id, exc)
                    continue
                self._parsed[key] = SavedSegment(row.id, tree, compile_tree(tree))
            found.append(self._parsed[key])
        return found


def refresh_users(
    conn: sa.Connection, project_id: int, owners: Sequence[str], now: int, saved: SavedSegments
) -> tuple[int, int]:
    """Re-evaluate every saved segment for these end users (in process); returns (entered, left)."""
    current = saved.of(conn, project_id)
    if not current:
        return 0, 0  # deleting a segment deletes its members, so there is nothing to leave
    stored = conn.execute(
        sa.select(segment_members.c.user_key, segment_members.c.segment_id).where(
            segment_members.c.project_id == project_id, segment_members.c.user_key.in_(list(owners))
        )
    ).all()
    was = {(r.user_key, r.segment_id) for r in stored}
    now_in: set[tuple[str, str]] = set()
    trees = [s.tree for s in current]
    for owner in owners:
        facts = load_facts(conn, project_id, owner, trees, now)
        now_in.update((owner, s.id) for s in current if s.check(facts, now) is True)
    return _write_changes(conn, project_id, now_in - was, was - now_in, now)


def refresh_segment(conn: sa.Connection, project_id: int, segment_id: str, tree: Group, now: int) -> tuple[int, int]:
    """Recompute one segment's member list in SQL; returns (entered, left)."""
    members = Compiler(project_id, now, conn.dialect.name).members(tree)
    now_in = {(key, segment_id) for key in conn.execute(members).scalars()}
    was = {
        (key, segment_id)
        for key in conn.execute(
            sa.select(segment_members.c.user_key).where(
                segment_members.c.project_id == project_id, segment_members.c.segment_id == segment_id
            )
        ).scalars()
    }
    counts = _write_changes(conn, project_id, now_in - was, was - now_in, now)
    conn.execute(
        segments.update()
        .where(segments.c.project_id == project_id, segments.c.id == segment_id)
        .values(refreshed_at=now)
    )
    return counts


def refresh_all(engine: sa.Engine, now: int, project_ids: Iterable[int] | None = None) -> tuple[int, int]:
    """Recompute every saved segment (of the given projects), one transaction per segment."""
    saved = SavedSegments()
    entered = left = 0
    with engine.connect() as conn:
        query = sa.select(segments.c.project_id).distinct()
        if project_ids is not None:
            query = query.where(segments.c.project_id.in_(list(project_ids)))
        projects = list(conn.execute(query).scalars())
        work = [(p, s) for p in projects for s in saved.of(conn, p)]
    for project_id, segment in work:
        with write_transaction(engine) as conn:
            e, lf = refresh_segment(conn, project_id, segment.id, segment.tree, now)
        entered, left = entered + e, left + lf
    return entered, left


def _write_changes(
    conn: sa.Connection, project_id: int, entered: set[tuple[str, str]], left: set[tuple[str, str]], now: int
) -> tuple[int, int]:
    if entered:
        conn.execute(
            segment_members.insert(),
            [{"project_id": project_id, "user_key": k, "segment_id": s, "since": now} for k, s in sorted(entered)],
        )
    if left:
        conn.execute(
            segment_members.delete().where(
                segment_members.c.project_id == project_id,
                segment_members.c.user_key == sa.bindparam("k"),
                segment_members.c.segment_id == sa.bindparam("s"),
            ),
            [{"k": k, "s": s} for k, s in sorted(left)],
        )
    changes = [(k, s, "entered") for k, s in sorted(entered)] + [(k, s, "left") for k, s in sorted(left)]
    if changes:
        conn.execute(
            segment_changes.insert(),
            [
                {
                    "project_id": project_id,
                    "user_key": k,
                    "id": f"{now:013d}-{i:06d}-{secrets.token_hex(4)}",
                    "segment_id": s,
                    "change": change,
                    "ts": now,
                }
                for i, (k, s, change) in enumerate(changes)
            ],
        )
    return len(entered), len(left)
