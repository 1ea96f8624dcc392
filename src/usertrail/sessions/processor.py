"""Incremental sessionization, identity stitching and session closing.

Ingest marks each end user it touched as pending (with the earliest new event time). The
processor claims pending users, recomputes their sessions from the start of the affected run of
activity, closes sessions that have become closable, and applies every close to the End User
Object in the same transaction. `rebuild()` computes the same state from all events at once;
both use the pure rule in `sessions/rules.py`, so they agree (tested with hypothesis).

Identity: an anonymous key is stitched to an identified user when an event of that user carries
the anonymous id, or when both used the same client session id (a login inside a session). The
earliest such link (by event time, then event id) owns the anonymous key; an identified user is
never merged into another. The owner's sessions cover its own events and those of every
anonymous key it owns.
"""

from __future__ import annotations

import functools
import itertools
import logging
import operator
import secrets
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import msgspec
import sqlalchemy as sa

from usertrail.profiles.standard import ClosedSession, compute
from usertrail.segments.membership import SavedSegments, refresh_all, refresh_users
from usertrail.sessions.rules import IDLE_MS, EventPoint, Session, is_closable, sessionize
from usertrail.store.database import insert_ignore, lock_key, write_transaction
from usertrail.store.identity import is_identified, members_of, owner_of
from usertrail.store.pending import mark_pending
from usertrail.store.schema import end_users, events, identity_links, pending_users, session_hints, sessions

CLAIM_MS = 120_000
log = logging.getLogger(__name__)
EVERYTHING = -(2**62)

_EVENT_COLUMNS = (
    events.c.user_key,
    events.c.ts,
    events.c.event_id,
    events.c.type,
    events.c.session_hint,
    events.c.url_path,
    events.c.country,
    events.c.region,
    events.c.city,
    events.c.browser,
    events.c.browser_version,
    events.c.os,
    events.c.device_type,
    events.c.user_vars,
    events.c.anon_id,
    events.c.user_id,
)


# Statements built once: building SQLAlchemy expressions per call cost more than running them.
_P, _K = sa.bindparam("p"), sa.bindparam("k")
_EVENTS_SINCE = (
    sa.select(*_EVENT_COLUMNS)
    .where(
        events.c.project_id == _P,
        events.c.user_key.in_(sa.bindparam("keys", expanding=True)),
        events.c.ts >= sa.bindparam("since"),
    )
    .order_by(events.c.ts, events.c.event_id)
)
_SESSIONS_OF = (
    sa.select(sessions).where(sessions.c.project_id == _P, sessions.c.user_key == _K).order_by(sessions.c.start_ts)
)
_DROP_SESSIONS_FROM = sessions.delete().where(
    sessions.c.project_id == _P, sessions.c.user_key == _K, sessions.c.start_ts >= sa.bindparam("window")
)
_UNCLAIMED = sa.or_(pending_users.c.claimed_until.is_(None), pending_users.c.claimed_until < sa.bindparam("now"))
_CLAIM = (
    pending_users.update()
    .where(pending_users.c.project_id == _P, pending_users.c.user_key == _K, _UNCLAIMED)
    .values(claimed_until=sa.bindparam("until"), claim=sa.bindparam("worker"))
)
_MINE = (
    pending_users.c.project_id == _P,
    pending_users.c.user_key == _K,
    pending_users.c.claim == sa.bindparam("worker"),
)
_DONE = pending_users.delete().where(*_MINE, pending_users.c.version == sa.bindparam("version"))
_RELEASE = pending_users.update().where(*_MINE).values(claimed_until=None, claim=None)


@dataclass
class ProcessStats:
    users: int = 0
    sessions_closed: int = 0
    profiles_updated: int = 0


@dataclass
class _Links:
    """Link candidates found in a batch of events: (anon key, person key) -> (ts, event id)."""

    candidates: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)
    hints: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)  # (hint, key) -> first

    def offer(self, anon: str, person: str, at: tuple[int, str]) -> None:
        key = (anon, person)
        if key not in self.candidates or at < self.candidates[key]:
            self.candidates[key] = at

    def see_hint(self, hint: str, key: str, at: tuple[int, str]) -> None:
        k = (hint, key)
        if k not in self.hints or at < self.hints[k]:
            self.hints[k] = at


def _point(row) -> EventPoint:
    return EventPoint(
        row.ts,
        row.event_id,
        row.type,
        row.session_hint,
        row.url_path,
        row.country,
        row.region,
        row.city,
        row.browser,
        row.browser_version,
        row.os,
        row.device_type,
        row.user_vars,
    )


def _collect_links(rows: Iterable, links: _Links) -> None:
    for r in rows:
        at = (r.ts, r.event_id)
        if r.session_hint:
            links.see_hint(r.session_hint, r.user_key, at)
        if is_identified(r.user_key) and r.anon_id:
            links.offer("a:" + r.anon_id, r.user_key, at)


def _session_row(project_id: int, owner: str, s: Session, status: str, closed_at: int | None) -> dict:
    return {
        "project_id": project_id,
        "user_key": owner,
        "start_ts": s.start,
        "end_ts": s.end,
        "event_count": s.events,
        "interaction_count": s.interactions,
        "page_views": s.page_views,
        "is_empty": s.is_empty,
        "status": status,
        "closed_at": closed_at,
        "client_session_ids": msgspec.json.encode(s.hints).decode(),
        "entry_path": s.entry_path,
        "exit_path": s.exit_path,
        "country": s.country,
        "region": s.region,
        "city": s.city,
        "browser": s.browser,
        "browser_version": s.browser_version,
        "os": s.os,
        "device_type": s.device_type,
        "user_vars": msgspec.json.encode(s.user_vars).decode() if s.user_vars else None,
    }


def _profile_row(project_id: int, owner: str, closed: Sequence[ClosedSession], now: int) -> dict | None:
    attrs = compute(closed)
    if attrs is None:
        return None
    return {
        "project_id": project_id,
        "user_key": owner,
        "first_seen": attrs.first_seen,
        "last_seen": attrs.last_seen,
        "total_sessions": attrs.total_sessions,
        "avg_session_duration_ms": attrs.average_session_duration,
        "total_session_duration_ms": attrs.total_session_duration,
        "avg_time_between_sessions_ms": attrs.average_time_between_sessions,
        "country": attrs.country,
        "region": attrs.region,
        "city": attrs.city,
        "browser_name": attrs.browser_name,
        "browser_version": attrs.browser_version,
        "analytics_properties": (
            msgspec.json.encode(attrs.analytics_properties).decode() if attrs.analytics_properties else None
        ),
        "updated_at": now,
    }


def _closed_view(row) -> ClosedSession:
    return ClosedSession(
        row.start_ts,
        row.end_ts,
        row.country,
        row.region,
        row.city,
        row.browser,
        row.browser_version,
        msgspec.json.decode(row.user_vars) if row.user_vars else None,
    )


class SessionProcessor:
    """Keeps sessions, identity links and End User Objects up to date with the events."""

    def __init__(self, engine: sa.Engine, settle_ms: int = 0, max_defer_ms: int = 60_000) -> None:
        """`settle_ms`: recompute a user only once no new event has marked them for this long (a burst
        of batches then costs one recompute, not one per batch), but never later than `max_defer_ms`
        after their first mark. Sessions due to close are marked "due now" and never wait.
        """
        self.engine = engine
        self.worker = secrets.token_hex(6)
        self.segments = SavedSegments()
        self.settle_ms, self.max_defer_ms = settle_ms, max_defer_ms

    # --- the incremental path --------------------------------------------------------------

    def run(self, now: int, batch: int = 200, max_rounds: int = 50) -> ProcessStats:
        """Process pending users (and sessions that became closable) as of `now`.

        Bounded by `max_rounds` claims so a caller under continuous ingest gets control back.
        """
        total = ProcessStats()
        self.enqueue_due_closes(now)
        for _ in range(max_rounds):
            claimed = self._claim(now, batch)
            if not claimed:
                break
            # SQLite has one writer anyway, so several users share a transaction (one commit);
            # on PostgreSQL each user has its own, so advisory locks are never held across users.
            per_transaction = 25 if self.engine.dialect.name == "sqlite" else 1
            for i in range(0, len(claimed), per_transaction):
                with write_transaction(self.engine) as conn:
                    for project_id, key, since, version in claimed[i : i + per_transaction]:
                        try:
                            with conn.begin_nested():
                                stats = self._process_one(conn, project_id, key, since, version, now)
                        except sa.exc.SQLAlchemyError:
                            # Left claimed: retried when the claim lapses; the others go on.
                            log.exception("processing end user %s of project %d failed", key, project_id)
                            continue
                        total.users += 1
                        total.sessions_closed += stats.sessions_closed
                        total.profiles_updated += stats.profiles_updated
        return total

    def enqueue_due_closes(self, now: int) -> int:
        """Mark users whose open session has been idle for 30 minutes as pending."""
        with self.engine.connect() as conn:
            due = conn.execute(
                sa.select(sessions.c.project_id, sessions.c.user_key, sa.func.min(sessions.c.start_ts))
                .where(sessions.c.status == "open", sessions.c.end_ts <= now - IDLE_MS)
                .group_by(sessions.c.project_id, sessions.c.user_key)
            ).all()
        if due:
            with write_transaction(self.engine) as conn:
                mark_pending(conn, [(p, k, s) for p, k, s in due], marked_at=0)
        return len(due)

    def _claim(self, now: int, batch: int) -> list[tuple[int, str, int, int]]:
        query = (
            sa.select(
                pending_users.c.project_id,
                pending_users.c.user_key,
                pending_users.c.since_ts,
                pending_users.c.version,
            )
            .where(sa.or_(pending_users.c.claimed_until.is_(None), pending_users.c.claimed_until < now))
            .order_by(pending_users.c.since_ts)
            .limit(batch)
        )
        if self.settle_ms:
            query = query.where(
                sa.or_(
                    pending_users.c.marked_at.is_(None),
                    pending_users.c.marked_at <= now - self.settle_ms,
                    pending_users.c.first_marked_at <= now - self.max_defer_ms,
                )
            )
        with self.engine.connect() as conn:
            candidates = conn.execute(query).all()
        claimed = []
        if not candidates:
            return claimed
        with write_transaction(self.engine) as conn:
            for project_id, key, since, version in candidates:
                got = conn.execute(
                    _CLAIM, {"p": project_id, "k": key, "now": now, "until": now + CLAIM_MS, "worker": self.worker}
                ).rowcount
                if got:
                    claimed.append((project_id, key, since, version))
        return claimed

    def _process_one(
        self, conn: sa.Connection, project_id: int, key: str, since: int, version: int, now: int
    ) -> ProcessStats:
        stats = ProcessStats()
        fresh = self._events_of(conn, project_id, [key], since)
        links = _Links()
        _collect_links(fresh, links)
        affected = self._apply_links(conn, project_id, links)
        owner = owner_of(conn, project_id, key)
        targets = {owner: since}
        if owner != key:
            self._forget(conn, project_id, key, now)
        for k in affected:
            targets[k] = EVERYTHING
        for target in sorted(targets):  # one lock order everywhere, so two workers never deadlock
            lock_key(conn, "sessions", project_id, target)
        for target, target_since in sorted(targets.items()):
            if owner_of(conn, project_id, target) != target:
                self._forget(conn, project_id, target, now)
                continue
            closed, updated = self._recompute(conn, project_id, target, target_since, now)
            stats.sessions_closed += closed
            stats.profiles_updated += updated
        marks = {"p": project_id, "k": key, "version": version, "worker": self.worker}
        conn.execute(_DONE, marks)
        conn.execute(_RELEASE, marks)  # newer events arrived meanwhile: the row stays for the next round
        return stats

    def _events_of(self, conn: sa.Connection, project_id: int, keys: Sequence[str], since: int) -> list:
        return conn.execute(_EVENTS_SINCE, {"p": project_id, "keys": list(keys), "since": since}).all()

    def _apply_links(self, conn: sa.Connection, project_id: int, links: _Links) -> set[str]:
        """Store link candidates (including ones found through shared session ids).

        Returns the keys whose sessions must be recomputed in full because ownership moved.
        """
        for (hint, key), at in list(links.hints.items()):
            ts, event_id = _keep_earliest(
                conn,
                session_hints,
                {"project_id": project_id, "session_hint": hint, "user_key": key},
                "first_ts",
                "first_event_id",
                at,
            )
            for other in conn.execute(
                sa.select(session_hints).where(
                    session_hints.c.project_id == project_id,
                    session_hints.c.session_hint == hint,
                    session_hints.c.user_key != key,
                )
            ).all():
                mine_identified, other_identified = is_identified(key), is_identified(other.user_key)
                if mine_identified == other_identified:
                    continue
                person, anon = (key, other.user_key) if mine_identified else (other.user_key, key)
                person_first = (ts, event_id) if mine_identified else (other.first_ts, other.first_event_id)
                links.offer(anon, person, person_first)
        affected: set[str] = set()
        for (anon, person), at in links.candidates.items():
            before = owner_of(conn, project_id, anon)
            _keep_earliest(
                conn,
                identity_links,
                {"project_id": project_id, "user_key": anon, "person_key": person},
                "link_ts",
                "link_event_id",
                at,
            )
            after = owner_of(conn, project_id, anon)
            if after != before:
                affected.update({before, after, anon})
        return affected

    def _forget(self, conn: sa.Connection, project_id: int, key: str, now: int) -> None:
        """A key owned by someone else has no sessions, profile or segment membership of its own."""
        conn.execute(sessions.delete().where(sessions.c.project_id == project_id, sessions.c.user_key == key))
        conn.execute(end_users.delete().where(end_users.c.project_id == project_id, end_users.c.user_key == key))
        refresh_users(conn, project_id, [key], now, self.segments)

    def _recompute(self, conn: sa.Connection, project_id: int, owner: str, since: int, now: int) -> tuple[int, int]:
        """Recompute the owner's sessions from the run of activity that holds `since`; apply closes."""
        lock_key(conn, "sessions", project_id, owner)
        old = conn.execute(_SESSIONS_OF, {"p": project_id, "k": owner}).all()
        window = _window_start(old, since)
        members = members_of(conn, project_id, owner)
        points = [_point(r) for r in self._events_of(conn, project_id, members, window)]
        new = sessionize(points)
        kept = [r for r in old if r.start_ts < window]
        previous = {r.start_ts: r for r in old if r.start_ts >= window}
        conn.execute(_DROP_SESSIONS_FROM, {"p": project_id, "k": owner, "window": window})
        rows, closed_now = [], 0
        for i, s in enumerate(new):
            closable = is_closable(s, i == len(new) - 1, now)
            before = previous.get(s.start)
            if closable and before is not None and before.status == "closed":
                closed_at = before.closed_at
            elif closable:
                closed_at = now
                closed_now += 1
            else:
                closed_at = None
            rows.append(_session_row(project_id, owner, s, "closed" if closable else "open", closed_at))
        if rows:
            conn.execute(sessions.insert(), rows)
        closed_before = {(r.start_ts, r.end_ts, r.is_empty) for r in previous.values() if r.status == "closed"}
        closed_after = {(r["start_ts"], r["end_ts"], r["is_empty"]) for r in rows if r["status"] == "closed"}
        if closed_before == closed_after and not any(
            _closed_differs(previous.get(r["start_ts"]), r) for r in rows if r["status"] == "closed"
        ):
            return closed_now, 0
        closed_sessions = [_closed_view(r) for r in kept if r.status == "closed" and not r.is_empty]
        closed_sessions += [_closed_view(_AsRow(r)) for r in rows if r["status"] == "closed" and not r["is_empty"]]
        self._store_profile(conn, project_id, owner, _profile_row(project_id, owner, closed_sessions, now))
        # A changed End User Object may move the user in or out of saved segments.
        refresh_users(conn, project_id, [owner], now, self.segments)
        return closed_now, 1

    def _store_profile(self, conn: sa.Connection, project_id: int, owner: str, row: dict | None) -> None:
        conn.execute(end_users.delete().where(end_users.c.project_id == project_id, end_users.c.user_key == owner))
        if row is not None:
            conn.execute(end_users.insert(), [row])

    # --- the full rebuild ------------------------------------------------------------------

    def rebuild(self, project_id: int, now: int) -> ProcessStats:
        """Recompute every session, link and End User Object of a project from its events.

        One streaming pass over the events in (user, time) order sessionizes each key and gathers
        identity links; only owners of stitched anonymous keys are read a second time, merged.
        """
        links = _Links()
        own_sessions: dict[str, list[Session]] = {}
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=20_000).execute(
                sa.select(*_EVENT_COLUMNS)
                .where(events.c.project_id == project_id)
                .order_by(events.c.user_key, events.c.ts)
            )
            for key, group in itertools.groupby(result, key=operator.attrgetter("user_key")):
                rows = list(group)
                _collect_links(rows, links)
                own_sessions[key] = sessionize(rows)
        by_hint: dict[str, list[tuple[str, tuple[int, str]]]] = defaultdict(list)
        for (hint, key), at in links.hints.items():
            by_hint[hint].append((key, at))
        for users in by_hint.values():
            for person, person_at in users:
                if is_identified(person):
                    for anon, _ in users:
                        if not is_identified(anon):
                            links.offer(anon, person, person_at)
        owner_rank: dict[str, tuple[int, str, str]] = {}
        for (anon, person), at in links.candidates.items():
            rank = (at[0], at[1], person)
            if anon not in owner_rank or rank < owner_rank[anon]:
                owner_rank[anon] = rank
        members: dict[str, list[str]] = defaultdict(list)
        for anon, rank in owner_rank.items():
            if anon in own_sessions:
                members[rank[2]].append(anon)
        session_rows, profile_rows, closed_count, owners = [], [], 0, 0
        with self.engine.connect() as conn:
            for owner in own_sessions.keys() | members.keys():
                if owner in owner_rank:
                    continue  # an anonymous key that belongs to an identified user
                owners += 1
                if owner in members:
                    keys = [owner, *members[owner]]
                    new = sessionize(_point(r) for r in self._events_of(conn, project_id, keys, EVERYTHING))
                else:
                    new = own_sessions[owner]
                closed_views = []
                for i, s in enumerate(new):
                    closable = is_closable(s, i == len(new) - 1, now)
                    closed_count += closable
                    row = _session_row(
                        project_id, owner, s, "closed" if closable else "open", now if closable else None
                    )
                    session_rows.append(row)
                    if closable and not s.is_empty:
                        closed_views.append(_closed_view(_AsRow(row)))
                profile = _profile_row(project_id, owner, closed_views, now)
                if profile is not None:
                    profile_rows.append(profile)
        hint_rows = [
            {"project_id": project_id, "session_hint": h, "user_key": k, "first_ts": at[0], "first_event_id": at[1]}
            for (h, k), at in links.hints.items()
        ]
        link_rows = [
            {"project_id": project_id, "user_key": a, "person_key": p, "link_ts": at[0], "link_event_id": at[1]}
            for (a, p), at in links.candidates.items()
        ]
        with write_transaction(self.engine) as conn:
            for table in (sessions, end_users, identity_links, session_hints, pending_users):
                conn.execute(table.delete().where(table.c.project_id == project_id))
            for table, rows in (
                (sessions, session_rows),
                (end_users, profile_rows),
                (identity_links, link_rows),
                (session_hints, hint_rows),
            ):
                for i in range(0, len(rows), 5_000):
                    conn.execute(table.insert(), rows[i : i + 5_000])
        refresh_all(self.engine, now, [project_id])
        return ProcessStats(users=owners, sessions_closed=closed_count, profiles_updated=len(profile_rows))


def _keep_earliest(
    conn: sa.Connection, table: sa.Table, key: dict, ts_column: str, id_column: str, at: tuple[int, str]
) -> tuple[int, str]:
    """Store `at` under `key` unless an earlier (time, event id) is stored; returns the earliest."""
    select, insert, update = _earliest_statements(table, tuple(key), ts_column, id_column, conn.dialect.name)
    params = {f"k_{name}": value for name, value in key.items()}
    row = conn.execute(select, params).first()
    if row is None:
        conn.execute(insert, {**key, ts_column: at[0], id_column: at[1]})
        return at
    if at < (row[0], row[1]):
        conn.execute(update, {**params, "new_ts": at[0], "new_id": at[1]})
        return at
    return (row[0], row[1])


@functools.cache
def _earliest_statements(
    table: sa.Table, names: tuple[str, ...], ts_column: str, id_column: str, dialect: str
) -> tuple:
    where = [table.c[name] == sa.bindparam(f"k_{name}") for name in names]
    return (
        sa.select(table.c[ts_column], table.c[id_column]).where(*where),
        insert_ignore(table, dialect),
        table.update().where(*where).values({ts_column: sa.bindparam("new_ts"), id_column: sa.bindparam("new_id")}),
    )


class _AsRow:
    """Attribute access over a session row dict (so one function reads stored and new rows)."""

    def __init__(self, row: dict) -> None:
        self.__dict__.update(row)


def _closed_differs(before, row: dict) -> bool:
    if before is None or before.status != "closed":
        return True
    fields = ("end_ts", "is_empty", "country", "region", "city", "browser", "browser_version", "user_vars")
    return any(getattr(before, f) != row[f] for f in fields)


def _window_start(old: Sequence, since: int) -> int:
    """Where recomputation must begin: the start of the run of activity that `since` joins.

    Sessions split only by the 12-hour cap are chained to the one before them, so the run goes
    back to the first session that followed a gap of 30 minutes or more.
    """
    if since == EVERYTHING or not old:
        return EVERYTHING
    index = max((i for i, r in enumerate(old) if r.start_ts <= since), default=None)
    if index is None:
        return EVERYTHING  # new events before everything known: the whole history may shift
    while index > 0 and old[index].start_ts - old[index - 1].end_ts < IDLE_MS:
        index -= 1
    return old[index].start_ts
