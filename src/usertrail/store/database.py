"""Opening a database (SQLite or PostgreSQL), migrating it, and the few dialect-specific statements.

Everything above this module speaks SQLAlchemy Core and stays engine-neutral; the only places
where the two engines differ (connection pragmas, the spelling of upserts) are here.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_MMAP_BYTES = 2147418112  # SQLite's cap on its memory map

# sqlite3 binds None and bool through its adapter protocol, and when no adapter is registered the
# lookup fails slowly (about 1 µs per value, several times the cost of binding a string; an event
# row holds a few of each). Registered adapters bind exactly what the fallback bound (NULL, 0/1),
# found by one dictionary lookup; `{}.get` is a C function that maps None to None.
sqlite3.register_adapter(type(None), {}.get)
sqlite3.register_adapter(bool, int)


def create_engine(url: str, durable: bool = True) -> sa.Engine:
    """An engine for `url` with the settings usertrail relies on.

    SQLite: WAL (readers never block the writer, several processes share the file),
    synchronous=FULL (a committed transaction survives power loss, not only a crash),
    a long busy timeout (worker processes take turns for the write lock).

    `durable=False` is for derived state only (sessions, End User Objects): its commits skip the
    fsync (SQLite synchronous=NORMAL, PostgreSQL synchronous_commit=off). A crash can lose the last
    such commits but never half of one, and what is lost is recomputed, because the pending mark
    that asked for it is removed in the same transaction.
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
            cursor.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            # Read the file through a memory map (up to SQLite's 2 GiB cap) rather than a 2 MB page
            # cache: segment counts at 1M users ran 1.5–2× faster (docs/benchmarks.md, Segments).
            cursor.execute(f"PRAGMA mmap_size={_MMAP_BYTES}")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(conn) -> None:
            # Write transactions take the write lock at BEGIN (IMMEDIATE), so two processes
            # never fail upgrading a read lock; reads stay deferred and never block under WAL.
            if conn.get_execution_options().get("immediate", False):
                _begin_immediate(conn.connection.dbapi_connection)
            else:
                conn.exec_driver_sql("BEGIN")

        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        connect_args = {} if durable else {"options": "-c synchronous_commit=off"}
        return sa.create_engine(parsed, pool_size=10, max_overflow=20, pool_pre_ping=True, connect_args=connect_args)
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:/// or postgresql://")


_LOCK_WAIT_S = 30.0


# Polling steps of `_begin_immediate`: every 0.2 ms for the first 5 ms (another process's ingest commit),
# then every 1 ms (a longer transaction, such as a session-loop round, where faster polling only burns CPU).
_POLL_FAST_S, _POLL_SLOW_S, _FAST_FOR_S = 0.0002, 0.001, 0.005


def _begin_immediate(dbapi_connection) -> None:
    """Take SQLite's write lock, polling.

    SQLite's own busy handler sleeps in steps growing to 100 ms, so a process waiting for
    another one's short commit would often sleep far longer than the commit took; polling
    hands the lock over within a fraction of a millisecond.
    """
    dbapi_connection.execute("PRAGMA busy_timeout=0")
    began = time.monotonic()
    try:
        while True:
            try:
                dbapi_connection.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                waited = time.monotonic() - began
                if waited > _LOCK_WAIT_S:
                    raise
                time.sleep(_POLL_FAST_S if waited < _FAST_FOR_S else _POLL_SLOW_S)
    finally:
        dbapi_connection.execute(f"PRAGMA busy_timeout={int(_LOCK_WAIT_S * 1000)}")


@contextlib.contextmanager
def unmapped(conn: sa.Connection) -> Iterator[None]:
    """SQLite: read pages with read() instead of the memory map while inside, then map again.

    For bulk jobs that touch every page of a large table (a CSV re-import reads each stored row):
    through the map, every page read stays in the process's resident set (a 200,000-user import's
    file is 148 MB), through read() only SQLite's bounded page cache does. Takes effect at once,
    also inside a transaction.
    """
    if conn.dialect.name != "sqlite":
        yield
        return
    conn.exec_driver_sql("PRAGMA mmap_size=0")
    try:
        yield
    finally:
        conn.exec_driver_sql(f"PRAGMA mmap_size={_MMAP_BYTES}")


def write_transaction(engine: sa.Engine):
    """A transaction that will write: on SQLite it holds the write lock from its first statement."""
    return engine.execution_options(immediate=True).begin()


def _alembic_config():
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


@functools.cache
def _head_revision() -> str:
    """The newest migration's id: each file is named after its revision (`0027_….py` holds "0027") and
    the chain is linear (tests/test_store.py checks both against Alembic's own reading)."""
    return max(path.name[:4] for path in (MIGRATIONS_DIR / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))


def _current_revision(connection: sa.Connection) -> str | None:
    """The database's migration, read without Alembic (whose import is half a second of every command)."""
    if connection.dialect.name == "postgresql":
        exists = connection.exec_driver_sql("SELECT to_regclass('alembic_version')").scalar() is not None
    else:
        exists = connection.exec_driver_sql(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
        ).first()
    if not exists:
        return None
    return connection.exec_driver_sql("SELECT max(version_num) FROM alembic_version").scalar()


def migrate(engine: sa.Engine) -> None:
    """Bring the schema to the newest migration (idempotent, safe to run at every start)."""
    with write_transaction(engine) as connection:
        if engine.dialect.name == "postgresql":
            # Several server processes may start at once: one migrates, the others wait and find it done.
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7345012)")
        # An up-to-date database (every start but the first after an upgrade) skips Alembic's
        # loading of every migration file, which each server, command and test would pay.
        if _current_revision(connection) == _head_revision():
            return
        from alembic import command

        config = _alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def insert_ignore(table: sa.Table, dialect_name: str) -> sa.Insert:
    """INSERT that silently skips rows whose primary key already exists."""
    return _insert_for(dialect_name)(table).on_conflict_do_nothing()


def insert_rows_ignore(conn: sa.Connection, table: sa.Table, columns: Sequence[str], rows: list[tuple]) -> int:
    """Insert row tuples straight through the driver, skipping existing keys; returns how many were new.

    This is the ingest hot path: one short, fixed statement (parsed and cached once by the
    driver) and plain tuples, with none of SQLAlchemy's per-row parameter processing. Both
    sqlite3 and psycopg report the summed rowcount of an executemany.
    """
    if conn.dialect.name == "postgresql":
        return _copy_insert_ignore(conn, table, columns, rows)
    return conn.exec_driver_sql(_insert_ignore_sql(table, tuple(columns), "?"), rows).rowcount


@functools.cache
def _insert_ignore_sql(table: sa.Table, columns: Sequence[str], marker: str) -> str:
    return (
        f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join([marker] * len(columns))}) "
        "ON CONFLICT DO NOTHING"
    )


def insert_rows_new(
    conn: sa.Connection, table: sa.Table, columns: Sequence[str], rows: list[tuple], key: Sequence[str]
) -> list[tuple]:
    """`insert_rows_ignore` that also tells which rows were new: the `key` values of the rows it inserted
    (of rows with equal keys, the first), for work that must happen once per stored row."""
    if conn.dialect.name == "postgresql":
        return _copy_insert_ignore(conn, table, columns, rows, returning=key)
    # SQLite: multi-row inserts whose RETURNING lists the rows that were new (sqlite3's executemany only
    # reports the sum). A few fixed statement sizes keep the driver's statement cache warm.
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        new: list[tuple] = []
        start = 0
        for size in _RETURNING_SIZES:
            while len(rows) - start >= size:
                chunk = rows[start : start + size]
                start += size
                sql = _insert_returning_sql(table, tuple(columns), tuple(key), size)
                new += cursor.execute(sql, [value for row in chunk for value in row]).fetchall()
        return new
    finally:
        cursor.close()


# Rows per multi-row INSERT … RETURNING on SQLite, largest first (64 rows of 32 columns stay far below
# SQLite's 32,766 bound parameters); any count is a sum of these.
_RETURNING_SIZES = (64, 16, 4, 1)


@functools.cache
def _insert_returning_sql(table: sa.Table, columns: Sequence[str], key: Sequence[str], rows: int) -> str:
    row = f"({', '.join(['?'] * len(columns))})"
    return (
        f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES {', '.join([row] * rows)} "
        f"ON CONFLICT DO NOTHING RETURNING {', '.join(key)}"
    )


def _copy_insert_ignore(
    conn: sa.Connection, table: sa.Table, columns: Sequence[str], rows: list[tuple], returning: Sequence[str] = ()
):
    """PostgreSQL: COPY the rows into a session-local staging table, then one INSERT … SELECT.

    COPY moves rows in psycopg's C code; the INSERT … ON CONFLICT DO NOTHING keeps the
    de-duplication, and its rowcount is the number of new rows.
    """
    staging = f"_staging_{table.name}"
    names = ", ".join(columns)
    dbapi = conn.connection.dbapi_connection
    with dbapi.cursor() as cursor:
        if not conn.connection.info.get(staging):
            cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {staging} (LIKE {table.name}) ON COMMIT DELETE ROWS")
            conn.connection.info[staging] = True
        with cursor.copy(f"COPY {staging} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        insert = f"INSERT INTO {table.name} ({names}) SELECT {names} FROM {staging} ON CONFLICT DO NOTHING"
        if returning:
            cursor.execute(insert + f" RETURNING {', '.join(returning)}")
            inserted = [tuple(row) for row in cursor.fetchall()]
        else:
            cursor.execute(insert)
            inserted = cursor.rowcount
        cursor.execute(f"DELETE FROM {staging}")
    return inserted


def upsert_add(table: sa.Table, dialect_name: str, key: Iterable[str], counter: str) -> sa.Insert:
    """INSERT that adds to `counter` when the key already exists (counters, tallies)."""
    stmt = _insert_for(dialect_name)(table)
    return stmt.on_conflict_do_update(
        index_elements=list(key),
        set_={counter: getattr(table.c, counter) + getattr(stmt.excluded, counter)},
    )


def lock_key(conn: sa.Connection, *parts: object) -> None:
    """Serialise work on one key across processes until the transaction ends.

    SQLite needs nothing: a write transaction already holds the database's single write lock.
    """
    if conn.dialect.name == "postgresql":
        digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (int.from_bytes(digest, "big", signed=True),))


def lock_keys(conn: sa.Connection, keys: Sequence[tuple]) -> None:
    """`lock_key` for many keys in one statement, taken in the order given (pass them sorted)."""
    if conn.dialect.name == "postgresql" and keys:
        ids = [
            int.from_bytes(hashlib.blake2b(repr(k).encode(), digest_size=8).digest(), "big", signed=True) for k in keys
        ]
        conn.exec_driver_sql("SELECT count(pg_advisory_xact_lock(k)) FROM unnest(%s::bigint[]) AS k", (ids,))


def _insert_for(dialect_name: str):
    if dialect_name == "sqlite":
        return sqlite.insert
    if dialect_name == "postgresql":
        return postgresql.insert
    raise ValueError(f"unsupported dialect {dialect_name}")


def insert_rows(
    conn: sa.Connection, table: sa.Table, columns: Sequence[str], rows: list[tuple], into: str | None = None
) -> None:
    """Bulk insert of row tuples straight through the driver, for rows known not to exist yet (into the table
    named `into` instead, if given: on PostgreSQL, a temporary twin of `table`'s).

    PostgreSQL: COPY into the table itself (no staging: the caller holds the lock that rules out
    conflicts). SQLite: multi-row `INSERT … VALUES (…), (…)` statements of up to _ROWS_PER_INSERT rows
    (as `insert_columns`); against executemany of a one-row statement this took 40% less time for
    1.35M three-column rows and 20% less for 612k sessions rows, and each statement runs without the
    GIL for long enough that another thread's Python work overlaps it. Neither does per-row
    SQLAlchemy work.
    """
    if not rows:
        return
    names = ", ".join(columns)
    if conn.dialect.name == "postgresql":
        cursor = conn.connection.dbapi_connection.cursor()
        # psycopg formats each row in C: measured faster than building COPY text blocks in Python.
        with cursor, cursor.copy(f"COPY {into or table.name} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    insert_sqlite_rows(conn.connection.dbapi_connection, into or table.name, columns, rows)


def insert_sqlite_rows(dbapi: sqlite3.Connection, table: str, columns: Sequence[str], rows: list[tuple]) -> None:
    """`insert_rows` on a sqlite3 connection (also one to a file that is not the store's: `staging`)."""
    width = len(columns)
    per_statement = max(1, min(_ROWS_PER_INSERT, dbapi.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width))
    total = len(rows)
    full = total - total % per_statement
    flat = itertools.chain.from_iterable
    cursor = dbapi.cursor()
    try:
        if full:
            sql = _multi_insert_sql(table, tuple(columns), 0, per_statement)
            for i in range(0, full, per_statement):
                cursor.execute(sql, list(flat(rows[i : i + per_statement])))
        if full < total:
            # The rest one row per statement: two statements per table (both stay in the driver's cache),
            # not one per remainder size.
            cursor.executemany(_multi_insert_sql(table, tuple(columns), 0, 1), rows[full:])
    finally:
        cursor.close()


_BINARY_COPY_TYPES = {sa.Integer: "int4", sa.BigInteger: "int8", sa.Text: "text", sa.Float: "float8"}
_ROWS_PER_INSERT = 250  # rows of one multi-row INSERT on SQLite


def insert_columns(
    conn: sa.Connection,
    table: sa.Table,
    fixed: dict[str, object],
    columns: Sequence[str],
    values: Sequence[Sequence],
) -> None:
    """Bulk insert of new rows given column-wise: `values` holds one sequence per name in `columns`
    (all of one length), and `fixed` the columns whose value is the same in every row.

    For large imports, where the driver's per-row work is most of the cost. SQLite: multi-row
    `INSERT … VALUES (?1, ?3, …), (?1, ?5, …)` statements of a few hundred rows, the fixed values
    bound once per statement; against executemany of one-row statements this halved the CPU of
    inserting custom-attribute rows, and each statement runs for milliseconds without the GIL, so
    another thread's Python work overlaps it. PostgreSQL: binary COPY typed from the table (psycopg's
    C dumpers; the server does not parse text), measured at a third of the client CPU of text COPY.
    Like `insert_rows`, the caller rules out conflicts (no ON CONFLICT).
    """
    if not values or not len(values[0]):
        return
    names = [*fixed, *columns]
    if conn.dialect.name == "postgresql":
        types = [_BINARY_COPY_TYPES.get(type(table.c[name].type)) for name in names]
        rows = zip(*(itertools.repeat(v) for v in fixed.values()), *values, strict=False)
        cursor = conn.connection.dbapi_connection.cursor()
        if None in types:  # a type without a binary mapping here: text COPY
            with cursor, cursor.copy(f"COPY {table.name} ({', '.join(names)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            return
        with cursor, cursor.copy(f"COPY {table.name} ({', '.join(names)}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(types)
            for row in rows:
                copy.write_row(row)
        return
    dbapi = conn.connection.dbapi_connection
    width, first = len(columns), len(fixed) + 1
    room = dbapi.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) - first
    per_statement = max(1, min(_ROWS_PER_INSERT, room // width))
    head = list(fixed.values())
    total = len(values[0])
    full = total - total % per_statement
    flat = itertools.chain.from_iterable
    cursor = dbapi.cursor()
    try:
        if full:
            sql = _multi_insert_sql(table.name, tuple(names), len(fixed), per_statement)
            cursor.executemany(
                sql,
                (
                    [*head, *flat(zip(*(column[i : i + per_statement] for column in values), strict=True))]
                    for i in range(0, full, per_statement)
                ),
            )
        if full < total:
            sql = _multi_insert_sql(table.name, tuple(names), len(fixed), total - full)
            cursor.execute(sql, [*head, *flat(zip(*(column[full:] for column in values), strict=True))])
    finally:
        cursor.close()


@functools.lru_cache(maxsize=64)
def _multi_insert_sql(table: str, names: tuple[str, ...], fixed: int, rows: int) -> str:
    width = len(names) - fixed
    heads = [f"?{i}" for i in range(1, fixed + 1)]
    groups = []
    for r in range(rows):
        start = fixed + 1 + r * width
        groups.append("(" + ", ".join([*heads, *(f"?{start + j}" for j in range(width))]) + ")")
    return f"INSERT INTO {table} ({', '.join(names)}) VALUES {', '.join(groups)}"


def update_rows(
    conn: sa.Connection, table: sa.Table, set_columns: Sequence[str], key_columns: Sequence[str], rows: list[tuple]
) -> None:
    """Update many rows by key in one go: each row tuple holds the new values, then the key values.

    PostgreSQL: one `UPDATE … FROM unnest(arrays)` statement per call (a join on the key, by
    index), instead of one statement per row. SQLite: a cached statement and executemany, which
    is the fastest form there (no round trips to save).
    """
    if not rows:
        return
    assignments = ", ".join(f"{c} = s.{c}" for c in set_columns)
    if conn.dialect.name == "postgresql":
        names = [*set_columns, *key_columns]
        types = [f"{_element_type(table.c[c].type, conn.dialect)}[]" for c in names]
        match = " AND ".join(f"t.{c} = s.{c}" for c in key_columns)
        sql = (
            f"UPDATE {table.name} AS t SET {assignments} "
            f"FROM unnest({', '.join(f'%s::{type_}' for type_ in types)}) AS s({', '.join(names)}) WHERE {match}"
        )
        conn.exec_driver_sql(sql, tuple(list(column) for column in zip(*rows, strict=True)))
        return
    assignments = ", ".join(f"{c} = ?" for c in set_columns)
    match = " AND ".join(f"{c} = ?" for c in key_columns)
    conn.exec_driver_sql(f"UPDATE {table.name} SET {assignments} WHERE {match}", rows)


def _element_type(type_: sa.types.TypeEngine, dialect: sa.Dialect) -> str:
    """The SQL name of a column's type for an array cast: without its collation (`TEXT COLLATE "C"[]`
    is not valid SQL, and in a comparison the column's own collation wins over the array's default)."""
    return type_.compile(dialect=dialect).split(" COLLATE ")[0]


def delete_rows(
    conn: sa.Connection,
    table: sa.Table,
    fixed: dict[str, object],
    matches: Sequence[tuple[str, str]],
    rows: Sequence[tuple],
) -> None:
    """Delete, among the rows equal to `fixed`, those that match one of `rows`: each row tuple holds a value
    per `(column, operator)` of `matches` (`("user_key", "=")`, `("start_ts", ">=")`).

    PostgreSQL: one `DELETE … USING unnest(arrays)` statement per call, joined by index, instead of one
    statement per row (the session loop deleted thousands per batch, each parsed and run by the server).
    SQLite: a cached statement and executemany, the fastest form in process.
    """
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        names = [c for c, _ in matches]
        types = [f"{_element_type(table.c[c].type, conn.dialect)}[]" for c in names]
        where = [f"t.{c} = %s" for c in fixed] + [f"t.{c} {op} m.{c}" for c, op in matches]
        sql = (
            f"DELETE FROM {table.name} AS t USING unnest({', '.join(f'%s::{type_}' for type_ in types)}) "
            f"AS m({', '.join(names)}) WHERE {' AND '.join(where)}"
        )
        conn.exec_driver_sql(sql, (*(list(column) for column in zip(*rows, strict=True)), *fixed.values()))
        return
    where = [f"{c} = ?" for c in fixed] + [f"{c} {op} ?" for c, op in matches]
    head = tuple(fixed.values())
    conn.exec_driver_sql(f"DELETE FROM {table.name} WHERE {' AND '.join(where)}", [(*head, *row) for row in rows])
