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

import contextlib
import functools
import itertools
import logging
import secrets
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter

import msgspec
import sqlalchemy as sa

from usertrail.profiles.standard import ClosedSession
from usertrail.segments.membership import SavedSegments, refresh_all, refresh_users
from usertrail.sessions.columnar import collector_paused, sessionize_project
from usertrail.sessions.derive import (
    PROFILE_COLUMNS,
    SESSION_COLUMNS,
    fetch_points,
    fill_scope,
    profile_row,
    scope_link_events,
    session_row,
    sessionize_keys,
)
from usertrail.sessions.rules import IDLE_MS, Session, is_closable, sessionize
from usertrail.sessions.stamps import StoredCloses, keep_update_times
from usertrail.store import staging, user_index
from usertrail.store.bulk import bulk_rewrite, checkpoint_behind, large_page_cache, unflushed_commits
from usertrail.store.changes import note_project_changed, note_users_changed
from usertrail.store.database import (
    delete_rows,
    insert_rows,
    insert_rows_ignore,
    lock_keys,
    update_rows,
    write_transaction,
)
from usertrail.store.identity import is_identified
from usertrail.store.pending import mark_pending
from usertrail.store.schema import (
    end_users,
    events,
    identity_links,
    pending_users,
    session_hints,
    sessions,
    user_properties,
    user_words,
)

CLAIM_MS = 120_000
log = logging.getLogger(__name__)
EVERYTHING = -(2**62)
FOREVER = 2**62
CHUNK = 500  # keys per IN list

_UNCLAIMED = sa.or_(pending_users.c.claimed_until.is_(None), pending_users.c.claimed_until < sa.bindparam("now"))
# What a round leaves claimed after its done marks are deleted: users marked again meanwhile.
_RELEASE = (
    pending_users.update()
    .where(
        pending_users.c.project_id == sa.bindparam("p"),
        pending_users.c.claim == sa.bindparam("token"),
        pending_users.c.user_key.in_(sa.bindparam("keys", expanding=True)),
    )
    .values(claimed_until=None, claim=None)
)


@dataclass
class ProcessStats:
    users: int = 0
    sessions_closed: int = 0
    profiles_updated: int = 0

    def add(self, other: ProcessStats) -> None:
        self.users += other.users
        self.sessions_closed += other.sessions_closed
        self.profiles_updated += other.profiles_updated


@dataclass
class _Links:
    """Link candidates found in a batch of events: (anon key, person key) -> (ts, event id)."""

    candidates: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)
    hints: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)  # (hint, key) -> first

    def offer(self, anon: str, person: str, at: tuple[int, str]) -> None:
        key = (anon, person)
        if key not in self.candidates or at < self.candidates[key]:
            self.candidates[key] = at

    def see_hints(self, found: Iterable[tuple[str, str, tuple[int, str]]]) -> None:
        """Keep the first sighting of each (client session id, key) in `found` (hint, key, at) triples."""
        first_of = self.hints  # one loop for all, not a call per sighting: a rebuild has hundreds of thousands
        for hint, key, at in found:
            seen = first_of.get((hint, key))
            if seen is None or at < seen:
                first_of[(hint, key)] = at


def _collect_links(rows: Iterable[tuple], links: _Links) -> None:
    """Rows are (user_key, ts, event_id, session_hint, anon_id)."""
    hints = []
    for key, ts, event_id, hint, anon_id in rows:
        at = (ts, event_id)
        if hint:
            hints.append((hint, key, at))
        if anon_id and is_identified(key):
            links.offer("a:" + anon_id, key, at)
    links.see_hints(hints)


def _chunks(items: Sequence, size: int = CHUNK) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _owners(conn: sa.Connection, project_id: int, keys: Iterable[str]) -> dict[str, str]:
    """The owner of each key: an identified key owns itself, an anonymous one goes to its earliest link."""
    owners = {k: k for k in keys}
    anons = sorted(k for k in owners if not is_identified(k))
    for chunk in _chunks(anons):
        best: dict[str, tuple] = {}
        for anon, person, ts, event_id in conn.execute(
            sa.select(
                identity_links.c.user_key,
                identity_links.c.person_key,
                identity_links.c.link_ts,
                identity_links.c.link_event_id,
            ).where(identity_links.c.project_id == project_id, identity_links.c.user_key.in_(chunk))
        ):
            rank = (ts, event_id, person)
            if anon not in best or rank < best[anon]:
                best[anon] = rank
        for anon, rank in best.items():
            owners[anon] = rank[2]
    return owners


def _members(conn: sa.Connection, project_id: int, owners: Iterable[str]) -> dict[str, list[str]]:
    """Owners that hold anonymous keys with events -> [owner, *those keys (sorted)]."""
    identified = sorted(o for o in owners if is_identified(o))
    linked: dict[str, set[str]] = defaultdict(set)
    for chunk in _chunks(identified):
        for anon, person in conn.execute(
            sa.select(identity_links.c.user_key, identity_links.c.person_key).where(
                identity_links.c.project_id == project_id, identity_links.c.person_key.in_(chunk)
            )
        ):
            linked[person].add(anon)
    if not linked:
        return {}
    owner_of_anon = _owners(conn, project_id, {a for anons in linked.values() for a in anons})
    # Only keys with events change the owner's sessions (a link alone, as after identify(), does not).
    active: set[str] = set()
    for chunk in _chunks(sorted(owner_of_anon)):
        active.update(
            conn.execute(
                sa.select(events.c.user_key)
                .where(events.c.project_id == project_id, events.c.user_key.in_(chunk))
                .distinct()
            ).scalars()
        )
    members = {}
    for person, anons in linked.items():
        own = sorted(a for a in anons if owner_of_anon[a] == person and a in active)
        if own:
            members[person] = [person, *own]
    return members


def _sessions_of(
    conn: sa.Connection, project_id: int, targets: dict[str, int], members: dict[str, list[str]]
) -> dict[str, list[Session]]:
    """New sessions of each target from its window on: set-based SQL, the Python rule where needed."""
    simple = {t: since for t, since in targets.items() if t not in members}
    made: dict[str, list[Session]] = {}
    if simple:
        fill_scope(conn, simple)
        made.update(sessionize_keys(conn, project_id).sessions)
    for owner, keys in members.items():
        if owner in targets:
            made[owner] = sessionize(fetch_points(conn, project_id, keys, targets[owner], FOREVER))
    return made


class SessionProcessor:
    """Keeps sessions, identity links and End User Objects up to date with the events."""

    def __init__(self, engine: sa.Engine, settle_ms: int = 0, max_defer_ms: int = 60_000) -> None:
        """`settle_ms`: recompute a user only once no new event has marked them for this long (a burst
        of batches then costs one recompute, not one per batch), but never later than `max_defer_ms`
        after their first mark. Sessions due to close are marked "due now" and never wait.
        """
        self.engine = engine
        self.worker = secrets.token_hex(6)
        self._rounds = itertools.count()
        self.segments = SavedSegments()
        self.settle_ms, self.max_defer_ms = settle_ms, max_defer_ms

    # --- the incremental path --------------------------------------------------------------

    def run(self, now: int, batch: int = 1000, max_rounds: int = 50) -> ProcessStats:
        """Process pending users (and sessions that became closable) as of `now`.

        Each round claims up to `batch` users and recomputes them together, a few statements for
        the whole batch. Bounded by `max_rounds` claims so a caller under continuous ingest gets
        control back.
        """
        total = ProcessStats()
        self.enqueue_due_closes(now)
        for _ in range(max_rounds):
            token, claimed = self._claim(now, batch)
            if not claimed:
                break
            by_project: dict[int, list[tuple[str, int, int]]] = defaultdict(list)
            for project_id, key, since, version in claimed:
                by_project[project_id].append((key, since, version))
            for project_id, items in by_project.items():
                total.add(self._process_guarded(project_id, items, token, now))
        return total

    def _process_guarded(
        self, project_id: int, items: list[tuple[str, int, int]], token: str, now: int
    ) -> ProcessStats:
        """The batch in one transaction; if it fails, each user alone, so one bad user holds up no other."""
        try:
            with write_transaction(self.engine) as conn:
                return self._process_batch(conn, project_id, items, token, now)
        except sa.exc.SQLAlchemyError:
            if len(items) == 1:
                # Left claimed: retried when the claim lapses.
                log.exception("processing end user %s of project %d failed", items[0][0], project_id)
                return ProcessStats()
        total = ProcessStats()
        for item in items:
            total.add(self._process_guarded(project_id, [item], token, now))
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

    def _claim(self, now: int, batch: int) -> tuple[str, list[tuple[int, str, int, int]]]:
        """Claim up to `batch` pending users (oldest work first) with a token of this round."""
        query = (
            sa.select(pending_users.c.project_id, pending_users.c.user_key)
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
        token = f"{self.worker}-{next(self._rounds)}"
        if not candidates:
            return token, []
        by_project: dict[int, list[str]] = defaultdict(list)
        for project_id, key in candidates:
            by_project[project_id].append(key)
        claimed = []
        with write_transaction(self.engine) as conn:
            for project_id, keys in by_project.items():
                for chunk in _chunks(sorted(keys)):
                    where = (pending_users.c.project_id == project_id, pending_users.c.user_key.in_(chunk))
                    # Conditional: a key another worker claimed meanwhile is not taken.
                    conn.execute(
                        pending_users.update()
                        .where(*where, _UNCLAIMED)
                        .values(claimed_until=now + CLAIM_MS, claim=token),
                        {"now": now},
                    )
                    claimed += conn.execute(
                        sa.select(
                            pending_users.c.project_id,
                            pending_users.c.user_key,
                            pending_users.c.since_ts,
                            pending_users.c.version,
                        ).where(*where, pending_users.c.claim == token)
                    ).all()
        return token, [tuple(r) for r in claimed]

    def _process_batch(
        self, conn: sa.Connection, project_id: int, items: list[tuple[str, int, int]], token: str, now: int
    ) -> ProcessStats:
        since_of = {key: since for key, since, _ in items}
        fill_scope(conn, since_of)
        fresh = scope_link_events(conn, project_id)
        links = _Links()
        _collect_links(fresh, links)
        affected = self._apply_links(conn, project_id, links)
        owners = _owners(conn, project_id, since_of)
        forget = {key for key, owner in owners.items() if owner != key}
        targets: dict[str, int] = {}
        for key, owner in owners.items():
            targets[owner] = min(targets.get(owner, since_of[key]), since_of[key])
        for key in affected:
            targets[key] = EVERYTHING
        lock_keys(conn, [("sessions", project_id, t) for t in sorted(targets)])  # one order: no deadlocks
        for target, owner in _owners(conn, project_id, list(targets)).items():
            if owner != target:
                forget.add(target)
                del targets[target]
        if forget:
            self._forget(conn, project_id, sorted(forget), now)
        changed: list[str] = []
        stats = self._recompute(conn, project_id, targets, now, changed)
        stats.users = len(items)
        # Done unless a newer mark changed the version meanwhile: then the row stays for the next round.
        delete_rows(
            conn,
            pending_users,
            {"project_id": project_id, "claim": token},
            (("user_key", "="), ("version", "=")),
            [(key, version) for key, _, version in items],
        )
        for chunk in _chunks([key for key, _, _ in items]):
            conn.execute(_RELEASE, {"p": project_id, "token": token, "keys": list(chunk)})
        # Last: it holds the project's change counter (segment counts) until the commit, so the other
        # processes' batches queue on it only for this batch's commit.
        note_users_changed(conn, project_id, [*forget, *changed])
        return stats

    def _apply_links(self, conn: sa.Connection, project_id: int, links: _Links) -> set[str]:
        """Store link candidates (including ones found through shared session ids), earliest first.

        Returns the keys whose sessions must be recomputed in full because ownership moved.
        """
        if links.hints:
            stored = _read_pairs(conn, session_hints, _HINT_COLUMNS, project_id, {hint for hint, _ in links.hints})
            _write_earliest(conn, session_hints, _HINT_COLUMNS, project_id, stored, links.hints)
            by_hint: dict[str, list[str]] = defaultdict(list)
            for hint, key in stored:
                by_hint[hint].append(key)
            for hint, key in links.hints:
                mine = is_identified(key)
                for other in by_hint[hint]:
                    if other == key or is_identified(other) == mine:
                        continue
                    person, anon = (key, other) if mine else (other, key)
                    links.offer(anon, person, stored[(hint, person)])
        if not links.candidates:
            return set()
        anons = sorted({anon for anon, _ in links.candidates})
        existing = _read_pairs(conn, identity_links, _LINK_COLUMNS, project_id, anons)
        before = _earliest_owner(existing)
        _write_earliest(conn, identity_links, _LINK_COLUMNS, project_id, existing, links.candidates)
        after = _earliest_owner(existing)
        affected: set[str] = set()
        for anon in anons:
            was, now_owner = before.get(anon, anon), after.get(anon, anon)
            if was != now_owner:
                affected.update({was, now_owner, anon})
        return affected

    def _forget(self, conn: sa.Connection, project_id: int, keys: list[str], now: int) -> None:
        """Keys owned by someone else have no sessions, profile or segment membership of their own."""
        for chunk in _chunks(keys):
            conn.execute(sessions.delete().where(sessions.c.project_id == project_id, sessions.c.user_key.in_(chunk)))
            conn.execute(
                end_users.delete().where(end_users.c.project_id == project_id, end_users.c.user_key.in_(chunk))
            )
        user_index.forget(conn, project_id, keys)
        refresh_users(conn, project_id, keys, now, self.segments)

    def _recompute(
        self, conn: sa.Connection, project_id: int, targets: dict[str, int], now: int, changed: list[str]
    ) -> ProcessStats:
        """Recompute the owners' sessions from the run of activity that holds each one's `since`; apply closes.
        Appends to `changed` the owners whose End User Object it rewrote."""
        stats = ProcessStats()
        if not targets:
            return stats
        old: dict[str, list] = defaultdict(list)
        for chunk in _chunks(sorted(targets)):
            for row in conn.execute(
                sa.select(*_OLD_COLUMNS)
                .where(sessions.c.project_id == project_id, sessions.c.user_key.in_(chunk))
                .order_by(sessions.c.user_key, sessions.c.start_ts)
            ):
                old[row.user_key].append(row)
        windows = {t: _window_start(old[t], since) for t, since in targets.items()}
        made = _sessions_of(conn, project_id, windows, _members(conn, project_id, targets))
        drops, rows, profile_rows = [], [], []
        for owner in sorted(targets):
            window = windows[owner]
            previous = {r.start_ts: r for r in old[owner] if r.start_ts >= window}
            new = made.get(owner, [])
            drops.append((owner, window))
            mine, closed = [], []
            for i, s in enumerate(new):
                closable = is_closable(s, i == len(new) - 1, now)
                if closable and not s.is_empty:
                    closed.append(s)
                before = previous.get(s.start)
                if closable and before is not None and before.status == "closed":
                    closed_at = before.closed_at
                elif closable:
                    closed_at = now
                    stats.sessions_closed += 1
                else:
                    closed_at = None
                mine.append(session_row(project_id, owner, s, "closed" if closable else "open", closed_at))
            rows += mine
            closed_before = {_closed_facts(r) for r in previous.values() if r.status == "closed"}
            closed_after = {_closed_facts_of_row(r) for r in mine if r[_STATUS] == "closed"}
            if closed_before != closed_after:
                changed.append(owner)
                kept = [_stored_session(r) for r in old[owner] if r.start_ts < window and _counts(r)]
                if (row := profile_row(project_id, owner, kept + closed, now)) is not None:
                    profile_rows.append(row)
        delete_rows(conn, sessions, {"project_id": project_id}, (("user_key", "="), ("start_ts", ">=")), drops)
        insert_rows(conn, sessions, SESSION_COLUMNS, rows)
        if changed:
            self._store_profiles(conn, project_id, changed, profile_rows)
            # A changed End User Object may move the user in or out of saved segments.
            refresh_users(conn, project_id, changed, now, self.segments)
        stats.profiles_updated = len(changed)
        return stats

    def _store_profiles(self, conn: sa.Connection, project_id: int, owners: list[str], rows: list[tuple]) -> None:
        """Replace the End User Objects of these owners with `rows` (none for an owner without one)."""
        delete_rows(conn, end_users, {"project_id": project_id}, (("user_key", "="),), [(owner,) for owner in owners])
        insert_rows(conn, end_users, PROFILE_COLUMNS, rows)
        user_index.refresh(conn, project_id, owners)

    # --- the full rebuild ------------------------------------------------------------------

    def rebuild(self, project_id: int, now: int) -> ProcessStats:
        """Recompute every session, link and End User Object of a project from its events.

        The same rule as the incremental path, computed column-wise from one read of the project's
        events (`columnar.sessionize_project`); links come from what that pass found; only owners of
        stitched anonymous keys are read a second time, merged.
        """
        # The project's sessions and rows stay in memory until written; `stack` holds the sessions' stage.
        with collector_paused(), contextlib.ExitStack() as stack:
            return self._rebuild(project_id, now, stack)

    def _rebuild(self, project_id: int, now: int, stack: contextlib.ExitStack) -> ProcessStats:
        links = _Links()
        session_rows, profile_rows, closed_count, owners = [], [], 0, 0
        stage: staging.Stage | None = None
        with self.engine.connect() as conn, large_page_cache(conn):
            if conn.dialect.name == "postgresql":
                # One snapshot for every read: the column-wise pass finds events by storage address.
                conn.execution_options(isolation_level="REPEATABLE READ")
            found = sessionize_project(conn, project_id)
            stored = StoredCloses.read(conn, project_id)
            finished = found.table
            closes = stored.table_closes(finished) if finished is not None else None
            if finished is not None and conn.dialect.name == "sqlite" and len(finished.key) >= staging.STAGE_AT_ROWS:
                # Their sessions rows are made and written by a helper process while this one goes on; it
                # starts now, and makes them once stitching below has said which keys to leave out.
                make_rows = functools.partial(finished.session_rows_skipping, project_id, now, closes)
                stage = stack.enter_context(staging.staged(conn, sessions, SESSION_COLUMNS, make_rows))
            links.see_hints(found.hints)
            first_of = links.hints
            for anon_id, key, at in found.anon_ids:
                if is_identified(key):
                    links.offer("a:" + anon_id, key, at)
            # Only a client session id used by two keys or more can link them. (Mostly there is none: one set
            # of the ids, built in C, says so before any Python loop over hundreds of thousands of them.)
            hints = list(map(itemgetter(0), first_of))
            shared = set() if len(set(hints)) == len(hints) else {h for h, n in Counter(hints).items() if n > 1}
            by_hint: dict[str, list[tuple[str, tuple[int, str]]]] = defaultdict(list)
            for (hint, key), at in first_of.items() if shared else ():
                if hint in shared:
                    by_hint[hint].append((key, at))
            for users in by_hint.values():
                for person, person_at in users:
                    if is_identified(person):
                        for anon, _ in users:
                            if not is_identified(anon):
                                links.offer(anon, person, person_at)
            owner_of_anon = _earliest_owner(links.candidates)
            own = found.sessions
            tabled = found.table.owners() if found.table is not None else set()
            members: dict[str, list[str]] = defaultdict(list)
            for anon, person in owner_of_anon.items():
                if anon in own or anon in tabled:
                    members[person].append(anon)
            # The keys the pass finished column-wise, unless stitching reads them again below.
            skip = frozenset(owner_of_anon.keys() | members.keys())
            runs = finished.runs(now, skip) if finished is not None else None
            if stage is not None:
                stage.start(skip)
            closed_before = stored.of_keys(own.keys() | members.keys())
            del stored  # millions of objects: they would slow the Python work below while they live
            for owner in sorted(own.keys() | members.keys()):
                if owner in owner_of_anon:
                    continue  # an anonymous key that belongs to an identified user
                owners += 1
                if owner in members:
                    keys = [owner, *sorted(members[owner])]
                    new = sessionize(fetch_points(conn, project_id, keys, EVERYTHING, FOREVER))
                else:
                    new = own[owner]
                closed = []
                for i, s in enumerate(new):
                    closable = is_closable(s, i == len(new) - 1, now)
                    closed_count += closable
                    closed_at = closed_before.get((owner, s.start), now) if closable else None
                    session_rows.append(session_row(project_id, owner, s, "closed" if closable else "open", closed_at))
                    if closable and not s.is_empty:
                        closed.append(s)
                if (row := profile_row(project_id, owner, closed, now)) is not None:
                    profile_rows.append(row)
            if finished is not None:
                profiles, closed_now, users = finished.profile_rows(project_id, now, runs)
                profile_rows += profiles
                closed_count += closed_now
                owners += users
            profile_rows = keep_update_times(conn, project_id, profile_rows)
        # The runs' sessions rows not staged are made below, beside the database's index builds.
        finished_rows = len(runs.order) if runs is not None else 0
        incoming = {
            sessions: len(session_rows) + (finished_rows if stage is None else 0),
            end_users: owners,
            user_words: owners,
            user_properties: owners,
            identity_links: len(links.candidates),
            session_hints: len(links.hints),
        }
        staged_rows = finished_rows if stage is not None else 0
        with (
            self.engine.execution_options(immediate=True).connect() as conn,
            stage.attachable(conn) if stage is not None else contextlib.nullcontext(),
            checkpoint_behind(conn, sum(incoming.values()) + staged_rows),
            unflushed_commits(conn),
            conn.begin(),
            bulk_rewrite(conn, project_id, incoming) as rewrite,
        ):
            # The project's old rows are gone, or set aside to be merged (`bulk_rewrite`). Pending marks stay:
            # events that arrived after the read above marked their users, and the loop recomputes those users
            # from all their events (the rest cost one recompute).
            # Python work beside the database's index builds or merges (`Rewrite.while_finishing`).
            rewrite.write(end_users, PROFILE_COLUMNS, profile_rows)
            lookup, table_rows = rewrite.while_finishing(
                end_users,
                lambda: (
                    user_index.lookup_rows(project_id, [itemgetter(*_SEARCHED_INDEXES)(r) for r in profile_rows]),
                    finished.session_rows(project_id, now, runs, closes)
                    if finished is not None and stage is None
                    else [],
                ),
            )
            word_rows, property_rows = lookup
            rewrite.write(user_properties, user_index.PROPERTY_COLUMNS, property_rows)
            link_rows, hint_rows = rewrite.while_writing(
                user_words, user_index.WORD_COLUMNS, word_rows, lambda: _link_rows(project_id, links)
            )
            if stage is not None:
                # First: into an empty table SQLite copies the staged pages as they are (store/staging.py).
                stage.move_into(conn)
            rewrite.write(sessions, SESSION_COLUMNS, session_rows + table_rows)
            rewrite.write(identity_links, _LINK_COLUMNS, link_rows)
            rewrite.write(session_hints, _HINT_COLUMNS, hint_rows)
            # Numbered at the commit, not when the rows above were computed (docs/segments.md).
            note_project_changed(conn, project_id)
        refresh_all(self.engine, now, [project_id])
        return ProcessStats(users=owners, sessions_closed=closed_count, profiles_updated=len(profile_rows))


def _link_rows(project_id: int, links: _Links) -> tuple[list[tuple], list[tuple]]:
    """The identity_links and session_hints rows, in key order: each row lands next to the one before it
    in the primary key's B-tree."""
    return _in_key_order(project_id, links.candidates), _in_key_order(project_id, links.hints)


def _in_key_order(project_id: int, pairs: dict[tuple[str, str], tuple[int, str]]) -> list[tuple]:
    """Rows (project_id, a, b, ts, event id) of `pairs` ((a, b) -> (ts, event id)), in (a, b) order.

    The pairs are sorted as one string each, joined by NUL, and the rows are made from the items in that
    order (630k client session ids: 1.6 -> 1.3 s, against sorting the pairs, then looking each one up).
    A text holding NUL can only change where its row lands, not what is written."""
    items = list(pairs.items())
    joined = [a + "\0" + b for (a, b), _ in items]
    in_order = map(items.__getitem__, sorted(range(len(items)), key=joined.__getitem__))
    return [(project_id, a, b, ts, event_id) for (a, b), (ts, event_id) in in_order]


_HINT_COLUMNS = ("project_id", "session_hint", "user_key", "first_ts", "first_event_id")
_LINK_COLUMNS = ("project_id", "user_key", "person_key", "link_ts", "link_event_id")
_OLD_COLUMNS = (
    sessions.c.user_key,
    sessions.c.start_ts,
    sessions.c.end_ts,
    sessions.c.status,
    sessions.c.closed_at,
    sessions.c.is_empty,
    sessions.c.country,
    sessions.c.region,
    sessions.c.city,
    sessions.c.browser,
    sessions.c.browser_version,
    sessions.c.user_vars,
)
_STATUS = SESSION_COLUMNS.index("status")
_SEARCHED_INDEXES = tuple(PROFILE_COLUMNS.index(c.name) for c in user_index.SEARCHED)
# What a closed session contributes to the End User Object: if none of it changed, neither did the object.
_FACTS = ("start_ts", "end_ts", "is_empty", "country", "region", "city", "browser", "browser_version", "user_vars")
_FACT_INDEXES = tuple(SESSION_COLUMNS.index(c) for c in _FACTS)


def _counts(row) -> bool:
    """Whether a stored session counts for the End User Object: closed, with some interaction."""
    return row.status == "closed" and not row.is_empty


def _stored_session(row) -> ClosedSession:
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


def _closed_facts(row) -> tuple:
    return tuple(getattr(row, c) for c in _FACTS)


def _closed_facts_of_row(row: tuple) -> tuple:
    return tuple(row[i] for i in _FACT_INDEXES)


def _read_pairs(
    conn: sa.Connection, table: sa.Table, columns: Sequence[str], project_id: int, firsts: Iterable[str]
) -> dict[tuple[str, str], tuple[int, str]]:
    """The stored rows of a pair table (`columns`: project, first key, second key, time, event id) whose
    first key is one of `firsts`, as (first, second) -> (time, event id)."""
    first, second, ts, event_id = (table.c[name] for name in columns[1:])
    stored: dict[tuple[str, str], tuple[int, str]] = {}
    for chunk in _chunks(sorted(set(firsts))):
        query = sa.select(first, second, ts, event_id).where(table.c.project_id == project_id, first.in_(chunk))
        for a, b, at_ts, at_event in conn.execute(query):
            stored[(a, b)] = (at_ts, at_event)
    return stored


def _write_earliest(
    conn: sa.Connection,
    table: sa.Table,
    columns: Sequence[str],
    project_id: int,
    stored: dict[tuple[str, str], tuple[int, str]],
    found: dict[tuple[str, str], tuple[int, str]],
) -> None:
    """Fold `found` into `stored` (the earliest of each pair wins) and write the new and the earlier rows."""
    new, earlier = _merge_earliest(stored, found)
    # Ignore, not fail, if another worker stored the same row meanwhile (it was claimed for another key).
    if new:
        insert_rows_ignore(conn, table, columns, [(project_id, a, b, *at) for (a, b), at in new])
    update_rows(conn, table, columns[3:], columns[:3], [(*at, project_id, a, b) for (a, b), at in earlier])


def _merge_earliest(
    stored: dict[tuple[str, str], tuple[int, str]], found: dict[tuple[str, str], tuple[int, str]]
) -> tuple[list, list]:
    """Fold `found` into `stored` keeping the earliest of each; returns (new items, items made earlier)."""
    new, earlier = [], []
    for key, at in sorted(found.items()):
        if key not in stored:
            stored[key] = at
            new.append((key, at))
        elif at < stored[key]:
            stored[key] = at
            earlier.append((key, at))
    return new, earlier


def _earliest_owner(links: dict[tuple[str, str], tuple[int, str]]) -> dict[str, str]:
    """Anonymous key -> the person of its earliest link (time, event id, then person key)."""
    best: dict[str, tuple[int, str, str]] = {}
    for (anon, person), (ts, event_id) in links.items():
        rank = (ts, event_id, person)
        if anon not in best or rank < best[anon]:
            best[anon] = rank
    return {anon: rank[2] for anon, rank in best.items()}


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
