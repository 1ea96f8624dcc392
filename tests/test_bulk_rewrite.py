"""The full rebuild's bulk rewrite (store/bulk.py): secondary indexes dropped and re-created around the
writes only when the project holds most of the rows, the same rows as the incremental path, and a failed
rewrite leaves the tables and their indexes as they were."""

from __future__ import annotations

import os
import threading

import pytest
import sqlalchemy as sa

from test_sessions import MIN, T0, Ev, ingest, snapshot
from usertrail.sessions.processor import SessionProcessor
from usertrail.store import bulk
from usertrail.store.bulk import bulk_rewrite
from usertrail.store.database import write_transaction
from usertrail.store.projects import ProjectStore
from usertrail.store.schema import end_users, sessions

TABLES = ("sessions", "end_users", "user_words", "session_hints")


def index_names(engine: sa.Engine) -> dict[str, tuple[set[str], str, list[str]]]:
    """Per table: its secondary indexes' names, and its primary key's name and columns."""
    inspector = sa.inspect(engine)
    keys = {t: inspector.get_pk_constraint(t) for t in TABLES}
    return {
        t: ({ix["name"] for ix in inspector.get_indexes(t)}, keys[t]["name"], keys[t]["constrained_columns"])
        for t in TABLES
    }


def dropped_indexes(engine: sa.Engine, action) -> list[str]:
    """The DROP INDEX (and ALTER TABLE … DROP CONSTRAINT) statements `action()` runs on this engine."""
    return statements(
        engine, action, lambda sql: sql.lstrip().upper().startswith("DROP INDEX") or "DROP CONSTRAINT" in sql.upper()
    )


def statements(engine: sa.Engine, action, wanted) -> list[str]:
    """The statements `action()` runs on this engine for which `wanted(sql)` holds."""
    seen: list[str] = []

    def statement(conn, cursor, sql, *args) -> None:
        if wanted(sql):
            seen.append(" ".join(sql.split()))

    sa.event.listen(engine, "before_cursor_execute", statement)
    try:
        action()
    finally:
        sa.event.remove(engine, "before_cursor_execute", statement)
    return seen


def activity(key: str, start: int) -> list[Ev]:
    """Two sessions of one user, each with an interaction, a place and a browser."""
    return [
        Ev(key, start, "pageChange", hint=f"{key}-1", country="FR", region="IDF", city="Paris", browser="Firefox"),
        Ev(key, start + 5 * MIN, "click", hint=f"{key}-1"),
        Ev(key, start + 60 * MIN, "click", hint=f"{key}-2", country="DE", browser="Chrome", vars='{"type":"VIP"}'),
    ]


@pytest.fixture
def projects(engine) -> tuple[int, int]:
    store = ProjectStore(engine)
    return store.create("big").project.id, store.create("small").project.id


def test_rebuild_with_indexes_dropped_equals_the_incremental_path(engine, projects, monkeypatch):
    big, small = projects
    ingest(engine, big, [e for i in range(6) for e in activity(f"u:big{i}", T0 + i * MIN)])
    ingest(engine, small, [e for i in range(2) for e in activity(f"u:small{i}", T0)])
    processor = SessionProcessor(engine)
    now = T0 + 5 * 60 * MIN
    processor.run(now=now)
    incremental = snapshot(engine, big), snapshot(engine, small)
    before = index_names(engine)

    monkeypatch.setattr(bulk, "DROP_AT_ROWS", 1)
    # The big project holds most rows of each table: its rebuild drops and re-creates the indexes.
    drops = dropped_indexes(engine, lambda: processor.rebuild(big, now=now))
    dropped = {d.split()[-1].strip('"') for d in drops}
    assert {ix.name for t in (sessions, end_users) for ix in t.indexes} <= dropped
    # PostgreSQL also builds the primary keys after the rows (store/bulk.py); SQLite's cannot be dropped.
    keys = {t.primary_key.name for t in (sessions, end_users)}
    assert keys <= dropped if engine.dialect.name == "postgresql" else not keys & dropped
    # The small one does not: building an index over the big project's rows would cost more than it saves.
    assert dropped_indexes(engine, lambda: processor.rebuild(small, now=now)) == []
    assert (snapshot(engine, big), snapshot(engine, small)) == incremental
    assert index_names(engine) == before


def test_old_rows_are_emptied_at_once_on_sqlite_and_deleted_by_project_on_postgresql(engine, projects, monkeypatch):
    """SQLite frees the pages of a table only the project uses at once (DELETE without WHERE) instead of deleting
    row by row; PostgreSQL deletes the project's rows (TRUNCATE is not MVCC-safe). The rows are the same."""
    big, small = projects
    ingest(engine, big, [e for i in range(4) for e in activity(f"u:big{i}", T0 + i * MIN)])
    processor = SessionProcessor(engine)
    now = T0 + 5 * 60 * MIN
    processor.run(now=now)
    incremental = snapshot(engine, big)
    monkeypatch.setattr(bulk, "DROP_AT_ROWS", 1)

    def clears() -> list[str]:
        def clearing(sql: str) -> bool:
            return sql.lstrip().upper().startswith(("TRUNCATE", "DELETE FROM"))

        return statements(engine, lambda: processor.rebuild(big, now=now), clearing)

    tables = ("sessions", "end_users", "user_words", "session_hints")
    whole = {f"DELETE FROM {t}" for t in tables}
    cleared = clears()
    assert not any(sql.startswith("TRUNCATE") for sql in cleared), cleared
    if engine.dialect.name == "sqlite":
        assert whole <= set(cleared), cleared
    else:
        assert not whole & set(cleared), cleared
    assert snapshot(engine, big) == incremental
    assert clears() == cleared  # again, over the rows the first rebuild wrote
    assert snapshot(engine, big) == incremental

    # Once another project has rows in the tables, only the project's own rows are deleted.
    ingest(engine, small, activity("u:small", T0))
    processor.run(now=now)
    kept = snapshot(engine, small)
    cleared = clears()
    assert not whole & set(cleared), cleared
    assert all(any(sql.startswith(f"DELETE FROM {t} WHERE") for sql in cleared) for t in tables), cleared
    assert snapshot(engine, big) == incremental and snapshot(engine, small) == kept


def test_a_failed_rewrite_leaves_the_rows_and_the_indexes(engine, projects, monkeypatch):
    big, _ = projects
    ingest(engine, big, [e for i in range(3) for e in activity(f"u:big{i}", T0)])
    processor = SessionProcessor(engine)
    processor.run(now=T0 + 5 * 60 * MIN)
    kept = snapshot(engine, big)
    before = index_names(engine)
    monkeypatch.setattr(bulk, "DROP_AT_ROWS", 1)
    with (
        pytest.raises(RuntimeError, match="stop"),
        write_transaction(engine) as conn,
        bulk_rewrite(conn, big, {end_users: 3, sessions: 6}),
    ):
        conn.execute(end_users.delete().where(end_users.c.project_id == big))
        raise RuntimeError("stop")
    assert snapshot(engine, big) == kept
    assert index_names(engine) == before


# PostgreSQL only: SQLite has one writer at a time and no table locks, so there is nothing to wait for.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_tables_another_transaction_holds_keep_their_indexes(engine, projects, monkeypatch):
    """PostgreSQL: when the tables cannot all be locked at once in time, the rebuild writes with the indexes
    in place instead of waiting (or deadlocking with the session loop), and still gives the same rows."""
    big, _ = projects
    ingest(engine, big, [e for i in range(3) for e in activity(f"u:big{i}", T0)])
    processor = SessionProcessor(engine)
    now = T0 + 5 * 60 * MIN
    processor.run(now=now)
    kept = snapshot(engine, big)
    monkeypatch.setattr(bulk, "DROP_AT_ROWS", 1)
    monkeypatch.setattr(bulk, "LOCK_WAIT_MS", 200)
    with engine.connect() as other:
        other.exec_driver_sql("LOCK TABLE end_users IN ROW EXCLUSIVE MODE")  # as a loop transaction writing
        assert dropped_indexes(engine, lambda: processor.rebuild(big, now=now)) == []
        other.rollback()
    assert snapshot(engine, big) == kept
    assert dropped_indexes(engine, lambda: processor.rebuild(big, now=now)) != []
    assert snapshot(engine, big) == kept


def test_a_large_rewrite_commits_without_copying_the_log_back_and_a_thread_copies_it_after(engine):
    """SQLite: the commit inside `checkpoint_behind` leaves its pages in the write-ahead log (the database file
    keeps its size); a background thread then copies them back, and the connection's automatic checkpoint
    setting is what it was. PostgreSQL: nothing changes."""
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE filler (x TEXT)")
    path = engine.url.database if engine.dialect.name == "sqlite" else None
    with engine.execution_options(immediate=True).connect() as conn:
        raw = conn.connection.dbapi_connection  # pragmas through the driver: no transaction begins
        before = raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0] if path else None
        size = os.path.getsize(path) if path else 0
        with bulk.checkpoint_behind(conn, bulk.DROP_AT_ROWS):
            with conn.begin():
                conn.execute(sa.text("INSERT INTO filler VALUES (:x)"), [{"x": f"{n:0500d}"} for n in range(20_000)])
            if path:
                # 10 MB committed, more than 1,000 pages: SQLite would have copied them back at the commit.
                assert os.path.getsize(path) == size
        if path:
            assert raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == before
    for thread in threading.enumerate():
        if thread.name == "usertrail-wal-checkpoint":
            thread.join()
    if path:
        assert os.path.getsize(path) > size + 10_000_000
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM filler").scalar() == 20_000


def _commit_setting(conn: sa.Connection) -> str:
    if conn.dialect.name == "sqlite":
        return str(conn.connection.dbapi_connection.execute("PRAGMA synchronous").fetchone()[0])
    return conn.exec_driver_sql("SHOW synchronous_commit").scalar_one()


def test_unflushed_commits_apply_to_the_transactions_inside_then_the_setting_is_back(engine):
    """The rebuild's commit does not wait for the disk; the connection goes back to the pool as it came."""
    project = ProjectStore(engine).create("unflushed").project.id
    with engine.execution_options(immediate=True).connect() as conn:
        before = _commit_setting(conn)
        conn.rollback()
        with bulk.unflushed_commits(conn), conn.begin():
            assert _commit_setting(conn) in ("1", "off")  # SQLite's NORMAL, PostgreSQL's off
            conn.execute(sessions.delete().where(sessions.c.project_id == project))
        assert _commit_setting(conn) == before
        assert before in ("2", "on")
