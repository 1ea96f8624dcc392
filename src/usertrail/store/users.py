"""End users: listing and reading End User Objects and sessions, export, erase and retention deletion."""

from __future__ import annotations

import csv
import difflib
import io
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from usertrail.access.activity_log import csv_cell
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
from usertrail.segments.model import Attribute, Catalog
from usertrail.store import user_index
from usertrail.store.changes import note_users_changed
from usertrail.store.database import write_transaction
from usertrail.store.events import EventStore
from usertrail.store.identity import members_of, owner_of
from usertrail.store.schema import (
    attribute_changes,
    audit_log,
    custom_attributes,
    end_users,
    events,
    identity_links,
    pending_users,
    report_days,
    report_steps,
    scim_users,
    segment_changes,
    segment_members,
    session_hints,
    sessions,
    user_properties,
    user_words,
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


@dataclass(frozen=True)
class Cursor:
    """Where a page of the user list ends: the last row's sort value (None: it had none) and key."""

    value: str | float | None
    user_key: str

    def encode(self) -> str:
        return msgspec.json.encode([self.value, self.user_key]).decode()


def parse_cursor(text: str) -> Cursor:
    """The `after` parameter: `[value, user_key]` as JSON, as `Cursor.encode` writes it."""
    try:
        value, user_key = msgspec.json.decode(text, type=tuple[str | float | None, str])
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise BadQuery("after", "after must be the `next` cursor of an earlier page: [value, user_key]") from None
    return Cursor(value, user_key)


@dataclass(frozen=True)
class UserPage:
    """One page of the user list: the `end_users` rows, the total matching, the next page's cursor
    (None on the last page), and the values of the requested columns per row."""

    rows: list
    total: int | None
    next: Cursor | None
    columns: list[Attribute]
    values: list[dict[str, object]]


def json_field(column: sa.ColumnElement, name: str, dialect: str) -> sa.ColumnElement:
    """The text of a top-level field of a JSON text column (analytics properties), on either engine."""
    if dialect == "postgresql":
        return sa.cast(column, JSONB).op("->>", return_type=sa.Text)(sa.literal(name))
    return sa.func.json_extract(column, f'$."{name}"')


def _resolve(catalog: Catalog, name: str, path: str) -> Attribute:
    attribute = catalog.resolve(name)
    if attribute is None:
        close = difflib.get_close_matches(name, catalog.names(), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise BadQuery(path, f"unknown attribute {name!r} (names are case-sensitive){hint}")
    return attribute


def _shown_value(attribute: Attribute, raw: object) -> object:
    if attribute.kind == "custom" and attribute.type == "boolean" and raw is not None:
        return raw != 0  # stored as 1.0 / 0.0
    return raw


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


# What an empty session shows: WalkMe lists it "with no data" (docs/sessions.md#empty-sessions).
_NO_DATA = dict.fromkeys(
    ("events", "interactions", "page_views", "entry_path", "exit_path", "country", "region", "city", "browser",
     "browser_version", "os", "device_type")
)  # fmt: skip


def session_json(row) -> dict:
    """One session for the API; an empty one keeps only its time and status."""
    found = {
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
    return {**found, **_NO_DATA, "client_session_ids": []} if row.is_empty else found


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
        catalog: Catalog | None = None,
        columns: Sequence[str] = (),
        after: Cursor | None = None,
        count: bool = True,
    ) -> UserPage:
        """A page of End User Objects, the total and the cursor of the next page.

        `sort` and `columns` name any attribute of `catalog` (standard, analytics property or custom);
        `conditions` are extra WHERE clauses over `end_users` (e.g. a segment's), `search` a
        case-insensitive text to find in the key, location, browser or analytics properties. Users
        without a value of the sort attribute come last in both orders; ties go by user key in the
        same direction. `after` continues after a row of an earlier page (keyset paging, the same
        cost on every page), `offset` skips rows (its cost grows with it). `count=False` skips the
        total (None), for callers that walk every page.
        """
        catalog = catalog or Catalog()
        attributes = [_resolve(catalog, name, "column") for name in columns]
        key = _resolve(catalog, sort, "sort")
        numeric = key.name in NUMERIC or (key.kind == "custom" and key.type in ("number", "boolean"))
        if after is not None and after.value is not None and isinstance(after.value, str) == numeric:
            raise BadQuery("after", f"the cursor is not from a list sorted by {sort!r}")
        where = [end_users.c.project_id == project_id, *(f.clause() for f in filters), *conditions]
        dialect = self.engine.dialect.name
        row = custom_attributes.alias("ca")
        reads_row = False
        # A sort by an analytics property reads its value from `user_properties`, in index order.
        prop = user_properties.alias("prop")
        sorts_property = key.kind == "analytics"

        def value_of(attribute: Attribute) -> sa.ColumnElement:
            nonlocal reads_row
            if attribute.kind == "standard":
                return STANDARD_COLUMNS[attribute.name]
            if attribute.kind == "analytics":
                return json_field(end_users.c.analytics_properties, attribute.name, dialect)
            if attribute.slot is None:
                raise ValueError(f"custom attribute {attribute.name!r} has no slot: pass the registry's catalog")
            reads_row = True
            # Slots are typed: numbers and booleans sort as numbers, strings and YYYY-MM-DD dates as text.
            return row.c[attribute.slot]

        def source(inner_sort: bool) -> sa.FromClause:
            """`end_users` with the custom-attribute row joined once if any column reads it, and the sorted
            analytics property's row; inner-joined for the first pass of a custom or analytics sort (only
            users with a value are listed there)."""
            joined: sa.FromClause = end_users
            if sorts_property:
                on = sa.and_(
                    prop.c.project_id == end_users.c.project_id,
                    prop.c.user_key == end_users.c.user_key,
                    prop.c.name == key.name,
                )
                joined = prop.join(end_users, on) if inner_sort else joined.outerjoin(prop, on)
            if not reads_row:
                return joined
            on = sa.and_(row.c.project_id == end_users.c.project_id, row.c.user_key == end_users.c.user_key)
            if inner_sort and key.kind == "custom":
                return joined.join(row, on)
            return joined.outerjoin(row, on)

        sort_value = prop.c.value if sorts_property else value_of(key)
        shown = [value_of(a).label(f"column_{i}") for i, a in enumerate(attributes)]
        columns_selected = (end_users, sort_value.label("sort_value"), *shown)
        # The tie column of the table the first pass walks in index order, so that no pass sorts.
        tie = prop.c.user_key if sorts_property else row.c.user_key if key.kind == "custom" else end_users.c.user_key
        direction = (lambda c: c.desc()) if descending else (lambda c: c.asc())
        later = (lambda a, b: a < b) if descending else (lambda a, b: a > b)
        nullable = key.kind != "standard" or STANDARD_COLUMNS[key.name].nullable
        with self.engine.connect() as conn:
            found = user_index.search(conn, project_id, search) if search else None
            total = None
            if count:
                counted = [*where, found.count] if found else where
                total = conn.execute(sa.select(sa.func.count()).select_from(end_users).where(*counted)).scalar_one()
            if found:
                where.append(found.page)
            rows: list = []
            # Two index-friendly passes instead of one `ORDER BY value IS NULL, …`: users with a value
            # in (value, key) order, then those without in key order.
            valued = sa.select(*columns_selected).select_from(source(True)).where(*where, sort_value.is_not(None))
            if after is None or after.value is not None:
                if after is not None:
                    valued = valued.where(later(sa.tuple_(sort_value, tie), sa.tuple_(after.value, after.user_key)))
                ordered = valued.order_by(direction(sort_value), direction(tie))
                rows = conn.execute(ordered.limit(limit).offset(offset)).all()
            if nullable and len(rows) < limit:
                skip = 0
                if offset and not rows and (after is None or after.value is not None):
                    # The offset reached past the users with a value: skip the rest of it among the others.
                    passed = conn.execute(sa.select(sa.func.count()).select_from(valued.subquery())).scalar_one()
                    skip = max(0, offset - passed)
                elif offset and after is not None and after.value is None:
                    skip = offset
                empty = sa.select(*columns_selected).select_from(source(False)).where(*where, sort_value.is_(None))
                if after is not None and after.value is None:
                    empty = empty.where(later(end_users.c.user_key, after.user_key))
                empty = empty.order_by(direction(end_users.c.user_key))
                rows += conn.execute(empty.limit(limit - len(rows)).offset(skip)).all()
        following = None
        if len(rows) == limit:
            last = rows[-1]
            following = Cursor(last.sort_value, last.user_key)
        values = [{a.name: _shown_value(a, getattr(r, f"column_{i}")) for i, a in enumerate(attributes)} for r in rows]
        return UserPage(rows, total, following, attributes, values)

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
        """Erase an end user entirely: events (theirs and their anonymous keys'), sessions, profile, links,
        custom attributes and their history, and the SCIM record an identity provider pushed for them.

        The SCIM record goes too because it holds the person's directory data (userName, e-mails,
        name); the retention job keeps it (the IdP still manages that person), see docs/scim.md.
        """
        # Events answered before the erasure but not yet indexed would otherwise be stored after it.
        EventStore(self.engine).index_all()
        with write_transaction(self.engine) as conn:
            counts = _delete_user(conn, project_id, owner)
            # A SCIM record always points at an identified key (u:<id>), which is an owner.
            counts["scim_users"] = conn.execute(
                scim_users.delete().where(scim_users.c.project_id == project_id, scim_users.c.user_key == owner)
            ).rowcount
            return counts

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
    tables = (custom_attributes, attribute_changes, segment_members, segment_changes, report_days, report_steps)
    for table in (*tables, user_words, user_properties):
        deleted = conn.execute(table.delete().where(table.c.project_id == project_id, table.c.user_key.in_(keys)))
        if table is custom_attributes:
            counts["attributes"] = deleted.rowcount
    note_users_changed(conn, project_id, [owner, *keys])
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

    def list(
        self, project_id: int, query: AuditQuery | None = None, limit: int = 100, before: str | None = None
    ) -> list[dict]:
        """Matching entries, newest first; page with `before` (the last id of the previous page)."""
        where = (query or AuditQuery()).clauses(project_id)
        if before:
            where.append(audit_log.c.id < before)
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(audit_log).where(*where).order_by(audit_log.c.id.desc()).limit(limit)).all()
        return [audit_json(r) for r in rows]

    def export_csv(self, project_id: int, query: AuditQuery, batch: int = 1000) -> Iterator[str]:
        """Matching entries, oldest first, as CSV text in chunks (header first); details as JSON."""
        yield _csv_row(AUDIT_CSV_COLUMNS)
        after = ""
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    sa.select(audit_log)
                    .where(*query.clauses(project_id), audit_log.c.id > after)
                    .order_by(audit_log.c.id)
                    .limit(batch)
                ).all()
            if not rows:
                return
            yield "".join(
                _csv_row([r.id, _utc_stamp(r.ts), r.actor, r.action, r.target, r.details], safe=True) for r in rows
            )
            after = rows[-1].id


@dataclass(frozen=True)
class AuditQuery:
    """Filters of the audit log: every given one must match."""

    actor: str | None = None  # the account's e-mail address or the admin token's key id, exactly
    action: str | None = None
    target: str | None = None  # the end user key, account e-mail, … the entry is about
    since: int | None = None  # ms, inclusive
    until: int | None = None  # ms, exclusive

    def clauses(self, project_id: int) -> list[sa.ColumnElement[bool]]:
        where = [audit_log.c.project_id == project_id]
        if self.actor:
            where.append(audit_log.c.actor == self.actor)
        if self.action:
            where.append(audit_log.c.action == self.action)
        if self.target:
            where.append(audit_log.c.target == self.target)
        if self.since is not None:
            where.append(audit_log.c.ts >= self.since)
        if self.until is not None:
            where.append(audit_log.c.ts < self.until)
        return where


AUDIT_CSV_COLUMNS = ("id", "time_utc", "actor", "action", "target", "details")


def audit_json(row) -> dict:
    return {
        "id": row.id,
        "ts": row.ts,
        "actor": row.actor,
        "action": row.action,
        "target": row.target,
        "details": msgspec.json.decode(row.details),
    }


def _utc_stamp(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def _csv_row(values, safe: bool = False) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow([csv_cell(v) for v in values] if safe else values)
    return out.getvalue()


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
