"""SQLite: one table's rows written by a helper process into a scratch file, then copied in by one statement.

A transaction that rewrites most of a project (the full rebuild) stores hundreds of thousands of rows
through one connection, and sqlite3 binds each value under the GIL: on two cores, the second one idles
while the first inserts. A `Stage` hands the making and inserting of one table's rows to a helper
process, which writes them, then the table's indexes, into a scratch SQLite file created with the
store's own DDL for that table. The transaction meanwhile stores its other tables; when it gets to
this one, it attaches the scratch file and runs `INSERT INTO main.t SELECT * FROM stage.t`. Into an
empty table of identical definition SQLite copies the table's and each index's B-tree pages as they
are (its "transfer optimization"): 612k `sessions` rows with their two indexes took 0.3 s alone and
0.5-0.9 s in the rebuild, against 3.3 s to insert them and build the indexes in place. When the table
still holds other projects' rows, the same statement copies row by row in C, maintaining the indexes:
slower, but still without a Python call per value.

The helper is a fresh interpreter (`python -m usertrail.store.staging`): it inherits no thread or lock
of this process, and unlike multiprocessing's spawn it does not import the caller's `__main__` again.
Its input, the callable that makes the rows, is pickled to its standard input by a thread of this
process: build the callable from arrays, which pickle as buffers, rather than from lists of rows.
The callable's last arguments come later (`Stage.start`): the helper starts and takes in the bulk of
its input while the caller still works out what they are (the rebuild: which keys stitching reads again).
The scratch file sits beside the store's file, is the helper's alone until it exits (no journal, no
fsync: nothing of it matters after a crash), then read by the transaction, and removed at the end.

PostgreSQL has no such step. `insert_rows` COPYs there, and the server, a process of its own, is the
bound (session 16: binary COPY did not help). Staging would only add a second copy on the server.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import sqlalchemy as sa

from usertrail.store.database import insert_sqlite_rows

# Fewer rows than this are inserted in place: starting a process costs more than it saves.
STAGE_AT_ROWS = 100_000
_SCHEMA = "usertrail_stage"


class Stage:
    """Rows of one table being made and written into a scratch file by a helper process."""

    def __init__(self, table: str, path: str, arguments: Future, done: Future) -> None:
        self.table, self.path, self._arguments, self._done = table, path, arguments, done
        self._attached_to: sqlite3.Connection | None = None

    def start(self, *args: object) -> None:
        """Give the helper the last arguments of its `make_rows` (picklable): it makes and writes the rows now."""
        self._arguments.set_result(args)

    @contextlib.contextmanager
    def attachable(self, conn: sa.Connection) -> Iterator[None]:
        """Around the transaction of `conn` that calls `move_into`: SQLite detaches a database only outside
        a transaction, so the scratch file is detached when this block ends."""
        try:
            yield
        finally:
            if self._attached_to is not None:
                try:
                    self._attached_to.execute(f"DETACH DATABASE {_SCHEMA}")
                except sqlite3.Error:
                    # Still attached: the pool must not hand this connection out again (the next ATTACH of
                    # that name would fail), so it is closed instead.
                    conn.invalidate()
                self._attached_to = None

    def move_into(self, conn: sa.Connection) -> int:
        """Wait for the helper (`start` first), then copy its rows into `conn`'s table, inside `conn`'s
        transaction (within `attachable(conn)`); returns how many rows were copied."""
        count = self._done.result()
        raw = conn.connection.dbapi_connection
        raw.execute(f"ATTACH DATABASE ? AS {_SCHEMA}", (self.path,))
        self._attached_to = raw
        raw.execute(f"INSERT INTO main.{self.table} SELECT * FROM {_SCHEMA}.{self.table}")
        return count


@contextlib.contextmanager
def staged(
    conn: sa.Connection, table: sa.Table, columns: Sequence[str], make_rows: Callable[..., list[tuple]]
) -> Iterator[Stage]:
    """Start a helper process that runs `make_rows` (picklable) with the arguments `Stage.start` gives, and
    writes the rows (`columns` of each) into a scratch file, with `table`'s DDL as `conn`'s SQLite database
    holds it. Inside this block, copy them in with `Stage.move_into`; on the way out the helper is waited
    for (told to stop if it never got its arguments) and the scratch file removed."""
    ddl = [
        sql
        for (sql,) in conn.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL ORDER BY type = 'index'",
            (table.name,),
        )
    ]
    database = conn.engine.url.database
    # Beside the store's file: the scratch file is about as big as the table's part of it, which the
    # store's disk was chosen to hold (a temporary folder may be a small tmpfs).
    folder = os.path.dirname(os.path.abspath(database)) if database and database != ":memory:" else None
    fd, path = tempfile.mkstemp(prefix="usertrail-stage-", suffix=".db", dir=folder)
    os.close(fd)
    job = {"path": path, "table": table.name, "columns": tuple(columns), "ddl": ddl, "make_rows": make_rows}
    runner = ThreadPoolExecutor(1, thread_name_prefix="usertrail-stage")
    arguments: Future = Future()
    try:
        yield Stage(table.name, path, arguments, runner.submit(_run_helper, job, arguments))
    finally:
        arguments.cancel()  # no-op once started; else the helper reads the end of its input and stops
        runner.shutdown()  # waits for the helper: it is done with the file
        for name in (path, path + "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(name)


def _run_helper(job: dict, arguments: Future) -> int:
    """Run the helper process on `job`, then on `arguments` once they are set; returns the rows it wrote."""
    helper = subprocess.Popen(
        [sys.executable, "-m", "usertrail.store.staging"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    # Not `communicate`: it writes 4 KiB per call, and the GIL changing hands 20,000 times slowed the
    # caller's thread by seconds. The helper reads all of its input before it writes anything.
    try:
        with helper.stdin:
            pickle.dump(job, helper.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            helper.stdin.flush()
            pickle.dump(arguments.result(), helper.stdin, protocol=pickle.HIGHEST_PROTOCOL)
    finally:
        out = helper.stdout.read()
        helper.stdout.close()
        status = helper.wait()
    if status != 0:
        raise RuntimeError(f"the staging helper failed (exit status {status}; its error is above)")
    return int(out)


def _write(
    args: tuple,
    path: str,
    table: str,
    columns: tuple[str, ...],
    ddl: list[str],
    make_rows: Callable[..., list[tuple]],
) -> int:
    """In the helper: create the table, insert the rows, then create its indexes (one sort each)."""
    rows = make_rows(*args)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-1048576"):
            db.execute(f"PRAGMA {pragma}")
        db.execute("BEGIN")
        db.execute(ddl[0])
        insert_sqlite_rows(db, table, columns, rows)
        for index in ddl[1:]:
            db.execute(index)
        db.execute("COMMIT")
    finally:
        db.close()
    return len(rows)


def _main() -> None:
    job = pickle.load(sys.stdin.buffer)
    try:
        args = pickle.load(sys.stdin.buffer)
    except EOFError:
        return  # the caller stopped before giving the arguments: nothing to write
    print(_write(args, **job))


if __name__ == "__main__":
    _main()
