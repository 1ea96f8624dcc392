"""The full rebuild's bulk rewrite (store/bulk.py): secondary indexes dropped and re-created around the
writes only when the project holds most of the rows, on PostgreSQL only the rows that changed written over
stored ones, the same rows as the incremental path, and a failed rewrite leaves the tables and their indexes
as they were."""

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
from usertrail.store.schema import end_users, identity_links, session_hints, sessions, user_properties, user_words

TABLES = ("sessions", "end_users", "user_words", "session_hints")
DERIVED = (sessions, end_users, user_words, user_properties, identity_links, session_hints)


def forget_derived(engine: sa.Engine, project_id: int) -> None:
    """Delete the project's derived rows, as if they had never been written (a project's first rebuild)."""
    with write_transaction(engine) as conn:
        for table in DERIVED:
            conn.execute(table.delete().where(table.c.project_id == project_id))


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
    # The big project holds most rows of each table: its rebuild drops and re-creates the indexes. (PostgreSQL
    # does so for tables without the project's rows; into the others it merges, tested below.)
    forget_derived(engine, big)
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


def test_old_rows_are_emptied_at_once_on_sqlite_and_merged_into_on_postgresql(engine, projects, monkeypatch):
    """SQLite frees the pages of a table only the project uses at once (DELETE without WHERE) instead of deleting
    row by row, and deletes only the project's rows once another project has some. PostgreSQL neither truncates
    (not MVCC-safe) nor deletes the project's rows: it merges the new rows into them. The rows are the same."""
    big, small = projects
    ingest(engine, big, [e for i in range(4) for e in activity(f"u:big{i}", T0 + i * MIN)])
    processor = SessionProcessor(engine)
    now = T0 + 5 * 60 * MIN
    processor.run(now=now)
    incremental = snapshot(engine, big)
    monkeypatch.setattr(bulk, "DROP_AT_ROWS", 1)

    def clears() -> list[str]:
        def clearing(sql: str) -> bool:
            return sql.lstrip().upper().startswith(("TRUNCATE", "DELETE FROM", "CREATE TEMPORARY TABLE NEW_"))

        return statements(engine, lambda: processor.rebuild(big, now=now), clearing)

    whole = {f"DELETE FROM {t}" for t in TABLES}
    twins = {f"CREATE TEMPORARY TABLE new_{t} (LIKE {t}) ON COMMIT DROP" for t in TABLES}
    for _ in range(2):  # the second time over the rows the first rebuild wrote
        cleared = clears()
        assert not any(sql.startswith("TRUNCATE") for sql in cleared), cleared
        if engine.dialect.name == "sqlite":
            assert whole <= set(cleared), cleared
        else:
            assert twins <= set(cleared), cleared
            assert not any(sql.startswith(f"DELETE FROM {t} WHERE") for t in TABLES for sql in cleared), cleared
        assert snapshot(engine, big) == incremental

    # Once another project has rows in the tables, SQLite deletes the project's own rows; PostgreSQL still merges.
    ingest(engine, small, activity("u:small", T0))
    processor.run(now=now)
    kept = snapshot(engine, small)
    cleared = clears()
    assert not whole & set(cleared), cleared
    if engine.dialect.name == "sqlite":
        assert all(any(sql.startswith(f"DELETE FROM {t} WHERE") for sql in cleared) for t in TABLES), cleared
    else:
        assert twins <= set(cleared), cleared
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
    in place instead of waiting (or deadlocking with the session loop), and still gives the same rows; a merge
    that would drop a held table's indexes keeps them."""
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
        forget_derived(engine, big)  # tables without the project's rows: their indexes would be dropped
        assert dropped_indexes(engine, lambda: processor.rebuild(big, now=now)) == []
        assert snapshot(engine, big) == kept
        # Tables where most of the project's rows differ: their indexes would be dropped for the merge, each
        # table's on its own, so only the held table keeps them.
        scramble(engine, big)
        drops = dropped_indexes(engine, lambda: processor.rebuild(big, now=now))
        assert drops and not [sql for sql in drops if "end_users" in sql], drops
        other.rollback()
    assert snapshot(engine, big) == kept
    forget_derived(engine, big)
    assert dropped_indexes(engine, lambda: processor.rebuild(big, now=now)) != []
    assert snapshot(engine, big) == kept


def scramble(engine: sa.Engine, project_id: int) -> None:
    """Change every stored session and End User Object of the project (as a change of the session rules would)."""
    with write_transaction(engine) as conn:
        conn.execute(sessions.update().where(sessions.c.project_id == project_id).values(page_views=-1))
        conn.execute(end_users.update().where(end_users.c.project_id == project_id).values(total_sessions=-1))


def places(engine: sa.Engine, project_id: int) -> dict[tuple, str]:
    """PostgreSQL: where each of the project's derived rows is stored (its ctid), by table and key. A row written
    again, even with the same values, moves."""
    found: dict[tuple, str] = {}
    with engine.connect() as conn:
        for table in DERIVED:
            key = [c for c in table.primary_key.columns if c.name != "project_id"]
            where = sa.literal_column("ctid::text")
            rows = conn.execute(sa.select(where, *key).where(table.c.project_id == project_id))
            found |= {(table.name, *row[1:]): row[0] for row in rows}
    return found


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_rebuild_on_postgresql_writes_only_the_rows_that_changed(engine, projects, monkeypatch):
    """PostgreSQL: a rebuild over stored rows leaves the rows it finds unchanged where they are (not deleted
    and written again), and writes only what changed: one user's new session and End User Object."""
    big, small = projects
    ingest(engine, big, [e for i in range(4) for e in activity(f"u:big{i}", T0 + i * MIN)])
    ingest(engine, small, activity("u:small", T0))
    processor = SessionProcessor(engine)
    now = T0 + 5 * 60 * MIN
    processor.run(now=now)
    monkeypatch.setattr(bulk, "DROP_AT_ROWS", 1)
    before, small_rows = places(engine, big), places(engine, small)

    assert dropped_indexes(engine, lambda: processor.rebuild(big, now=now + 60 * MIN)) == []
    assert places(engine, big) == before

    late = T0 + 3 * 60 * MIN
    ingest(engine, big, [Ev("u:big0", late, "click", hint="u:big0-3", country="DE", browser="Chrome")])
    processor.rebuild(big, now=now + 60 * MIN)
    after = places(engine, big)
    assert {k for k in before if after.get(k) != before[k]} == {("end_users", "u:big0")}
    assert after.keys() - before.keys() == {("sessions", "u:big0", late), ("session_hints", "u:big0-3", "u:big0")}
    assert places(engine, small) == small_rows
    # The incremental path, run over the user the new event marked, finds nothing left to change.
    rebuilt = snapshot(engine, big)
    processor.run(now=now + 60 * MIN)
    assert snapshot(engine, big) == rebuilt


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_when_most_rows_changed_the_merge_drops_and_builds_the_indexes(engine, projects, monkeypatch):
    """PostgreSQL: a table where a third of the project's rows or more differ is written whole, its indexes
    dropped and built again, and the result is still the incremental path's."""
    big, _ = projects
    ingest(engine, big, [e for i in range(4) for e in activity(f"u:big{i}", T0 + i * MIN)])
    processor = SessionProcessor(engine)
    now = T0 + 5 * 60 * MIN
    processor.run(now=now)
    kept, indexes = snapshot(engine, big), index_names(engine)
    monkeypatch.setattr(bulk, "DROP_AT_ROWS", 1)
    scramble(engine, big)
    dropped = {d.split()[-1].strip('"') for d in dropped_indexes(engine, lambda: processor.rebuild(big, now=now))}
    assert dropped == {ix.name for t in (sessions, end_users) for ix in [*t.indexes, t.primary_key]}
    assert snapshot(engine, big) == kept
    assert index_names(engine) == indexes


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_readers_read_the_stored_rows_while_a_merge_runs_and_writers_wait(engine, projects, monkeypatch):
    """PostgreSQL: while a rebuild merges into stored rows, other transactions read the rows as they were
    (the tables are locked against writers only), and a writer waits for the rebuild's commit."""
    big, _ = projects
    ingest(engine, big, [e for i in range(10) for e in activity(f"u:big{i}", T0 + i * MIN)])
    processor = SessionProcessor(engine)
    now = T0 + 5 * 60 * MIN
    processor.run(now=now)
    monkeypatch.setattr(bulk, "DROP_AT_ROWS", 1)  # one changed user in ten: merged with the indexes in place
    mine = sa.select(end_users).where(end_users.c.project_id == big).order_by(end_users.c.user_key)
    with engine.connect() as conn:
        stored = conn.execute(mine).all()
    ingest(engine, big, [Ev("u:big0", T0 + 3 * 60 * MIN, "click")])  # the rebuild changes u:big0's object
    merging, go = threading.Event(), threading.Event()
    merge = bulk._merge

    def paused_merge(conn, table, project_id, written):
        done = merge(conn, table, project_id, written)
        if table is end_users:
            merging.set()
            go.wait(30)
        return done

    monkeypatch.setattr(bulk, "_merge", paused_merge)
    rebuild = threading.Thread(target=processor.rebuild, args=(big,), kwargs={"now": now})
    rebuild.start()
    try:
        assert merging.wait(30)
        with engine.connect() as other:
            other.exec_driver_sql("SET lock_timeout = 2000")
            assert other.execute(mine).all() == stored
            other.rollback()
            other.exec_driver_sql("SET lock_timeout = 200")
            with pytest.raises(sa.exc.OperationalError, match="lock timeout"):
                other.execute(end_users.update().where(end_users.c.project_id == big).values(updated_at=0))
            other.rollback()
    finally:
        go.set()
        rebuild.join(60)
    with engine.connect() as conn:
        after = conn.execute(mine).all()
    assert after != stored and len(after) == len(stored)


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
