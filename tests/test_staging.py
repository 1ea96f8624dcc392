"""Rows written by a helper process into a scratch file, then copied in by one statement (store/staging.py):
the full rebuild's sessions on SQLite."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import sqlalchemy as sa

from test_bulk_rewrite import activity
from test_sessions import MIN, T0, ingest, snapshot
from usertrail.sessions.processor import SessionProcessor
from usertrail.store import staging
from usertrail.store.projects import ProjectStore
from usertrail.store.schema import identity_links

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def scratch(engine) -> Path:
    """Where the scratch files go, beside the store's file (and must be gone from afterwards)."""
    return Path(engine.url.database).parent


def leftovers(folder: Path) -> list[Path]:
    return list(folder.glob("usertrail-stage-*"))


def test_a_staged_rebuild_equals_the_incremental_path(engine, scratch, monkeypatch):
    store = ProjectStore(engine)
    big, small = store.create("big").project.id, store.create("small").project.id
    ingest(engine, big, [e for i in range(6) for e in activity(f"u:big{i}", T0 + i * MIN)])
    processor = SessionProcessor(engine)
    now = T0 + 5 * 60 * MIN
    processor.run(now=now)
    alone = snapshot(engine, big)
    copied = []
    original = staging.Stage.move_into
    monkeypatch.setattr(staging.Stage, "move_into", lambda self, conn: copied.append(original(self, conn)))
    monkeypatch.setattr(staging, "STAGE_AT_ROWS", 1)

    # The project alone in `sessions`: the copy goes into an empty table (SQLite's page transfer).
    processor.rebuild(big, now=now)
    assert copied == [12]
    assert snapshot(engine, big) == alone

    # Next to another project's rows: the same statement copies row by row.
    ingest(engine, small, [e for i in range(2) for e in activity(f"u:small{i}", T0)])
    processor.run(now=now)
    both = snapshot(engine, big), snapshot(engine, small)
    processor.rebuild(big, now=now)
    processor.rebuild(small, now=now)
    assert copied == [12, 12, 4]
    assert (snapshot(engine, big), snapshot(engine, small)) == both
    assert leftovers(scratch) == []
    with engine.connect() as conn:  # detached: the connection goes back to the pool as it came
        assert "usertrail_stage" not in {row[1] for row in conn.exec_driver_sql("PRAGMA database_list")}


def stage_rows(engine: sa.Engine, columns: tuple[str, ...], make_rows, *args) -> int:
    """Stage rows of identity_links as the rebuild does (the DDL read on one connection, `make_rows`'s last
    arguments given later, the copy made in a transaction of another); the rows copied."""
    with engine.connect() as reader, staging.staged(reader, identity_links, columns, make_rows) as stage:
        reader.rollback()
        stage.start(*args)
        with engine.connect() as conn, stage.attachable(conn), conn.begin():
            return stage.move_into(conn)


def test_rows_staged_and_copied_in(engine, scratch):
    rows = [(1, f"u:{i}", f"u:p{i}", T0 + i, f"e{i}") for i in range(300)]
    columns = ("project_id", "user_key", "person_key", "link_ts", "link_event_id")
    assert stage_rows(engine, columns, list, rows) == 300
    with engine.connect() as conn:
        stored = conn.execute(sa.select(identity_links).order_by(identity_links.c.link_ts)).all()
        assert "usertrail_stage" not in {row[1] for row in conn.exec_driver_sql("PRAGMA database_list")}
    assert [tuple(r) for r in stored] == rows
    assert leftovers(scratch) == []


def test_a_failing_helper_fails_the_transaction(engine, scratch):
    with pytest.raises(RuntimeError, match="staging helper failed"):
        stage_rows(engine, ("project_id",), functools.partial(int, "not a number"))
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(identity_links)).scalar_one() == 0
    assert leftovers(scratch) == []


def test_a_stage_never_started_stops_its_helper(engine, scratch):
    """A caller that leaves the block before giving the helper its arguments (an error, say) is not held up:
    the helper reads the end of its input and stops, and nothing is left behind."""
    with (
        pytest.raises(LookupError, match="stitching failed"),
        engine.connect() as reader,
        staging.staged(reader, identity_links, ("project_id",), list),
    ):
        raise LookupError("stitching failed")
    with engine.connect() as reader, staging.staged(reader, identity_links, ("project_id",), list) as stage:
        assert stage.table == "identity_links"
    assert leftovers(scratch) == []
