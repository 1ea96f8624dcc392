"""What the full rebuild keeps of the rows it replaces (sessions/stamps.py): a session stored closed keeps its
close time, and an End User Object that did not change keeps its update time, as on the incremental path;
what the rebuild closes or changes takes its time. On both engines, through each way the rebuild makes
session rows (column-wise, per owner for stitched keys, and SQLite's staging helper)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from test_bulk_rewrite import activity
from test_sessions import MIN, T0, Ev, ingest, snapshot
from usertrail.sessions.processor import SessionProcessor
from usertrail.store import staging
from usertrail.store.projects import ProjectStore
from usertrail.store.schema import end_users, sessions

FIRST = T0 + 5 * 60 * MIN  # the first processing: every session of `activity` is closed by then
SECOND = FIRST + 60 * MIN
LATE = T0 + 4 * 60 * MIN  # a later session of u:0, sent after the first processing
OPEN = FIRST - 10 * MIN  # u:3's last event: its session is still open at FIRST


def stamps(engine: sa.Engine, project_id: int) -> tuple[dict, dict]:
    """(close time by (user, session start), update time by user) of the project."""
    with engine.connect() as conn:
        closes = conn.execute(
            sa.select(sessions.c.user_key, sessions.c.start_ts, sessions.c.closed_at).where(
                sessions.c.project_id == project_id
            )
        )
        updates = conn.execute(
            sa.select(end_users.c.user_key, end_users.c.updated_at).where(end_users.c.project_id == project_id)
        )
        return {(k, s): at for k, s, at in closes}, dict(updates.all())


def traffic(engine: sa.Engine, project_id: int) -> None:
    """Four users; u:2 logs in on an anonymous device within a session (stitched: its owner's sessions are
    made per owner, not column-wise); u:3's last session is open at FIRST."""
    ingest(engine, project_id, [e for i in range(3) for e in activity(f"u:{i}", T0 + i * MIN)])
    ingest(
        engine,
        project_id,
        [
            Ev("a:dev", T0 + 2 * 60 * MIN, "click", hint="login"),
            Ev("u:2", T0 + 2 * 60 * MIN + MIN, "click", hint="login", anon="a:dev"),
        ],
    )
    ingest(engine, project_id, [Ev("u:3", T0, "click"), Ev("u:3", OPEN, "click")])


@pytest.mark.parametrize("staged", [False, True], ids=["in-process", "staged"])
def test_a_rebuild_keeps_the_times_of_what_it_does_not_change_as_the_incremental_path_does(engine, monkeypatch, staged):
    if staged:
        if engine.dialect.name != "sqlite":
            pytest.skip("staging is SQLite's (store/staging.py)")
        monkeypatch.setattr(staging, "STAGE_AT_ROWS", 1)
    store = ProjectStore(engine)
    rebuilt, incremental = store.create("rebuilt").project.id, store.create("incremental").project.id
    processor = SessionProcessor(engine)
    for project in (rebuilt, incremental):
        traffic(engine, project)
    processor.run(now=FIRST)
    closes, updates = stamps(engine, rebuilt)
    assert set(closes.values()) == {FIRST, None} and set(updates.values()) == {FIRST}

    for project in (rebuilt, incremental):
        ingest(engine, project, [Ev("u:0", LATE, "click", country="DE", browser="Chrome")])
    processor.rebuild(rebuilt, now=SECOND)
    after, updated = stamps(engine, rebuilt)
    # Closed before: the same close time. Closed now (u:0's new session, u:3's open one): the rebuild's.
    assert after == closes | {("u:0", LATE): SECOND, ("u:3", OPEN): SECOND}
    # Changed objects (u:0: one more session; u:3: its last session counts now): the rebuild's time.
    assert updated == updates | {"u:0": SECOND, "u:3": SECOND}

    # The incremental path gives the same rows and times; the rebuilt project's pending users change nothing.
    processor.run(now=SECOND)
    assert stamps(engine, rebuilt) == (after, updated) == stamps(engine, incremental)
    assert without_project(snapshot(engine, rebuilt)) == without_project(snapshot(engine, incremental))


def without_project(rows: dict) -> dict:
    return {name: [row[1:] for row in table] for name, table in rows.items()}
