"""End users: listing and reading End User Objects and sessions, export, erase and retention deletion."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
import sqlalchemy as sa

from usertrail.profiles.standard import (
    AVERAGE_SESSION_DURATION,
    AVERAGE_TIME_BETWEEN_SESSIONS,
    BROWSER_NAME,
    BROWSER_VERSION,
    CITY,
    COUNTRY,
    FIRST_SEEN,
    LAST_SEEN,
    REGION,
    TOTAL_SESSION_DURATION,
    TOTAL_SESSIONS,
)
from usertrail.store.database import write_transaction
from usertrail.store.identity import members_of, owner_of
from usertrail.store.schema import (
    attribute_history,
    audit_log,
    end_users,
    events,
    identity_links,
    pending_users,
    report_days,
    report_steps,
    segment_changes,
    segment_members,
    session_hints,
    sessions,
    user_attributes,
)

# Standard attribute name -> column of `end_users`.
STANDARD_COLUMNS = {
    FIRST_SEEN: end_users.c.first_seen,
    LAST_SEEN: end_users.c.last_seen,
    TOTAL_SESSIONS: end_users.c.total_sessions,
    AVERAGE_SESSION_DURATION: end_users.c.avg_session_duration_ms,
    TOTAL_SESSION_DURATION: end_users.c.total_session_duration_ms,
    AVERAGE_TIME_BETWEEN_SESSIONS: end_users.c.avg_time_between_sessions_ms,
    COUNTRY: end_users.c.country,
    REGION: end_users.c.region,
    CITY: end_users.c.city,
    BROWSER_NAME: end_users.c.browser_name,
    BROWSER_VERSION: end_users.c.browser_version,
}
NUMERIC = {
    FIRST_SEEN,
    LAST_SEEN,
    TOTAL_SESSIONS,
    AVERAGE_SESSION_DURATION,
    TOTAL_SESSION_DURATION,
    AVERAGE_TIME_BETWEEN_SESSIONS,
}
OPERATORS = {"eq", "ne", "lt", "lte", "gt", "gte", "contains"}


class BadQuery(ValueError):
    """A list query naming an unknown attribute or operator, or a value of the wrong type."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(reason)
        self.path = path


@dataclass(frozen=True)
class Filter:
    attribute: str
    op: str
    value: str

    def clause(self) -> sa.ColumnElement[bool]:
        column = STANDARD_COLUMNS[self.attribute]
        value: object = self.value
        if self.attribute in NUMERIC:
            try:
                value = float(self.value)
            except ValueError:
                raise BadQuery("filter", f"{self.attribute!r} takes a number, not {self.value!r}") from None
        if self.op == "contains":
            return column.contains(str(value), autoescape=True)
        return {
            "eq": column == value,
            "ne": column != value,
            "lt": column < value,
            "lte": column <= value,
            "gt": column > value,
            "gte": column >= value,
        }[self.op]


def parse_filter(text: str) -> Filter:
    """`<attribute>:<op>:<value>`, e.g. `Country:eq:FR` or `Total sessions:gte:3`."""
    attribute, _, rest = text.partition(":")
    op, _, value = rest.partition(":")
    if attribute not in STANDARD_COLUMNS:
        raise BadQuery("filter", f"unknown attribute {attribute!r}; known: {', '.join(STANDARD_COLUMNS)}")
    if op not in OPERATORS:
        raise BadQuery("filter", f"unknown operator {op!r}; use one of {', '.join(sorted(OPERATORS))}")
    return Filter(attribute, op, value)


def profile_json(row, custom: dict | None = None) -> dict:
    """An End User Object: every standard attribute with its value, source and last update.

    Custom attributes are the analytics properties (from the user's closed sessions) and the
    integrations' values (`custom`); for a name present in both, the most recent update wins.
    """
    values = {name: getattr(row, column.name) for name, column in STANDARD_COLUMNS.items()}
    properties = msgspec.json.decode(row.analytics_properties) if row.analytics_properties else {}
    merged = {
        name: {"value": value, "source": "analytics_properties", "updated_at": row.updated_at}
        for name, value in properties.items()
    }
    for name, item in (custom or {}).items():
        if name not in merged or item["updated_at"] >= merged[name]["updated_at"]:
            merged[name] = item
    return {
        "user_key": row.user_key,
        "attributes": {
            name: {"value": value, "source": "sessions", "updated_at": row.updated_at} for name, value in values.items()
        },
        "custom_attributes": merged,
    }


def session_json(row) -> dict:
    return {
        "id": row.start_ts,
        "start": row.start_ts,
        "end": row.end_ts,
        "duration_ms": row.end_ts - row.start_ts,
        "status": row.status,
        "empty": row.is_empty,
        "closed_at": row.closed_at,
        "events": row.event_count,
        "interactions": row.interaction_count,
        "page_views": row.page_views,
        "client_session_ids": msgspec.json.decode(row.client_session_ids),
        "entry_path": row.entry_path,
        "exit_path": row.exit_path,
        "country": row.country,
        "region": row.region,
        "city": row.city,
        "browser": row.browser,
        "browser_version": row.browser_version,
        "os": row.os,
        "device_type": row.device_type,
    }


class UserStore:
    """Reads and deletes end users and their derived state."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def list(
        self,
        project_id: int,
        sort: str,
        descending: bool,
        limit: int,
        offset: int,
        filters: list[Filter],
        conditions: Sequence[sa.ColumnElement[bool]] = (),
        search: str | None = None,
    ) -> tuple[list, int]:
        """A page of End User Objects and the total; `conditions` are extra WHERE clauses over
        `end_users` (e.g. a segment's), `search` a case-insensitive text to find in the key,
        location, browser or analytics properties."""
        if sort not in STANDARD_COLUMNS:
            raise BadQuery("sort", f"cannot sort by {sort!r}; known: {', '.join(STANDARD_COLUMNS)}")
        where = [end_users.c.project_id == project_id, *(f.clause() for f in filters), *conditions]
        if search:
            searched = (
                end_users.c.user_key,
                end_users.c.country,
                end_users.c.region,
                end_users.c.city,
                end_users.c.browser_name,
                end_users.c.analytics_properties,
            )
            where.append(sa.or_(*(c.icontains(search, autoescape=True) for c in searched)))
        column = STANDARD_COLUMNS[sort]
        order = [column.desc() if descending else column.asc(), end_users.c.user_key]
        with self.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(end_users).where(*where)).scalar_one()
            rows = conn.execute(sa.select(end_users).where(*where).order_by(*order).limit(limit).offset(offset)).all()
        return rows, total

    def owner(self, project_id: int, key: str) -> tuple[str, list[str]]:
        """The owning key for `key`, and every key whose events it holds."""
        with self.engine.connect() as conn:
            owner = owner_of(conn, project_id, key)
            return owner, members_of(conn, project_id, owner)

    def profile(self, project_id: int, owner: str):
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(end_users).where(end_users.c.project_id == project_id, end_users.c.user_key == owner)
            ).first()

    def sessions(self, project_id: int, owner: str, limit: int = 100, before: int | None = None) -> list:
        query = sa.select(sessions).where(sessions.c.project_id == project_id, sessions.c.user_key == owner)
        if before is not None:
            query = query.where(sessions.c.start_ts < before)
        with self.engine.connect() as conn:
            return conn.execute(query.order_by(sessions.c.start_ts.desc()).limit(limit)).all()

    def session(self, project_id: int, owner: str, start_ts: int):
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(sessions).where(
                    sessions.c.project_id == project_id, sessions.c.user_key == owner, sessions.c.start_ts == start_ts
                )
            ).first()

    def events_between(self, project_id: int, keys: list[str], start: int, end: int | None, limit: int) -> list:
        """The events of these keys from `start` to `end` (inclusive; open-ended for a live session)."""
        query = sa.select(events).where(
            events.c.project_id == project_id, events.c.user_key.in_(keys), events.c.ts >= start
        )
        if end is not None:
            query = query.where(events.c.ts <= end)
        with self.engine.connect() as conn:
            return conn.execute(query.order_by(events.c.ts, events.c.event_id).limit(limit)).all()

    def delete(self, project_id: int, owner: str) -> dict[str, int]:
        """Delete an end user entirely: events (theirs and their anonymous keys'), sessions, profile, links."""
        with write_transaction(self.engine) as conn:
            return _delete_user(conn, project_id, owner)

    def inactive(self, project_id: int, cutoff: int) -> list[tuple[str, int]]:
        """Owners whose latest session ended before `cutoff`, with that time."""
        last = sa.func.max(sessions.c.end_ts)
        with self.engine.connect() as conn:
            return [
                (r[0], r[1])
                for r in conn.execute(
                    sa.select(sessions.c.user_key, last)
                    .where(sessions.c.project_id == project_id)
                    .group_by(sessions.c.user_key)
                    .having(last < cutoff)
                    .order_by(last)
                ).all()
            ]


def _delete_user(conn: sa.Connection, project_id: int, owner: str) -> dict[str, int]:
    keys = members_of(conn, project_id, owner)
    counts = {
        "events": conn.execute(
            events.delete().where(events.c.project_id == project_id, events.c.user_key.in_(keys))
        ).rowcount,
        "sessions": conn.execute(
            sessions.delete().where(sessions.c.project_id == project_id, sessions.c.user_key == owner)
        ).rowcount,
        "profiles": conn.execute(
            end_users.delete().where(end_users.c.project_id == project_id, end_users.c.user_key == owner)
        ).rowcount,
    }
    conn.execute(
        identity_links.delete().where(
            identity_links.c.project_id == project_id,
            sa.or_(identity_links.c.user_key.in_(keys), identity_links.c.person_key == owner),
        )
    )
    conn.execute(
        session_hints.delete().where(session_hints.c.project_id == project_id, session_hints.c.user_key.in_(keys))
    )
    conn.execute(
        pending_users.delete().where(pending_users.c.project_id == project_id, pending_users.c.user_key.in_(keys))
    )
    for table in (user_attributes, attribute_history, segment_members, segment_changes, report_days, report_steps):
        conn.execute(table.delete().where(table.c.project_id == project_id, table.c.user_key.in_(keys)))
    return counts


class AuditLog:
    """Append-only record of sensitive actions (exports, erasures, retention deletions)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def append(self, project_id: int, actor: str, action: str, target: str, details: dict) -> None:
        now = int(time.time() * 1000)
        with write_transaction(self.engine) as conn:
            conn.execute(
                audit_log.insert().values(
                    project_id=project_id,
                    id=f"{now:013d}-{secrets.token_hex(6)}",
                    ts=now,
                    actor=actor,
                    action=action,
                    target=target,
                    details=msgspec.json.encode(details).decode(),
                )
            )

    def list(self, project_id: int, action: str | None = None, limit: int = 100) -> list[dict]:
        query = sa.select(audit_log).where(audit_log.c.project_id == project_id)
        if action:
            query = query.where(audit_log.c.action == action)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(audit_log.c.id.desc()).limit(limit)).all()
        return [
            {
                "id": r.id,
                "ts": r.ts,
                "actor": r.actor,
                "action": r.action,
                "target": r.target,
                "details": msgspec.json.decode(r.details),
            }
            for r in rows
        ]


def delete_inactive(engine: sa.Engine, project_id: int, cutoff: int) -> list[tuple[str, int]]:
    """The retention job: delete every owner with no session since `cutoff`; returns who was deleted."""
    store = UserStore(engine)
    deleted = []
    for owner, last_end in store.inactive(project_id, cutoff):
        with write_transaction(engine) as conn:
            # Re-check inside the transaction: the user may have come back since the list was read.
            still = conn.execute(
                sa.select(sa.func.max(sessions.c.end_ts)).where(
                    sessions.c.project_id == project_id, sessions.c.user_key == owner
                )
            ).scalar()
            waiting = conn.execute(
                sa.select(sa.func.count())
                .select_from(pending_users)
                .where(
                    pending_users.c.project_id == project_id,
                    pending_users.c.user_key.in_(members_of(conn, project_id, owner)),
                )
            ).scalar()
            if still is None or still >= cutoff or waiting or owner_of(conn, project_id, owner) != owner:
                continue
            _delete_user(conn, project_id, owner)
        deleted.append((owner, last_end))
    return deleted
