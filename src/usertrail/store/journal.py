"""The ingest journal: every accepted request's `IngestRecord`, durable before the request is answered.

A collection request costs one journal row (its events, rejections, drop tallies and security-log entry
as one msgpack value) instead of a row per event in `events` plus its indexes, the reports' rollup and
the pending marks. `take` and `remove` run inside the indexer's transaction (collect/indexer.py), which
writes the records into `events` and the side tables, so a row leaves the journal exactly when its
records are stored: a crash before the commit leaves it to be taken again, after it leaves nothing.
"""

from __future__ import annotations

import threading

import msgspec
import sqlalchemy as sa
import zstandard

from usertrail.store.schema import ingest_journal


class JournalRecord(msgspec.Struct, array_like=True):
    """One request's `IngestRecord` as the journal keeps it."""

    project_id: int
    events: list[tuple]
    rejected: list[dict]
    drops: list[tuple[str, str, int]]  # (env, reason, count)
    security: dict | None


class Backlog(msgspec.Struct):
    """What waits in the journal: requests, their events, and the oldest one's arrival (ms, or None)."""

    requests: int
    events: int
    oldest_received_at: int | None


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(JournalRecord).decode
# Level 1: a request's record (~40 KB of msgpack, mostly the events' JSON) shrinks several times in
# tens of microseconds, which the journal's commit then does not write (nor PostgreSQL compress again).
_contexts = threading.local()  # zstd contexts are not thread-safe; the writer and indexers are threads


def encode(record: JournalRecord) -> bytes:
    """The record as stored in the journal: msgpack, zstd-compressed."""
    compressor = getattr(_contexts, "compressor", None) or _context("compressor", zstandard.ZstdCompressor(level=1))
    return compressor.compress(_encode(record))


def decode(blob: bytes) -> JournalRecord:
    decompressor = getattr(_contexts, "decompressor", None) or _context("decompressor", zstandard.ZstdDecompressor())
    return _decode(decompressor.decompress(blob))


def _context(name: str, context):
    setattr(_contexts, name, context)
    return context


def append(conn: sa.Connection, rows: list[tuple[int, str, int, int, bytes]]) -> None:
    """Add journal rows `(project_id, id, received_at, events, record)` in the caller's transaction."""
    sql = "INSERT INTO ingest_journal (project_id, id, received_at, events, record) VALUES "
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(sql + "(%s, %s, %s, %s, %s)", rows)
    else:
        conn.exec_driver_sql(sql + "(?, ?, ?, ?, ?)", rows)


def take(conn: sa.Connection, max_events: int, wait: bool = False) -> list[tuple[int, str, bytes]]:
    """The oldest-first rows `(project_id, id, record)` for about `max_events` events, for this transaction.

    PostgreSQL locks the rows it returns and skips rows another indexer holds (or, with `wait`, waits for
    that indexer's commit, after which they are gone), so indexers in several processes never take the
    same row; on SQLite the caller's write transaction already excludes the others.
    """
    # A window over the running event count would stop at exactly `max_events`; the journal's rows are
    # small batches, so a row count from the average batch is close enough and keeps the statement cheap.
    limit = max(1, max_events // 50)
    # Ids begin with the arrival time, so their index gives oldest-first across projects.
    select = "SELECT project_id, id, record FROM ingest_journal ORDER BY id LIMIT "
    if conn.dialect.name == "postgresql":
        lock = " FOR UPDATE" if wait else " FOR UPDATE SKIP LOCKED"
        return conn.exec_driver_sql(select + "%s" + lock, (limit,)).fetchall()
    return conn.exec_driver_sql(select + "?", (limit,)).fetchall()


def remove(conn: sa.Connection, keys: list[tuple[int, str]]) -> None:
    """Delete the rows taken, in the same transaction that stored their records."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("DELETE FROM ingest_journal WHERE project_id = %s AND id = %s", keys)
    else:
        conn.exec_driver_sql("DELETE FROM ingest_journal WHERE project_id = ? AND id = ?", keys)


def backlog(conn: sa.Connection, project_id: int | None = None) -> Backlog:
    """The journal's backlog, for one project or for all."""
    columns = ingest_journal.c
    total = sa.func.coalesce(sa.func.sum(columns.events), 0)
    query = sa.select(sa.func.count(), total, sa.func.min(columns.received_at))
    if project_id is not None:
        query = query.where(columns.project_id == project_id)
    requests, events, oldest = conn.execute(query).one()
    return Backlog(requests, int(events), oldest)
