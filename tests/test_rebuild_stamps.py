"""What the full rebuild keeps of the rows it replaces (sessions/stamps.py): a session stored closed keeps its
close time, and an End User Object that did not change keeps its update time, as on the incremental path;
what the rebuild closes or changes takes its time. On both engines, through each way the rebuild makes
session rows (column-wise, per owner for stitched keys, and SQLite's staging helper)."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from test_bulk_rewrite import activity
from test_sessions import MIN, T0, Ev, ingest, snapshot
from usertrail.sessions.processor import SessionProcessor
from usertrail.sessions.stamps import StoredCloses
from usertrail.sessions.table import SessionTable
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


def test_a_rebuild_keeps_the_times_of_what_it_does_not_change_as_the_incremental_path_does(engine):
    keeps_the_times(engine)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # staging is SQLite's (store/staging.py)
def test_a_staged_rebuild_keeps_the_times_too(engine, monkeypatch):
    monkeypatch.setattr(staging, "STAGE_AT_ROWS", 1)
    keeps_the_times(engine)


def keeps_the_times(engine: sa.Engine) -> None:
    """Two projects with the same traffic, one rebuilt and one processed incrementally, end with the same
    rows and the same close and update times."""
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


@given(data=st.data())
def test_the_column_wise_match_of_stored_close_times_equals_a_match_by_pair(data):
    """`StoredCloses.table_closes` (numpy, on key numbers and start ranks) finds for each session of a table
    the close time stored for its (key, start), as a dictionary of pairs would, whatever the keys and starts."""
    keys = data.draw(st.lists(st.text(min_size=1, max_size=3), min_size=1, max_size=5, unique=True))
    starts = st.integers(-(2**62), 2**62)
    sessions_of = data.draw(
        st.lists(st.tuples(st.integers(0, len(keys) - 1), starts), max_size=25, unique=True), label="sessions"
    )
    pairs = [(keys[k], start) for k, start in sessions_of]
    # Stored: some of the table's sessions, and sessions of keys or starts it does not have.
    stored_pairs = data.draw(
        st.lists(
            st.one_of(st.sampled_from(pairs), st.tuples(st.sampled_from([*keys, "elsewhere"]), starts))
            if pairs
            else st.tuples(st.sampled_from([*keys, "elsewhere"]), starts),
            unique=True,
            max_size=25,
        ),
        label="stored",
    )
    stored = [(key, start, data.draw(st.integers(1, 2**62))) for key, start in stored_pairs]
    n = len(sessions_of)
    table = SessionTable(
        keys=keys,
        key=np.array([k for k, _ in sessions_of], np.int64),
        start=np.array([start for _, start in sessions_of], np.int64),
        end=np.zeros(n, np.int64),
        events=np.zeros(n, np.int64),
        interactions=np.zeros(n, np.int64),
        page_views=np.zeros(n, np.int64),
        hints=["[]"] * n,
        values={},
        vars_code=np.full(n, -1, np.int64),
        vars_values=[],
    )
    found = StoredCloses(stored).table_closes(table)
    if not stored:
        assert found is None
    else:
        by_pair = {(key, start): at for key, start, at in stored}
        assert found.tolist() == [by_pair.get(pair, -1) for pair in pairs]
