"""The rebuild's column-wise pass (sessions/columnar.py) gives exactly what the Python rule gives, on both engines."""

from __future__ import annotations

import os
import random
import sqlite3
import threading

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from usertrail.sessions import columnar, traits
from usertrail.sessions.columnar import sessionize_project
from usertrail.sessions.derive import EVENT_POINT_COLUMNS, session_row
from usertrail.sessions.rules import EventPoint, sessionize
from usertrail.store.database import insert_rows, write_transaction
from usertrail.store.events import EVENT_COLUMNS, STORED_COLUMNS, EventStore, IngestRecord, event_row, stored_row
from usertrail.store.projects import ProjectStore
from usertrail.store.schema import events

MIN = 60_000
T0 = 1_750_000_000_000
KEYS = ["u:ann", "u:bob", "a:d1", "a:d2"]
LATER = T0 + 10**12


def row(project_id: int, key: str, n: int, ts: int, **values) -> tuple:
    """An `events` row (EVENT_COLUMNS order); `values` are the columns the session rule reads."""
    return event_row(
        project_id=project_id, user_key=key, event_id=f"{key}-{n:04d}", ts=ts, received_at=ts, env="production",
        source="native", id_source="test", payload="{}", **{"type": "click", **values},
    )  # fmt: skip


def store(engine: sa.Engine, rows: list[tuple], traits_every: int = 0) -> None:
    """Insert the rows; every `traits_every`-th one (none for 0) as the indexer stores it, with its traits,
    the others without (as rows stored before there were traits: the pass computes theirs)."""
    if rows:
        with write_transaction(engine) as conn:
            stored = [bool(traits_every) and n % traits_every == 0 for n in range(len(rows))]
            insert_rows(conn, events, EVENT_COLUMNS, [r for r, s in zip(rows, stored, strict=True) if not s])
            insert_rows(conn, events, STORED_COLUMNS, [stored_row(r) for r, s in zip(rows, stored, strict=True) if s])


def column_wise(engine: sa.Engine, project_id: int):
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ")
        return sessionize_project(conn, project_id)


def by_the_rule(project_id: int, rows: list[tuple]) -> tuple[dict, dict, dict]:
    """Sessions (as rows), first (client session id, key) and first (anonymous id, key) of the Python rule."""
    at = {c: i for i, c in enumerate(EVENT_COLUMNS)}
    points: dict[str, list[EventPoint]] = {}
    hints: dict[tuple[str, str], tuple[int, str]] = {}
    anons: dict[tuple[str, str], tuple[int, str]] = {}
    for r in rows:
        key = r[at["user_key"]]
        point = EventPoint(*(r[at[c]] for c in EVENT_POINT_COLUMNS))
        points.setdefault(key, []).append(point)
        first = (point.ts, point.event_id)
        for found, value in ((hints, point.session_hint), (anons, r[at["anon_id"]])):
            if value:
                found[(value, key)] = min(found.get((value, key), first), first)
    sessions = {k: [session_row(project_id, k, s, "closed", None) for s in sessionize(p)] for k, p in points.items()}
    return sessions, hints, anons


def check(engine: sa.Engine, project_id: int, rows: list[tuple]) -> None:
    found = column_wise(engine, project_id)
    sessions, hints, anons = by_the_rule(project_id, rows)
    got = {k: [session_row(project_id, k, s, "closed", None) for s in made] for k, made in found.sessions.items()}
    if found.table is not None:
        # Keys finished column-wise: their rows, closed at a time after every session (then set aside).
        rows = found.table.session_rows(project_id, LATER, found.table.runs(LATER, frozenset()), None)
        for r in rows:
            assert r[8:10] == ("closed", LATER)
            assert r[1] not in found.sessions
            got.setdefault(r[1], []).append((*r[:9], None, *r[10:]))
    assert got == sessions
    for expected, links in ((hints, found.hints), (anons, found.anon_ids)):
        first: dict[tuple[str, str], tuple[int, str]] = {}
        for value, key, at in links:
            first[(value, key)] = min(first.get((value, key), at), at)
        assert first == expected


PLACES = [(None, None, None), ("FR", "Île-de-France", "Paris"), ("FR", "Auvergne-Rhône-Alpes", "Lyon"),
          ("US", "", None), ("", "California", "San Jose")]  # fmt: skip
BROWSERS = [(None, None), ("Chrome", "124.0.0"), ("Chrome", None), ("Firefox", ""), ("", "1.0")]
VALUES = {
    "type": st.sampled_from(["pageChange", "page", "click", "play", "sessionPing", "identify", "complete"]),
    "session_hint": st.sampled_from(["s1", "s2", "", None]),
    "anon_id": st.sampled_from([None, None, "", "d1", "d2"]),
    "url_path": st.sampled_from([None, "", "/a", "/b"]),
    "os": st.sampled_from([None, "", "Linux", "iOS"]),
    "device_type": st.sampled_from([None, "", "desktop"]),
    "user_vars": st.sampled_from([None, None, "", '{"type":"free"}', '{"type":"VIP","role":"admin"}']),
}
event_strategy = st.fixed_dictionaries(
    {
        "key": st.sampled_from(KEYS),
        # Minutes, so events share times and runs pass 12 hours; bursts below make long sessions.
        "minute": st.integers(0, 2 * 24 * 60),
        "place": st.sampled_from(PLACES),
        "browser": st.sampled_from(BROWSERS),
        **VALUES,
    }
)


def _row_of(project_id: int, n: int, e: dict) -> tuple:
    (country, region, city), (browser, version) = e["place"], e["browser"]
    values = {k: e[k] for k in VALUES}
    return row(project_id, e["key"], n, T0 + e["minute"] * MIN, country=country, region=region, city=city,
               browser=browser, browser_version=version, **values)  # fmt: skip


@settings(
    max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    singles=st.lists(event_strategy, max_size=40),
    bursts=st.lists(st.tuples(event_strategy, st.integers(1, 40), st.sampled_from([5, 20, 29, 30, 31])), max_size=3),
    other=st.integers(0, 30),
    traits_every=st.integers(0, 3),
)
def test_column_wise_pass_equals_the_rule(engine, singles, bursts, other, traits_every):
    """Random events (shared times, 12-hour runs, several client ids, anonymous ids and property sets, empty
    and NULL values) of one project, next to another project's, some with stored traits and some without:
    the pass gives the rule's sessions and links."""
    project = ProjectStore(engine).create("columns").project.id
    neighbour = ProjectStore(engine).create("neighbour").project.id
    events_ = list(singles)
    for first, count, step in bursts:
        events_ += [{**first, "minute": first["minute"] + i * step} for i in range(count)]
    rows = [_row_of(project, n, e) for n, e in enumerate(events_)]
    neighbours = [row(neighbour, "u:ann", n, T0 + n * MIN, session_hint="s1") for n in range(other)]
    store(engine, [*rows, *neighbours], traits_every)
    check(engine, project, rows)


@settings(
    max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.lists(event_strategy, min_size=1, max_size=30), st.sampled_from(["", "odd'type", "Page", "idle"]))
def test_stored_traits_equal_the_ones_the_database_computes(engine, events_, odd_type):
    """The traits the indexer stores with an event (Python) and the ones the pass computes for a row without
    them (SQL) are the same number, for every mix of kinds and set, empty and NULL values."""
    project = ProjectStore(engine).create("traits").project.id
    rows = [_row_of(project, n, e) for n, e in enumerate(events_)]
    rows[0] = event_row(**{**dict(zip(EVENT_COLUMNS, rows[0], strict=True)), "type": odd_type})
    store(engine, rows)
    with engine.connect() as conn:
        computed = dict(
            conn.execute(
                sa.text(f"SELECT event_id, {traits.SQL} FROM events WHERE project_id = :p"), {"p": project}
            ).all()
        )
    at = EVENT_COLUMNS.index("event_id")
    assert computed == {r[at]: stored_row(r)[-1] for r in rows}


def test_the_indexer_stores_each_events_traits(engine):
    """Events that come in through the event store carry their traits: the pass reads them as they are."""
    project = ProjectStore(engine).create("indexed").project.id
    rows = [
        row(project, "u:ann", 0, T0, type="pageView", url_path="/a", country="FR", browser="Chrome", os="iOS",
            device_type="mobile"),
        row(project, "u:ann", 1, T0 + MIN, type="idle", anon_id="d1"),
        row(project, "u:ann", 2, T0 + 2 * MIN, type="play", user_vars='{"role":"admin"}', url_path=""),
    ]  # fmt: skip
    EventStore(engine).write_many([IngestRecord(project, rows)])
    with engine.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT event_id, traits FROM events WHERE project_id = :p ORDER BY ts"), {"p": project}
        ).all()
    kinds = [t >> traits.KIND_SHIFT for _, t in stored]
    flags = [t & traits.FLAGS for _, t in stored]
    assert kinds == [traits.PAGE_VIEW, traits.PASSIVE, traits.INTERACTION]
    assert flags == [
        traits.URL | traits.COUNTRY | traits.BROWSER | traits.OS | traits.DEVICE,
        traits.LINKS,
        traits.LINKS,
    ]


@pytest.mark.parametrize("scan", [True, False], ids=["table-scan", "through-the-index"])
def test_values_holding_the_separators_and_both_ways_of_reading(engine, monkeypatch, scan):
    """Keys, client session ids, paths and places holding the separators the pass joins values with are read
    hex-encoded instead; a project with few of the table's rows is read through the index, one with most of
    them by a scan in storage order."""
    monkeypatch.setattr(columnar, "SCAN_SHARE", 0.0 if scan else 1.1)
    monkeypatch.setattr(columnar, "LOOKUP", 3)  # several look-up statements
    monkeypatch.setattr(columnar, "SQLITE_ROWIDS", 5)  # several scan ranges
    monkeypatch.setattr(columnar, "PG_BLOCKS", 1)
    project = ProjectStore(engine).create("separators").project.id
    neighbour = ProjectStore(engine).create("neighbour").project.id
    rng = random.Random(7)
    odd = ["plain", "with\x01row", "with\x02field", "both\x01\x02", "ünïcödé", ""]
    rows = []
    for n in range(60):
        key = rng.choice(["u:ann", "u:b\x01b", "a:c\x02c", "u:dörte"])
        rows.append(
            row(project, key, n, T0 + rng.randrange(0, 6 * 60) * MIN, type=rng.choice(["click", "page", "idle"]),
                session_hint=rng.choice(odd), url_path=rng.choice(odd), country=rng.choice(odd),
                region=rng.choice([*odd, None]), city=rng.choice([*odd, None]), browser=rng.choice(odd),
                browser_version=rng.choice(odd), os=rng.choice(odd), device_type=rng.choice(odd))
        )  # fmt: skip
    store(engine, [*rows, *(row(neighbour, "u:x", n, T0 + n * MIN) for n in range(40))])
    check(engine, project, rows)
    check(engine, ProjectStore(engine).create("empty").project.id, [])


def test_a_project_alone_in_the_table(engine, monkeypatch):
    """With no other project's events the pass reads the whole table (without counting the project's rows
    first): an empty table gives nothing, a filled one the rule's sessions."""
    monkeypatch.setattr(columnar, "SQLITE_ROWIDS", 5)
    monkeypatch.setattr(columnar, "PG_BLOCKS", 1)
    project = ProjectStore(engine).create("alone").project.id
    check(engine, project, [])
    rng = random.Random(3)
    rows = [
        row(project, rng.choice(KEYS), n, T0 + rng.randrange(0, 5 * 60) * MIN, session_hint=rng.choice(["s1", "s2"]))
        for n in range(40)
    ]
    store(engine, rows)
    check(engine, project, rows)


def test_the_connections_of_the_pass_share_one_snapshot(engine):
    """The connections the pass reads through (two on PostgreSQL) see what its caller's transaction sees,
    and none sees a commit made while it runs."""
    project = ProjectStore(engine).create("snapshot").project.id
    store(engine, [row(project, "u:ann", n, T0 + n * MIN) for n in range(5)])
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ")
        # The caller's transaction has read: its snapshot is the pass's.
        assert conn.exec_driver_sql("SELECT count(*) FROM events").scalar() == 5
        with columnar._cursors(conn) as cursors:
            store(engine, [row(project, "u:bob", n, T0 + n * MIN) for n in range(3)])
            counts = [cursor.execute("SELECT count(*) FROM events").fetchone()[0] for cursor in cursors]
    assert counts == [5] * (2 if engine.dialect.name == "postgresql" else 1)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM events").scalar() == 8


@pytest.mark.parametrize("connections", [1, 2])
def test_the_reader_runs_statements_in_order_and_passes_errors_on(connections):
    """The pass's reader answers each statement in the order asked, each connection from a thread of its
    own, the statements of a sequence spread over the connections; an error of the database reaches the
    caller."""
    databases = [sqlite3.connect(":memory:", check_same_thread=False) for _ in range(connections)]
    for i, database in enumerate(databases):
        database.execute(f"CREATE TABLE which AS SELECT {i} AS connection")
    threads: dict[int, set[str]] = {}

    def seen(i: int) -> int:
        threads.setdefault(i, set()).add(threading.current_thread().name)
        return i

    for i, database in enumerate(databases):
        database.create_function("seen", 0, lambda i=i: seen(i))
    reader = columnar._Reader([d.cursor() for d in databases], binary=False)
    try:
        squares = list(reader.ones("SELECT ? * ?, seen()", ((n, n) for n in range(20))))
        assert [r[0] for r in squares] == [n * n for n in range(20)]
        assert [r[1] for r in squares] == [n % connections for n in range(20)]
        assert all(len(names) == 1 for names in threads.values())
        assert len(set().union(*threads.values())) == connections
        assert [rows for rows in reader.alls("SELECT value FROM json_each(?)", [("[1,2]",), ("[]",)])] == [
            [(1,), (2,)],
            [],
        ]
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            list(reader.ones("SELECT * FROM missing WHERE ? = 1", [(1,), (2,)]))
        assert reader.one("SELECT connection FROM which", ()) == (0,)
    finally:
        reader.close()
        for database in databases:
            database.close()
