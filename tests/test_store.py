"""The schema and its migrations, on both engines."""

from __future__ import annotations

import sqlite3
import threading

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from test_overview_api import query_plan
from usertrail.store import database
from usertrail.store.database import migrate
from usertrail.store.events import EventStore, IngestRecord, event_row, user_events_query
from usertrail.store.projects import ProjectStore
from usertrail.store.schema import INSTALLATION_TABLES, KEY_TEXT, metadata


def test_migrations_match_the_schema_and_rerun_cleanly(engine):
    migrate(engine)  # a second run is a no-op
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_the_up_to_date_check_reads_the_head_and_the_database_as_alembic_does(engine):
    """`migrate` skips Alembic when the database is at the newest file's revision: that shortcut must
    agree with Alembic's own reading of the chain and of the database."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(database._alembic_config())
    assert [r.revision for r in script.walk_revisions()] == sorted(
        (p.name[:4] for p in (database.MIGRATIONS_DIR / "versions").glob("*.py")), reverse=True
    )  # one file per revision, named after it, in one line
    assert database._head_revision() == script.get_current_head()
    with engine.connect() as conn:
        assert database._current_revision(conn) == MigrationContext.configure(conn).get_current_revision()
    fresh = sa.create_engine("sqlite://")
    with fresh.connect() as conn:
        assert database._current_revision(conn) is None


def test_key_columns_compare_byte_wise(engine):
    """End-user keys compare by code point on both engines (Python's order), which `_any_stored`'s
    range probe relies on; on PostgreSQL the migration made every key column COLLATE "C"."""
    keys = {(c.table.name, c.name) for t in metadata.sorted_tables for c in t.columns if c.type is KEY_TEXT}
    assert {("events", "user_key"), ("custom_attributes", "user_key")} <= keys
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            found = conn.execute(
                sa.text(
                    "SELECT table_name, column_name FROM information_schema.columns "
                    "WHERE table_schema = current_schema() AND collation_name = 'C'"
                )
            ).all()
        assert keys <= set(map(tuple, found))
    texts = ["b", "B", "é", "e", "z", "Ω", "ä", "10", "9", "u:~", "u:Z", "a b", "a-c", "ab"]
    pending = metadata.tables["pending_users"]
    with engine.begin() as conn:
        conn.execute(pending.insert(), [{"project_id": -1, "user_key": k, "since_ts": 0, "version": 1} for k in texts])
        stored = conn.execute(
            sa.select(pending.c.user_key).where(pending.c.project_id == -1).order_by(pending.c.user_key)
        ).scalars()
        assert list(stored) == sorted(texts)
        conn.execute(pending.delete().where(pending.c.project_id == -1))


# Tables with a user_key column that are distributed by project_id instead: SCIM addresses its
# resources by id and userName across the project, and the user_key there only points at the end user.
PER_PROJECT_WITH_USER_KEY = {"scim_users"}


def test_every_per_user_key_includes_the_distribution_column(engine):
    """Citus rule: every primary key and unique index on per-user tables includes user_key."""
    inspector = sa.inspect(engine)
    per_user = [t for t in metadata.tables if "user_key" in metadata.tables[t].c]
    assert {"events", "sessions", "end_users", "custom_attributes"} <= set(per_user)
    for table in per_user:
        if table in PER_PROJECT_WITH_USER_KEY:
            continue
        assert "user_key" in inspector.get_pk_constraint(table)["constrained_columns"], table
        for index in inspector.get_indexes(table):
            if index["unique"]:
                assert "user_key" in index["column_names"], (table, index["name"])
        for constraint in inspector.get_unique_constraints(table):
            assert "user_key" in constraint["column_names"], (table, constraint["name"])
    for table in metadata.tables:
        assert "project_id" in metadata.tables[table].c or table in INSTALLATION_TABLES


def test_user_events_in_time_order(engine):
    project = ProjectStore(engine).create("p").project
    store = EventStore(engine)
    rows = []
    for i, ts in enumerate([300, 100, 200]):
        rows.append(
            event_row(
                **{
                    "project_id": project.id,
                    "user_key": "u:x",
                    "event_id": f"e{i}",
                    "ts": ts,
                    "client_ts": ts,
                    "received_at": 1,
                    "env": "production",
                    "source": "native",
                    "type": "track",
                    "id_source": "variable",
                    "payload": "{}",
                }
            )
        )
    other = (*rows[0][:1], "u:y", "e9", *rows[0][3:])
    [outcome] = store.write_many([IngestRecord(project.id, events=[*rows, other])])
    assert outcome.stored == 4
    assert [r.ts for r in store.user_events(project.id, "u:x")] == [100, 200, 300]
    assert [r.ts for r in store.user_events(project.id, "u:x", since=150, until=300)] == [200]
    [again] = store.write_many([IngestRecord(project.id, events=rows)])
    assert (again.stored, again.duplicates) == (0, 3)
    # Cheap however many events there are: read along the (project, user, ts) index, in its order.
    for query in (user_events_query(project.id, "u:x"), user_events_query(project.id, "u:x", 150, 300, 10)):
        plan = query_plan(engine, query, avoid_sorts=True)
        assert "ix_events_project_id_user_key_ts" in plan, plan
        # At most the events of one millisecond are put in event_id order.
        if engine.dialect.name == "sqlite":
            assert "TEMP B-TREE FOR ORDER BY" not in plan and "RIGHT PART OF ORDER BY" in plan, plan
        else:
            assert "Incremental Sort" in plan and "Presorted Key: ts" in plan, plan


def test_a_sqlite_writer_waits_for_the_write_lock_and_gives_up_after_its_limit(tmp_path, monkeypatch):
    """Another process's long transaction: the writer polls until it ends, or fails after the wait limit."""
    path = tmp_path / "lock.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("CREATE TABLE t (x)")
    waiter = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    holder.execute("BEGIN IMMEDIATE")
    monkeypatch.setattr(database, "_LOCK_WAIT_S", 0.05)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        database._begin_immediate(waiter)

    monkeypatch.setattr(database, "_LOCK_WAIT_S", 30.0)
    released = threading.Event()

    def release() -> None:
        holder.execute("INSERT INTO t VALUES (1)")
        released.set()
        holder.execute("COMMIT")

    # Released only after the waiter has been polling past the fast phase.
    timer = threading.Timer(database._FAST_FOR_S * 4, release)
    timer.start()
    database._begin_immediate(waiter)
    assert released.is_set()
    waiter.execute("INSERT INTO t VALUES (2)")
    waiter.execute("COMMIT")
    timer.join()
    assert holder.execute("SELECT count(*) FROM t").fetchone() == (2,)


def test_migration_0031_keeps_the_lookup_tables_rows_and_indexes_in_key_order_on_sqlite(empty_database_url):
    """SQLite stores user_words, user_properties, session_hints and identity_links WITHOUT ROWID after 0031,
    and as rowid tables again after its downgrade; their rows and indexes survive both ways. PostgreSQL:
    nothing changes."""
    from test_attributes import _alembic
    from usertrail.store.database import create_engine

    tables = ("user_words", "user_properties", "session_hints", "identity_links")
    engine = create_engine(empty_database_url)
    rows = {
        "user_words": "(7, 'u:lena', 'lena'), (7, 'u:lena', 'tel')",
        "user_properties": "(7, 'u:lena', 'role', 'Owner')",
        "session_hints": "(7, 's1', 'a:dev1', 1, 'e1'), (7, 's1', 'u:lena', 2, 'e2')",
        "identity_links": "(7, 'a:dev1', 'u:lena', 2, 'e2')",
    }

    def state() -> tuple[dict, dict, dict]:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            content = {t: sorted(map(tuple, conn.execute(sa.text(f"SELECT * FROM {t}")))) for t in tables}
            indexes = {t: sorted(ix["name"] for ix in inspector.get_indexes(t)) for t in tables}
            without_rowid = {}
            if engine.dialect.name == "sqlite":
                for t in tables:
                    sql = conn.execute(sa.text("SELECT sql FROM sqlite_master WHERE name = :t"), {"t": t}).scalar_one()
                    without_rowid[t] = "WITHOUT ROWID" in sql.upper()
        return content, indexes, without_rowid

    try:
        _alembic(engine, "upgrade", "0030")
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO projects (id, name, created_at) VALUES (7, 'p', 0)"))
            for table, values in rows.items():
                conn.execute(sa.text(f"INSERT INTO {table} VALUES {values}"))
        before, indexes, rowid_tables = state()
        assert all(len(v) for v in before.values())
        assert not any(rowid_tables.values())
        migrate(engine)
        after, indexes_after, without_rowid = state()
        assert (after, indexes_after) == (before, indexes)
        assert without_rowid == ({t: True for t in tables} if engine.dialect.name == "sqlite" else {})
        _alembic(engine, "downgrade", "0030")
        assert state() == (before, indexes, rowid_tables)
    finally:
        engine.dispose()
