"""The ingest journal: every accepted request's `IngestRecord`, durable before the request is answered.

A collection request costs one journal row (its events, rejections, drop tallies and security-log entry
as one msgpack value) instead of a row per event in `events` plus its indexes, the reports' rollup and
the pending marks. The indexer (collect/indexer.py) writes the records into `events` and the side tables
and takes the rows out of the journal, each exactly once:

- PostgreSQL: the journal is the database's `ingest_journal` table. `take` and `remove` run inside the
  indexer's transaction, so a row leaves exactly when its records are stored.
- SQLite: the journal is a database file of its own beside the main one (`file_of`). SQLite has one
  writer per file: in the main file every request's append waited for the indexer's transaction (tens of
  milliseconds), and under a steady load the server answered at the indexer's pace. In its own file an
  append waits only for other appends. A transaction cannot span both files, so the indexer marks the
  rows it stored in the main file (`mark`, table `journal_indexed`, in the storing transaction) and
  deletes them from the journal file after its commit; whatever a crash leaves marked is deleted, not
  stored again, by the next indexer (`settle`). Rows of the main file's own `ingest_journal` (journaled
  before the file existed) are indexed first, the PostgreSQL way.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
import weakref
from pathlib import Path
from typing import NamedTuple

import msgspec
import sqlalchemy as sa
import zstandard

from usertrail.store.database import create_engine, write_transaction
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


class Packed(NamedTuple):
    """A request's journal row before compression: its key, arrival time, event count and msgpack'd record."""

    project_id: int
    id: str
    received_at: int
    events: int
    record: bytes


def pack(record: JournalRecord, id_: str, received_at: int) -> Packed:
    """The record as msgpack, on the request's own thread (collect/service.py says why)."""
    return Packed(record.project_id, id_, received_at, len(record.events), _encode(record))


def row_of(packed: Packed) -> tuple[int, str, int, int, bytes]:
    """The journal row for a packed record, zstd-compressed (off the event loop: zstd releases the GIL)."""
    compressor = getattr(_contexts, "compressor", None) or _context("compressor", zstandard.ZstdCompressor(level=1))
    return (packed.project_id, packed.id, packed.received_at, packed.events, compressor.compress(packed.record))


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


_SELECT = "SELECT project_id, id, record FROM ingest_journal ORDER BY id LIMIT "
_DELETE = "DELETE FROM ingest_journal WHERE project_id = {0} AND id = {0}"


def _limit(max_events: int) -> int:
    # A window over the running event count would stop at exactly `max_events`; the journal's rows are
    # small batches, so a row count from the average batch is close enough and keeps the statement cheap.
    return max(1, max_events // 50)


def take(conn: sa.Connection, max_events: int, wait: bool = False) -> list[tuple[int, str, bytes]]:
    """The oldest-first rows `(project_id, id, record)` of the database's own journal for about `max_events`
    events, for this transaction.

    PostgreSQL locks the rows it returns and skips rows another indexer holds (or, with `wait`, waits for
    that indexer's commit, after which they are gone), so indexers in several processes never take the
    same row; on SQLite the caller's write transaction already excludes the others.
    """
    # Ids begin with the arrival time, so their index gives oldest-first across projects.
    if conn.dialect.name == "postgresql":
        lock = " FOR UPDATE" if wait else " FOR UPDATE SKIP LOCKED"
        return conn.exec_driver_sql(_SELECT + "%s" + lock, (_limit(max_events),)).fetchall()
    return conn.exec_driver_sql(_SELECT + "?", (_limit(max_events),)).fetchall()


def remove(conn: sa.Connection, keys: list[tuple[int, str]]) -> None:
    """Delete the rows taken, in the same transaction that stored their records."""
    conn.exec_driver_sql(_DELETE.format("%s" if conn.dialect.name == "postgresql" else "?"), keys)


# The journal file of each SQLite database engine, opened once: a process holds several EventStores.
_files: weakref.WeakKeyDictionary[sa.Engine, sa.Engine | None] = weakref.WeakKeyDictionary()
_files_lock = threading.Lock()


def file_of(engine: sa.Engine) -> sa.Engine | None:
    """The engine of the journal's own file beside a SQLite database (`usertrail.db` →
    `usertrail-journal.db`, created on first use), or None where the journal is the database's
    `ingest_journal` table (PostgreSQL, an in-memory SQLite database)."""
    with _files_lock:
        if engine not in _files:
            _files[engine] = _open_file(engine)
        return _files[engine]


def _open_file(engine: sa.Engine) -> sa.Engine | None:
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    path = Path(database)
    file = create_engine(f"sqlite:///{path.with_name(f'{path.stem}-journal{path.suffix}')}")
    # The table and its index as the main schema defines them; under the write lock, so processes
    # starting together create them once.
    with write_transaction(file) as conn:
        ingest_journal.create(conn, checkfirst=True)
    return file


def take_file(file: sa.Engine, max_events: int) -> list[tuple[int, str, bytes]]:
    """The oldest-first rows of a journal file for about `max_events` events. Read without locking the
    file (appends go on); the caller holds the main database's write lock and has `settle`d, so no other
    indexer is storing any of them."""
    with file.connect() as conn:
        return conn.exec_driver_sql(_SELECT + "?", (_limit(max_events),)).fetchall()


def mark(conn: sa.Connection, keys: list[tuple[int, str]]) -> None:
    """Mark journal-file rows as stored, in the main database's transaction that stored them."""
    conn.exec_driver_sql("INSERT INTO journal_indexed (project_id, id) VALUES (?, ?)", keys)


def remove_from_file(file: sa.Engine, keys: list[tuple[int, str]]) -> None:
    """Delete stored rows from the journal file (after the commit that marked them)."""
    with write_transaction(file) as conn:
        conn.exec_driver_sql(_DELETE.format("?"), keys)


def settle(conn: sa.Connection, file: sa.Engine) -> None:
    """Delete from the journal file every row marked as stored, then the marks, inside the main database's
    write transaction: afterwards the file holds only rows no indexer has stored. Marks are normally those
    of the last indexer, whose own deletion may not have run yet, or those a crash left."""
    keys = [tuple(row) for row in conn.exec_driver_sql("SELECT project_id, id FROM journal_indexed")]
    if not keys:
        return
    # Usually their indexer has deleted them already: a read then spares the file a write and its fsync.
    left = []
    with file.connect() as reader:
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            pairs = ", ".join(["(?, ?)"] * len(chunk))
            left += reader.exec_driver_sql(
                f"SELECT project_id, id FROM ingest_journal WHERE (project_id, id) IN (VALUES {pairs})",
                tuple(value for key in chunk for value in key),
            ).fetchall()
    if left:
        remove_from_file(file, [tuple(row) for row in left])
    conn.exec_driver_sql("DELETE FROM journal_indexed")


def backlog(conn: sa.Connection, project_id: int | None = None) -> Backlog:
    """The backlog of the journal table `conn` reads, for one project or for all."""
    columns = ingest_journal.c
    total = sa.func.coalesce(sa.func.sum(columns.events), 0)
    query = sa.select(sa.func.count(), total, sa.func.min(columns.received_at))
    if project_id is not None:
        query = query.where(columns.project_id == project_id)
    requests, events, oldest = conn.execute(query).one()
    return Backlog(requests, int(events), oldest)


def combined(first: Backlog, second: Backlog) -> Backlog:
    """Two journals' backlogs as one."""
    oldest = [t for t in (first.oldest_received_at, second.oldest_received_at) if t is not None]
    return Backlog(first.requests + second.requests, first.events + second.events, min(oldest, default=None))
