"""The ingest journal: every accepted request's `IngestRecord`, durable before the request is answered.

A collection request costs one journal row (its events, rejections, drop tallies and security-log entry
as one msgpack value) instead of a row per event in `events` plus its indexes, the reports' rollup and
the pending marks. `take` and `remove` run inside the indexer's transaction (collect/indexer.py), which
writes the records into `events` and the side tables, so a row leaves the journal exactly when its
records are stored: a crash before the commit leaves it to be taken again, after it leaves nothing.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time

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


_COLUMNS = "INSERT INTO ingest_journal (project_id, id, received_at, events, record) VALUES "


@functools.lru_cache(maxsize=64)
def _insert_sql(rows: int, placeholder: str) -> str:
    one = "(" + ", ".join([placeholder] * 5) + ")"
    return _COLUMNS + ", ".join([one] * rows)


class Appender:
    """Appends journal rows through one connection held for its owner's life (the group-commit writer).

    Each call is one multi-row INSERT in autocommit mode: a single statement is its own transaction,
    durable when it returns, and costs one round trip. Through a pooled SQLAlchemy transaction the same
    commit cost a checkout, a liveness ping, BEGIN, the INSERT and COMMIT: on PostgreSQL about 300 µs of
    the writer's CPU per commit against 70–90 µs (docs/benchmarks.md, Ingest, session 15). After an error
    the connection is dropped and the next call opens another; one idle for `idle_check_s` is checked
    first (the server may have closed it meanwhile), so a quiet spell does not cost the next group.
    """

    # Bound on one statement's parameters (5 per row): SQLite allows 32,766, PostgreSQL 65,535.
    MAX_ROWS = 1_000

    def __init__(self, engine: sa.Engine, idle_check_s: float = 5.0) -> None:
        self.engine = engine
        self.idle_check_s = idle_check_s
        self._placeholder = "%s" if engine.dialect.name == "postgresql" else "?"
        self._connection = None
        self._used_at = 0.0
        self._lock = threading.Lock()

    def append(self, rows: list[tuple[int, str, int, int, bytes]]) -> None:
        """Add journal rows `(project_id, id, received_at, events, record)` as one transaction."""
        if not rows:
            return
        if len(rows) > self.MAX_ROWS:
            raise ValueError(f"{len(rows)} journal rows in one statement (at most {self.MAX_ROWS})")
        parameters = [value for row in rows for value in row]
        with self._lock:
            if self._connection is not None and time.monotonic() - self._used_at >= self.idle_check_s:
                self._check()
            connection = self._connection or self._connect()
            try:
                cursor = connection.cursor()
                try:
                    cursor.execute(_insert_sql(len(rows), self._placeholder), parameters)
                finally:
                    cursor.close()
            except BaseException:
                self._drop()
                raise
            self._used_at = time.monotonic()

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _connect(self):
        connection = self.engine.raw_connection()
        if self.engine.dialect.name == "postgresql":
            connection.driver_connection.autocommit = True
        # Out of the pool for good: autocommit would otherwise leak into other users of the connection.
        connection.detach()
        # SQLite connections are in autocommit already (store/database.py sets isolation_level = None).
        self._connection = connection
        return connection

    def _check(self) -> None:
        """Drop the held connection if it no longer answers."""
        try:
            cursor = self._connection.cursor()
            try:
                cursor.execute("SELECT 1")
                cursor.fetchall()
            finally:
                cursor.close()
        except Exception:
            self._drop()

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()


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
