"""Opening a database (SQLite or PostgreSQL), migrating it, and the few dialect-specific statements.

Everything above this module speaks SQLAlchemy Core and stays engine-neutral; the only places
where the two engines differ (connection pragmas, the spelling of upserts) are here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def create_engine(url: str) -> sa.Engine:
    """An engine for `url` with the settings usertrail relies on.

    SQLite: WAL (readers never block the writer, several processes share the file),
    synchronous=FULL (a committed transaction survives power loss, not only a crash),
    a long busy timeout (worker processes take turns for the write lock).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record) -> None:
            # pysqlite's own transaction handling would defer BEGIN; we want it explicit.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(conn) -> None:
            # Write transactions take the write lock at BEGIN (IMMEDIATE), so two processes
            # never fail upgrading a read lock; reads stay deferred and never block under WAL.
            immediate = conn.get_execution_options().get("immediate", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return sa.create_engine(parsed, pool_size=10, max_overflow=20, pool_pre_ping=True)
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:/// or postgresql://")


def write_transaction(engine: sa.Engine):
    """A transaction that will write: on SQLite it holds the write lock from its first statement."""
    return engine.execution_options(immediate=True).begin()


def migrate(engine: sa.Engine) -> None:
    """Bring the schema to the newest migration (idempotent, safe to run at every start)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with write_transaction(engine) as connection:
        if engine.dialect.name == "postgresql":
            # Several server processes may start at once: one migrates, the others wait and find it done.
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7345012)")
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def insert_ignore(table: sa.Table, dialect_name: str) -> sa.Insert:
    """INSERT that silently skips rows whose primary key already exists."""
    return _insert_for(dialect_name)(table).on_conflict_do_nothing()


def insert_ignore_counted(conn: sa.Connection, table: sa.Table, rows: list[dict]) -> int:
    """Insert rows, skipping existing keys; returns how many were new.

    SQLite reports the count of an executemany as its rowcount; psycopg's batched inserts do
    not (-1), so on PostgreSQL the new rows' keys are returned and counted instead.
    """
    dialect = conn.dialect.name
    stmt = insert_ignore(table, dialect)
    if dialect == "sqlite":
        return conn.execute(stmt, rows).rowcount
    first_key = table.primary_key.columns.values()[0]
    return len(conn.execute(stmt.returning(first_key), rows).all())


def upsert_add(table: sa.Table, dialect_name: str, key: Iterable[str], counter: str) -> sa.Insert:
    """INSERT that adds to `counter` when the key already exists (counters, tallies)."""
    stmt = _insert_for(dialect_name)(table)
    return stmt.on_conflict_do_update(
        index_elements=list(key),
        set_={counter: getattr(table.c, counter) + getattr(stmt.excluded, counter)},
    )


def upsert_pending(table: sa.Table, dialect_name: str, key: Iterable[str]) -> sa.Insert:
    """INSERT of a pending mark that, on an existing key, keeps the earliest `since_ts` and bumps `version`."""
    stmt = _insert_for(dialect_name)(table)
    least = sa.func.min if dialect_name == "sqlite" else sa.func.least  # two-argument min in each dialect
    return stmt.on_conflict_do_update(
        index_elements=list(key),
        set_={"since_ts": least(table.c.since_ts, stmt.excluded.since_ts), "version": table.c.version + 1},
    )


def lock_key(conn: sa.Connection, *parts: object) -> None:
    """Serialise work on one key across processes until the transaction ends.

    SQLite needs nothing: a write transaction already holds the database's single write lock.
    """
    if conn.dialect.name == "postgresql":
        digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (int.from_bytes(digest, "big", signed=True),))


def _insert_for(dialect_name: str):
    if dialect_name == "sqlite":
        return sqlite.insert
    if dialect_name == "postgresql":
        return postgresql.insert
    raise ValueError(f"unsupported dialect {dialect_name}")
