"""The event log: accepted events, rejected events, drop tallies and the security log.

Writes arrive as `IngestRecord`s (one per HTTP request) and are committed many at a time
(group commit), so one fsync covers every request that was waiting. Collection appends them to the
ingest journal (store/journal.py), and the indexer (collect/indexer.py) stores them here in bulk.
"""

from __future__ import annotations

import operator
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa

from usertrail.reports import rollup
from usertrail.sessions import traits
from usertrail.store import journal
from usertrail.store.database import insert_ignore, insert_rows_new, upsert_add, write_transaction
from usertrail.store.pending import mark_pending
from usertrail.store.schema import drop_counts, events, rejected_events, security_log

DUPLICATE = "duplicate"

# Event rows travel as tuples in this column order: the hot path hands them to the driver as is. The
# indexer adds the traits it derives from them (`stored_row`), so journaled rows never carry them.
EVENT_COLUMNS: tuple[str, ...] = tuple(c.name for c in events.columns if c.name != "traits")
STORED_COLUMNS: tuple[str, ...] = (*EVENT_COLUMNS, "traits")
_USER_KEY, _TS, _ENV = (EVENT_COLUMNS.index(name) for name in ("user_key", "ts", "env"))
_TYPE, _APP_TYPE, _OBJECT_ID = (EVENT_COLUMNS.index(name) for name in ("type", "app_type", "object_id"))
_PAYLOAD = EVENT_COLUMNS.index("payload")
# The columns `traits.of_event` takes, in its order.
_traits_from = operator.itemgetter(
    *(
        EVENT_COLUMNS.index(name)
        for name in ("type", "url_path", "country", "browser", "os", "device_type", "user_vars", "anon_id")
    )
)
_rollup_of = operator.itemgetter(*(EVENT_COLUMNS.index(name) for name in rollup.COLUMNS))
_KEY = ("project_id", "user_key", "event_id")
_key_of = operator.itemgetter(*(EVENT_COLUMNS.index(name) for name in _KEY))


# Rows journaled before migration 0034 lack its six client columns, which sit just before the payload.
_CLIENT_COLUMNS_0034 = 6


def current_row(row: Sequence) -> Sequence:
    """A journaled row in today's `EVENT_COLUMNS` order: one journaled before migration 0034 (and indexed
    after the upgrade) gets NULL for the columns it added."""
    if len(row) == len(EVENT_COLUMNS) - _CLIENT_COLUMNS_0034:
        return (*row[:-1], *[None] * _CLIENT_COLUMNS_0034, row[-1])
    return row


def event_row(**values) -> tuple:
    """An `events` row tuple from column values (missing columns are NULL)."""
    unknown = values.keys() - set(EVENT_COLUMNS)
    if unknown:
        raise KeyError(f"not event columns: {sorted(unknown)}")
    return tuple(values.get(name) for name in EVENT_COLUMNS)


def stored_row(row: tuple) -> tuple:
    """An `EVENT_COLUMNS` row as `events` stores it (`STORED_COLUMNS`): the payload as text, and the traits
    the full rebuild reads (sessions/traits.py)."""
    payload = row[_PAYLOAD]
    return (
        *row[:_PAYLOAD],
        payload.decode() if type(payload) is bytes else payload,
        traits.of_event(*_traits_from(row)),
    )


@dataclass
class IngestRecord:
    """Everything one collection request leaves behind, written in one transaction."""

    project_id: int
    # In EVENT_COLUMNS order. Collection leaves the payload as UTF-8 bytes (text once stored, see `_store`).
    events: list[tuple] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    drops: Counter = field(default_factory=Counter)  # (env, reason) -> count
    security: dict | None = None

    def pack(self) -> journal.Packed:
        """The record as a journal row, not yet compressed; its id and time are the security log entry's."""
        drops = [(env, reason, count) for (env, reason), count in self.drops.items()]
        kept = journal.JournalRecord(self.project_id, self.events, self.rejected, drops, self.security)
        if self.security is not None:
            return journal.pack(kept, self.security["id"], self.security["ts"])
        now = int(time.time() * 1000)
        return journal.pack(kept, time_id(now), now)


@dataclass(frozen=True)
class WriteOutcome:
    stored: int
    duplicates: int


def time_id(ms: int) -> str:
    """A unique id that sorts by time: "<ms>-<random>" (rejected events, security log, journal rows)."""
    # Unique, not secret: `random` (reseeded in each forked process) costs a tenth of os.urandom's syscall.
    return f"{ms:013d}-{random.getrandbits(48):012x}"


def utc_day(ms: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ms / 1000))


def user_events_query(
    project_id: int, user_key: str, since: int | None = None, until: int | None = None, limit: int = 1000
) -> sa.Select:
    """One end user's events in time order, read along the (project, user, ts) index: only events of the
    same millisecond are sorted, by id (tests/test_store.py checks the plan on both engines)."""
    query = sa.select(events).where(events.c.project_id == project_id, events.c.user_key == user_key)
    if since is not None:
        query = query.where(events.c.ts >= since)
    if until is not None:
        query = query.where(events.c.ts < until)
    return query.order_by(events.c.ts, events.c.event_id).limit(limit)


class EventStore:
    """Appends and reads events and their side records."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        dialect = engine.dialect.name
        self._insert_rejected = insert_ignore(rejected_events, dialect)
        self._add_drops = upsert_add(drop_counts, dialect, ["project_id", "env", "day", "reason"], "count")
        self._file = journal.file_of(engine)  # SQLite: the journal's own file
        self._journal = journal.Appender(self._file or engine)

    def write_many(self, records: list[IngestRecord]) -> list[WriteOutcome]:
        """Store every record in one transaction now (not through the journal); on return they are durable."""
        with write_transaction(self.engine) as conn:
            return self._store(conn, records)

    def journal(self, records: Sequence[IngestRecord | journal.Packed]) -> None:
        """Append the records (packed or not yet) to the ingest journal in one transaction; on return they
        are durable. The indexer (`index_journal`) stores them later; until then they count in `backlog`."""
        packed = [r if isinstance(r, journal.Packed) else r.pack() for r in records]
        self._journal.append([journal.row_of(p) for p in packed])

    def close(self) -> None:
        """Close the connection that journal appends hold (opened again by the next `journal`)."""
        self._journal.close()

    def index_journal(self, max_events: int = 5_000, wait: bool = False) -> int:
        """Move the oldest journaled requests (about `max_events` events) into `events` and the side
        tables, in one transaction that also takes them out of the journal (store/journal.py tells how on
        each engine). Returns the requests moved.

        Rows another process is indexing are skipped, or with `wait` waited for (so that when a waiting
        call returns 0, everything journaled before it is in `events`)."""
        from_file: list[tuple[int, str]] = []
        with write_transaction(self.engine) as conn:
            if conn.dialect.name == "postgresql":
                # The commit need not wait for the WAL flush: if a crash loses this transaction, it loses
                # the journal rows' removal with it, and they are indexed again after the restart. Any
                # later commit that waits (a request's journal row) flushes this one too.
                conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
            taken = journal.take(conn, max_events, wait)
            if not taken and self._file is not None:
                journal.settle(conn, self._file)
                taken = journal.take_file(self._file, max_events)
                from_file = [(project_id, id_) for project_id, id_, _ in taken]
            if not taken:
                return 0
            records = []
            for _, _, blob in taken:
                kept = journal.decode(blob)
                drops = Counter({(env, reason): count for env, reason, count in kept.drops})
                rows = kept.events
                if rows and len(rows[0]) != len(EVENT_COLUMNS):
                    rows = [current_row(row) for row in rows]
                records.append(IngestRecord(kept.project_id, rows, kept.rejected, drops, kept.security))
            self._store(conn, records)
            if from_file:
                journal.mark(conn, from_file)
            else:
                journal.remove(conn, [(project_id, id_) for project_id, id_, _ in taken])
        if from_file:
            journal.remove_from_file(self._file, from_file)
        return len(taken)

    def index_all(self, max_events: int = 5_000) -> int:
        """Index everything journaled so far, waiting for rows other indexers hold; on return all of it is
        in `events`. Returns the requests this call indexed."""
        total = 0
        while moved := self.index_journal(max_events, wait=True):
            total += moved
        return total

    def backlog(self, project_id: int | None = None) -> journal.Backlog:
        """What the journal holds for `project_id` (or for every project), not yet in `events`."""
        with self.engine.connect() as conn:
            backlog = journal.backlog(conn, project_id)
        if self._file is None:
            return backlog
        with self._file.connect() as conn:
            return journal.combined(backlog, journal.backlog(conn, project_id))

    def _store(self, conn: sa.Connection, records: list[IngestRecord]) -> list[WriteOutcome]:
        outcomes: list[WriteOutcome] = []
        day = utc_day(int(time.time() * 1000))
        pending = [(record.project_id, row[_USER_KEY], row[_TS]) for record in records for row in record.events]
        tallies: Counter = Counter()
        for record in records:
            for (env, reason), count in record.drops.items():
                tallies[(record.project_id, env, reason)] += count
        # Requests journaled before migration 0033 carry no message.
        rejected = [{"message": None, **row} for record in records for row in record.rejected]
        security_rows = [record.security for record in records if record.security is not None]
        rows = [stored_row(row) for record in records for row in record.events]
        # One statement for every request's events: it also tells which were new (not re-sent).
        new = set(insert_rows_new(conn, events, STORED_COLUMNS, rows, _KEY)) if rows else set()
        fresh: list[tuple] = []  # new events the reports count, rolled up once for the whole commit
        for record in records:
            stored = 0
            for row in record.events:
                key = _key_of(row)
                if key in new:
                    new.discard(key)  # of equal keys only the first was stored
                    stored += 1
                    if rollup.counted(row[_TYPE], row[_APP_TYPE], row[_OBJECT_ID]):
                        fresh.append(_rollup_of(row))
            duplicates = len(record.events) - stored
            if duplicates:
                tallies[(record.project_id, record.events[0][_ENV], DUPLICATE)] += duplicates
            outcomes.append(WriteOutcome(stored, duplicates))
        # Re-sent events mark their user too: harmless, the recompute finds nothing new.
        mark_pending(conn, pending)
        if rejected:
            conn.execute(self._insert_rejected, rejected)
        if tallies:
            conn.execute(
                self._add_drops,
                [
                    {"project_id": p, "env": e, "day": day, "reason": r, "count": c}
                    for (p, e, r), c in sorted(tallies.items())
                ],
            )
        if security_rows:
            conn.execute(security_log.insert(), security_rows)
        # Last: the per-item day totals are rows every commit updates, so on PostgreSQL their row locks
        # are held only from here to the commit, and the other workers' commits queue on them briefly.
        rollup.add(conn, fresh)
        return outcomes

    def user_events(
        self,
        project_id: int,
        user_key: str,
        since: int | None = None,
        until: int | None = None,
        limit: int = 1000,
    ) -> list[sa.Row]:
        """One end user's events in time order (`user_events_query`)."""
        with self.engine.connect() as conn:
            return conn.execute(user_events_query(project_id, user_key, since, until, limit)).all()

    def count(self, project_id: int) -> int:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(sa.func.count()).select_from(events).where(events.c.project_id == project_id)
            ).scalar_one()

    def drop_counts(self, project_id: int, since_day: str | None = None) -> list[sa.Row]:
        """Tallies of dropped events by day, environment and reason."""
        query = sa.select(drop_counts.c.day, drop_counts.c.env, drop_counts.c.reason, drop_counts.c.count).where(
            drop_counts.c.project_id == project_id
        )
        if since_day:
            query = query.where(drop_counts.c.day >= since_day)
        with self.engine.connect() as conn:
            return conn.execute(query.order_by(drop_counts.c.day, drop_counts.c.reason)).all()

    def rejected(
        self, project_id: int, status: str | None = "pending", after: str | None = None, limit: int = 100
    ) -> list[sa.Row]:
        """Rejected events, oldest first, paged by id."""
        query = sa.select(rejected_events).where(rejected_events.c.project_id == project_id)
        if status:
            query = query.where(rejected_events.c.status == status)
        if after:
            query = query.where(rejected_events.c.id > after)
        with self.engine.connect() as conn:
            return conn.execute(query.order_by(rejected_events.c.id).limit(limit)).all()

    def rejected_count(self, project_id: int, status: str = "pending") -> int:
        """How many rejected events have `status`."""
        query = (
            sa.select(sa.func.count())
            .select_from(rejected_events)
            .where(rejected_events.c.project_id == project_id, rejected_events.c.status == status)
        )
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one()

    def rejected_by_ids(self, project_id: int, ids: list[str]) -> list[sa.Row]:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(rejected_events)
                .where(rejected_events.c.project_id == project_id, rejected_events.c.id.in_(ids))
                .order_by(rejected_events.c.id)
            ).all()

    def resolve_rejected(self, project_id: int, ids: list[str], status: str) -> None:
        """Mark rejected events as re-processed or discarded (they are kept for the record)."""
        if not ids:
            return
        with write_transaction(self.engine) as conn:
            conn.execute(
                rejected_events.update()
                .where(rejected_events.c.project_id == project_id, rejected_events.c.id.in_(ids))
                .values(status=status, resolved_at=int(time.time() * 1000))
            )

    def purge_security_log(self, older_than_ms: int) -> int:
        """Delete security-log entries (the only place full IPs live) older than the retention."""
        with write_transaction(self.engine) as conn:
            return conn.execute(security_log.delete().where(security_log.c.ts < older_than_ms)).rowcount

    def security_entries(self, project_id: int, limit: int = 100) -> list[sa.Row]:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(security_log)
                .where(security_log.c.project_id == project_id)
                .order_by(security_log.c.ts.desc())
                .limit(limit)
            ).all()
