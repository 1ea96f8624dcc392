"""Settings and index handling for one transaction that rewrites most of some tables (the full rebuild).

Inserting hundreds of thousands of rows into a table with many secondary indexes updates every index
once per row, in random key order; building an index once over the finished table sorts its keys
once and is several times cheaper. `bulk_rewrite` drops the secondary indexes of the tables a
transaction is about to rewrite and creates them again before it commits, so no other transaction
ever sees a table without them. It does so only when the rows written outnumber the rows other
projects keep in the table: building an index reads the whole table, which would cost more than it
saves when a small project is rebuilt next to big ones.

On SQLite, `large_page_cache` gives the connection that reads or rewrites a whole project a 1 GiB
page cache for as long as it does (5M events: sessionizing every key 57 -> 44 s and 55 -> 45 s in two
back-to-back runs).

On PostgreSQL the primary key is dropped and added again too: COPY into a table with its key inserts and
logs every row's key one by one, and the sorted build after is cheaper (5M-event rebuild: 612k sessions
rows 2.7 s with the key, 1.3-2.1 s without it and its build after; 1.35M user_words rows 3.0 s, 1.8 s).
SQLite keeps its keys: a WITHOUT ROWID table is stored in its key's order, and a rowid table's key index
cannot be dropped.

On PostgreSQL, dropping an index locks its table until the commit: readers of these tables wait for
the end of the rewrite instead of reading the old rows (a rebuild of most of the data is a
maintenance operation). The locks are taken together and waited for at most LOCK_WAIT_MS; if they
cannot be had, the indexes stay (`_lock_all`). On SQLite the write lock is held anyway, and readers
keep their snapshot.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import sqlalchemy as sa

# SQLite's page cache for a connection reading or rewriting most of a project: pages beyond the
# memory map (capped at 2 GiB; the 5M-event file is 2.6 GB) and pages being written stay in memory
# instead of being read again, or spilled and read back (the default cache is 2 MB).
_SQLITE_CACHE_KIB = 1024 * 1024
# Below this many rows written to a table, its indexes stay: maintaining them costs little.
DROP_AT_ROWS = 10_000
# PostgreSQL: how long the rewrite waits for other transactions to leave the tables whose indexes it drops.
LOCK_WAIT_MS = 5_000
# PostgreSQL: memory for sorting the keys of each index built.
_PG_MAINTENANCE_WORK_MEM = "512MB"

log = logging.getLogger(__name__)
T = TypeVar("T")


# What `bulk_rewrite` drops and builds again: secondary indexes, and on PostgreSQL primary keys.
Structure = sa.Index | sa.PrimaryKeyConstraint


class Rewrite:
    """The indexes and keys a `bulk_rewrite` dropped, and the building of them again."""

    def __init__(self, conn: sa.Connection, dropped: list[Structure]) -> None:
        self.conn = conn
        self.dropped = dropped

    def while_indexing(self, table: sa.Table, work: Callable[[], T]) -> T:
        """Build `table`'s dropped indexes again (its rows are all written) on a helper thread, while `work`,
        which must not use the connection, runs on this one; returns what `work` returns.

        Building an index is one long statement in the database (SQLite's C code, a PostgreSQL backend),
        during which the driver releases the GIL: the caller's Python work costs no time beside it.
        """
        indexes = [index for index in self.dropped if index.table is table]
        if not indexes:
            return work()
        self.dropped = [index for index in self.dropped if index.table is not table]
        return _beside(lambda: self._build(indexes), work)

    def while_writing(self, table: sa.Table, write: Callable[[], object], work: Callable[[], T]) -> T:
        """Write all of `table`'s rows with `write`, then build its dropped indexes while `work`, which must
        not use the connection, runs on this thread; returns what `work` returns.

        The build, not the write, goes beside `work`: writing binds or formats every value under the GIL
        (sqlite3; psycopg's COPY), so beside another Python thread it would wait for that thread's time
        slices, while a build is one long statement without the GIL. On PostgreSQL, with the key built
        after the rows too, the build is also the longer part (5M events: 1.35M user_words rows written in
        1.7 s, their key and index built in 2.7 s).
        """
        write()
        return self.while_indexing(table, work)

    def finish(self) -> None:
        """Build the dropped indexes not built yet."""
        self._build(self.dropped)
        self.dropped = []

    def _build(self, indexes: list[Structure]) -> None:
        for index in indexes:
            if isinstance(index, sa.PrimaryKeyConstraint):
                self.conn.execute(sa.schema.AddConstraint(index))
            else:
                index.create(self.conn)


def _beside(database: Callable[[], object], work: Callable[[], T]) -> T:
    with ThreadPoolExecutor(1, thread_name_prefix="usertrail-rewrite") as helper:
        done = helper.submit(database)
        try:
            result = work()
        finally:
            done.result()  # the connection is this thread's again (and the helper's error is raised)
    return result


@contextlib.contextmanager
def bulk_rewrite(conn: sa.Connection, project_id: int, incoming: Mapping[sa.Table, int]) -> Iterator[Rewrite]:
    """Inside a transaction: replace the rows of `project_id` in these tables (`incoming`: table -> rows
    about to be written). On entry the project's rows are deleted, and the tables' secondary indexes (and on
    PostgreSQL their primary keys) dropped where that pays; they are created again on exit (or before, by
    `Rewrite.while_indexing`).

    On SQLite, a table that holds no other project's rows is emptied with a DELETE without WHERE, which
    frees its pages at once instead of deleting row by row. PostgreSQL deletes the project's rows even then:
    TRUNCATE is not MVCC-safe, and a REPEATABLE READ reader (a segment count) whose snapshot began before the
    commit, and that waited for the tables' locks, would then find them empty instead of as they were.

    On an exception the indexes are not re-created: the caller's transaction rolls back, and with it
    the drops and the deletes (both engines have transactional DDL).
    """
    postgresql = conn.dialect.name == "postgresql"
    if postgresql:
        conn.exec_driver_sql(f"SET LOCAL maintenance_work_mem = '{_PG_MAINTENANCE_WORK_MEM}'")
    with large_page_cache(conn):
        alone = {table for table in incoming if _alone(conn, table, project_id)}
        chosen = [
            table for table, rows in incoming.items() if _worth_dropping(conn, table, project_id, rows, table in alone)
        ]
        if chosen and postgresql and not _lock_all(conn, chosen):
            chosen = []  # others hold these tables: write with the indexes in place rather than wait
        dropped: list[Structure] = []
        for table in chosen:
            inspector = sa.inspect(conn)
            if postgresql and inspector.get_pk_constraint(table.name)["name"]:
                conn.execute(sa.schema.DropConstraint(table.primary_key))
                dropped.append(table.primary_key)
            present = {ix["name"] for ix in inspector.get_indexes(table.name)}
            for index in sorted(table.indexes, key=lambda ix: str(ix.name)):
                if index.name in present:
                    index.drop(conn)
                    dropped.append(index)
        for table in incoming:
            if table in alone and not postgresql:  # PostgreSQL: no TRUNCATE (see above)
                conn.execute(table.delete())
            else:
                conn.execute(table.delete().where(table.c.project_id == project_id))
        rewrite = Rewrite(conn, dropped)
        yield rewrite
        rewrite.finish()


@contextlib.contextmanager
def large_page_cache(conn: sa.Connection) -> Iterator[None]:
    """SQLite: a 1 GiB page cache for this connection while inside (it is back to what it was after);
    PostgreSQL: nothing (its buffers are shared and set for the server)."""
    if conn.dialect.name != "sqlite":
        yield
        return
    previous = conn.exec_driver_sql("PRAGMA cache_size").scalar_one()
    conn.exec_driver_sql(f"PRAGMA cache_size=-{_SQLITE_CACHE_KIB}")
    try:
        yield
    finally:
        conn.exec_driver_sql(f"PRAGMA cache_size={previous}")


def _lock_all(conn: sa.Connection, tables: list[sa.Table]) -> bool:
    """PostgreSQL: lock these tables for the index drops, all in one statement and waiting at most
    LOCK_WAIT_MS; False (and nothing held) if they could not all be had.

    Taken one by one as each drop came, the locks could deadlock with the session loop, whose
    transactions write several of these tables (it holds one, we hold another). A lock not granted
    in time, or a deadlock, rolls back to the savepoint and the rebuild writes with the indexes."""
    savepoint = conn.begin_nested()
    try:
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {LOCK_WAIT_MS}")
        conn.exec_driver_sql(f"LOCK TABLE {', '.join(t.name for t in tables)} IN ACCESS EXCLUSIVE MODE")
        conn.exec_driver_sql("SET LOCAL lock_timeout = DEFAULT")
    except sa.exc.DBAPIError:
        savepoint.rollback()
        return False
    savepoint.commit()
    return True


def _alone(conn: sa.Connection, table: sa.Table, project_id: int) -> bool:
    """Whether no other project has rows in the table: two probes at the ends of the project's key range."""
    others = [
        sa.exists().where(table.c.project_id < project_id),
        sa.exists().where(table.c.project_id > project_id),
    ]
    return not conn.execute(sa.select(sa.or_(*others))).scalar_one()


def _worth_dropping(conn: sa.Connection, table: sa.Table, project_id: int, rows: int, alone: bool) -> bool:
    """Whether the rows written outnumber the rows of other projects (none if `alone`; else counted no further
    than that)."""
    if rows < DROP_AT_ROWS:
        return False
    if alone:
        return True
    others = conn.execute(
        sa.select(sa.func.count()).select_from(
            sa.select(sa.literal(1)).where(table.c.project_id != project_id).limit(rows).subquery()
        )
    ).scalar_one()
    return others < rows


@contextlib.contextmanager
def checkpoint_behind(conn: sa.Connection, rows: int) -> Iterator[None]:
    """SQLite, around a transaction of this connection's that writes `rows` rows, DROP_AT_ROWS or more:
    its commit does not copy the write-ahead log back into the database file; a background thread does,
    right after. PostgreSQL, or fewer rows: nothing changes.

    The commit is durable and visible without that copy. SQLite otherwise makes it on the committing
    thread (5M events: 1.2 s of the rebuild's commit, for a 430 MB log), or, were the log left to grow, on
    the next commit, an ingest request's. A PASSIVE checkpoint does not block readers or writers: it
    copies what no reader still needs, and a later commit's automatic checkpoint finishes the rest.
    """
    if conn.dialect.name != "sqlite" or rows < DROP_AT_ROWS:
        yield
        return
    with _sqlite_setting(conn, "wal_autocheckpoint", 0):
        yield
    threading.Thread(target=_checkpoint, args=(conn.engine,), name="usertrail-wal-checkpoint").start()


@contextlib.contextmanager
def _sqlite_setting(conn: sa.Connection, name: str, value: object) -> Iterator[None]:
    """SQLite: this connection's PRAGMA `name` set to `value` while inside, then what it was. Through the
    driver, outside any transaction: SQLite refuses some settings inside the BEGIN SQLAlchemy would issue."""
    raw = conn.connection.dbapi_connection
    previous = raw.execute(f"PRAGMA {name}").fetchone()[0]
    raw.execute(f"PRAGMA {name}={value}")
    try:
        yield
    finally:
        raw.execute(f"PRAGMA {name}={previous}")


@contextlib.contextmanager
def unflushed_commits(conn: sa.Connection) -> Iterator[None]:
    """Around transactions of this connection's that write derived state only (the full rebuild), entered
    before they begin: their commits do not wait for the disk (SQLite synchronous=NORMAL, PostgreSQL
    synchronous_commit=off, for this connection while inside; as `create_engine(durable=False)` gives the
    session loop).

    A crash can lose such a commit, never part of it: what stays is the derived state from before, which
    was whole, and the events it came from are untouched (recomputing them again gives the same). Any later
    commit that waits for the disk makes it durable too. (5M-event rebuild on SQLite, two runs each: its
    commit took 0.47-0.70 s, against 0.74-1.32 s waiting for the disk.)
    """
    if conn.dialect.name == "sqlite":
        with _sqlite_setting(conn, "synchronous", "NORMAL"):
            yield
        return
    previous = conn.exec_driver_sql("SHOW synchronous_commit").scalar_one()
    conn.exec_driver_sql("SET synchronous_commit = off")
    conn.commit()
    try:
        yield
    finally:
        conn.exec_driver_sql("SELECT set_config('synchronous_commit', %s, false)", (previous,))
        conn.commit()


def _checkpoint(engine: sa.Engine) -> None:
    try:
        with engine.connect() as conn:
            # Through the driver: inside the BEGIN SQLAlchemy would issue, SQLite refuses to checkpoint.
            conn.connection.dbapi_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
    except sqlite3.Error:
        # The next commit's automatic checkpoint does it instead (the file may also be gone: a test's).
        log.debug("background WAL checkpoint failed", exc_info=True)
