"""The ingest journal: a request is answered once its events are journaled; the indexer stores them in bulk,
exactly once, whichever process or thread indexes them (store/journal.py, collect/indexer.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from usertrail.collect.writer import GroupCommitWriter
from usertrail.store import journal
from usertrail.store.database import create_engine, migrate, write_transaction
from usertrail.store.events import EVENT_COLUMNS, EventStore, IngestRecord
from usertrail.store.projects import ProjectStore
from usertrail.store.users import UserStore
from usertrail.testing.postgres import TemporaryPostgres

from conftest import CHROME_UA, LiveServer
from samples import event_row_of, now_ms, walkme_body, walkme_event


def _tell(live: LiveServer, events: list[dict]) -> httpx.Response:
    """Sent as a browser would, without the test client's wait for indexing."""
    with httpx.Client(base_url=live.base_url, headers={"User-Agent": CHROME_UA}) as client:
        return client.post(f"/event/tell?key={live.project.write_key}", content=walkme_body(events))


def _stats(live: LiveServer) -> dict:
    with live.admin() as admin:
        return admin.get(f"/api/projects/{live.project.project.id}/stats").json()


def test_an_answered_request_is_journaled_until_the_indexer_stores_it(live):
    live.app.state.collector.indexer.close()  # this test indexes by hand, at the moments it checks
    events = [walkme_event(time=now_ms() - i, data_oId=i) for i in range(3)]
    response = _tell(live, events)
    assert response.status_code == 200 and response.text == "ok"
    stats = _stats(live)
    assert stats["events"] == 0
    assert stats["ingest_backlog"]["requests"] == 1 and stats["ingest_backlog"]["events"] == 3
    assert stats["ingest_backlog"]["oldest_received_at"] <= now_ms()

    live.index()
    assert _stats(live) == {"events": 3, "ingest_backlog": {"requests": 0, "events": 0, "oldest_received_at": None}}
    assert live.scalar("SELECT count(*) FROM security_log") == 1
    assert live.scalar("SELECT count(*) FROM pending_users") == 1

    # A re-send is accepted again; indexing recognises it and counts it as duplicates.
    assert _tell(live, events).status_code == 200
    live.index()
    assert live.scalar("SELECT count(*) FROM events") == 3
    assert live.scalar("SELECT sum(count) FROM drop_counts WHERE reason = 'duplicate'") == 3


def test_the_server_indexes_journaled_requests_by_itself(live):
    events = [walkme_event(time=now_ms() - i, data_oId=i) for i in range(5)]
    assert _tell(live, events).status_code == 200
    deadline = time.monotonic() + 30
    while _stats(live)["ingest_backlog"]["requests"]:
        assert time.monotonic() < deadline, "the indexer thread never emptied the journal"
        time.sleep(0.02)
    assert live.scalar("SELECT count(*) FROM events") == 5


def test_concurrent_indexers_store_each_request_exactly_once(engine):
    """Three indexers race over 60 journaled requests (PostgreSQL: row locks; SQLite: the write lock)."""
    project = ProjectStore(engine).create("p").project
    store = EventStore(engine)
    records = []
    for n in range(60):
        # Every request re-sends one event of the one before: 60 requests, 3 new events each after the first.
        rows = [event_row_of(project.id, f"u:{n % 7}", f"e{n}-{i}") for i in range(3)]
        if n:
            rows.append(event_row_of(project.id, f"u:{(n - 1) % 7}", f"e{n - 1}-0"))
        records.append(IngestRecord(project.id, events=rows, drops=Counter({("production", "bot"): 1})))
    store.journal(records)
    assert store.backlog(project.id) == journal.Backlog(60, 60 * 4 - 1, store.backlog().oldest_received_at)

    moved: list[int] = []
    errors: list[BaseException] = []

    def index() -> None:
        try:
            while n := store.index_journal(max_events=100):  # two requests per transaction
                moved.append(n)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=index) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sum(moved) == 60 and store.backlog() == journal.Backlog(0, 0, None)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM events")).scalar() == 180
        drops = dict(conn.execute(sa.text("SELECT reason, sum(count) FROM drop_counts GROUP BY reason")).all())
    assert drops == {"bot": 60, "duplicate": 59}


def test_requests_journaled_before_the_client_columns_are_indexed_after_the_upgrade(engine):
    """A journal row written by a server from before migration 0034 (rows without its six client columns)
    and indexed by an upgraded one: stored whole, with NULL in the new columns."""
    project = ProjectStore(engine).create("p").project
    store = EventStore(engine)
    new = event_row_of(project.id, "u:1", "new")
    old = event_row_of(project.id, "u:1", "old")
    at = EVENT_COLUMNS.index("screen_width")
    old = (*old[:at], *old[at + 6 :])
    assert EVENT_COLUMNS[at + 6] == "payload" and len(old) == len(EVENT_COLUMNS) - 6
    new = (*new[:at], 1280, 720, -60, False, "lib-1", "pe-1", new[at + 6])
    store.journal([IngestRecord(project.id, events=[old]), IngestRecord(project.id, events=[new])])
    assert store.index_all() == 2
    with engine.connect() as conn:
        stored = conn.execute(
            sa.text(
                "SELECT event_id, screen_width, screen_height, tz_offset, in_iframe, lib_version, pe_version, "
                "payload, type FROM events ORDER BY event_id"
            )
        ).all()
    assert [tuple(r) for r in stored] == [
        ("new", 1280, 720, -60, False, "lib-1", "pe-1", "{}", "track"),
        ("old", None, None, None, None, None, None, "{}", "track"),
    ]


_values = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=30))


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.tuples(_values, _values, _values), max_size=5),
    rejected=st.lists(st.dictionaries(st.text(max_size=5), _values, max_size=3), max_size=2),
    drops=st.lists(st.tuples(st.text(max_size=5), st.text(max_size=5), st.integers(0, 10**9)), max_size=3),
)
def test_a_journal_record_reads_back_as_written(rows, rejected, drops):
    record = journal.JournalRecord(7, rows, rejected, drops, None)
    again = journal.decode(journal.row_of(journal.pack(record, "0000000000001-a", 1))[4])
    assert again == record
    pairs = [pair for row, back in zip(rows, again.events, strict=True) for pair in zip(row, back, strict=True)]
    assert all(type(a) is type(b) for a, b in pairs)


def test_erasing_an_end_user_also_erases_their_events_still_in_the_journal(engine):
    project = ProjectStore(engine).create("p").project
    store = EventStore(engine)
    store.write_many([IngestRecord(project.id, events=[event_row_of(project.id, "u:x", "e1")])])
    store.journal(
        [
            IngestRecord(
                project.id, events=[event_row_of(project.id, "u:x", "e2"), event_row_of(project.id, "u:y", "e3")]
            )
        ]
    )
    assert UserStore(engine).delete(project.id, "u:x")["events"] == 2
    assert store.backlog() == journal.Backlog(0, 0, None)
    with engine.connect() as conn:
        left = conn.execute(sa.text("SELECT user_key, event_id FROM events")).all()
    assert [tuple(r) for r in left] == [("u:y", "e3")]


def _journal_ids(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return [r[0] for r in conn.exec_driver_sql("SELECT id FROM ingest_journal ORDER BY id")]


def test_journal_appends_are_committed_one_statement_each_and_survive_a_failed_one(engine):
    """The writer's held connection commits each append by itself (another connection sees it at once);
    a failed append writes none of its rows, and the next one reconnects and is stored."""
    project = ProjectStore(engine).create("p").project
    appender = journal.Appender(engine)
    try:
        appender.append([(project.id, "0001-a", 1, 1, b"x"), (project.id, "0002-a", 2, 1, b"y")])
        assert _journal_ids(engine) == ["0001-a", "0002-a"]
        # A key already journaled: the statement fails as a whole.
        with pytest.raises(engine.dialect.dbapi.IntegrityError):
            appender.append([(project.id, "0003-a", 3, 1, b"z"), (project.id, "0001-a", 1, 1, b"x")])
        assert _journal_ids(engine) == ["0001-a", "0002-a"]
        appender.append([(project.id, "0004-a", 4, 1, b"w")])
        assert _journal_ids(engine) == ["0001-a", "0002-a", "0004-a"]
        with pytest.raises(ValueError, match="at most"):
            appender.append([(project.id, f"x{i}", i, 1, b"") for i in range(journal.Appender.MAX_ROWS + 1)])
    finally:
        appender.close()
    # The held connection left the pool: pooled connections still roll back what they did not commit.
    with engine.connect() as conn:
        conn.exec_driver_sql("DELETE FROM ingest_journal")
        conn.rollback()
    assert len(_journal_ids(engine)) == 3


def test_the_group_commit_writer_journals_more_requests_than_one_statement_holds(engine):
    """1,500 one-event requests waiting at once: the writer splits them into commits of at most
    `Appender.MAX_ROWS` requests, and every request is answered once its own row is durable."""
    project = ProjectStore(engine).create("p").project
    store = EventStore(engine)
    # The writer waits 200 ms after the first request before taking the others: all of them are queued by then.
    writer = GroupCommitWriter(store, commit_delay_ms=200)

    async def send_all() -> None:
        records = [IngestRecord(project.id, events=[event_row_of(project.id, f"u:{n}", f"e{n}")]) for n in range(1_500)]
        await asyncio.gather(*(writer.write(record.pack()) for record in records))

    try:
        # In a thread of its own: a browser test earlier in the run may leave an event loop running in this one.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, send_all()).result()
    finally:
        writer.close()
    assert store.backlog(project.id) == journal.Backlog(1_500, 1_500, store.backlog().oldest_received_at)


def test_a_journal_connection_the_server_closed_while_idle_is_replaced_before_the_next_append(engine, request):
    """PostgreSQL ends the writer's idle connection (a restart, a timeout, an administrator): the next group is
    still journaled, on a new connection."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite connections are files: nothing can close them from outside")
    project = ProjectStore(engine).create("p").project
    admin = request.getfixturevalue("postgres_admin")

    def appender_pids() -> list[int]:
        with admin.connect() as conn:
            sql = "SELECT pid FROM pg_stat_activity WHERE datname = %s AND query LIKE %s"
            return [r[0] for r in conn.exec_driver_sql(sql, (engine.url.database, "INSERT INTO ingest_journal%"))]

    appender = journal.Appender(engine, idle_check_s=0.0)
    try:
        appender.append([(project.id, "0001-a", 1, 1, b"x")])
        [pid] = appender_pids()
        with admin.connect() as conn:
            assert conn.exec_driver_sql("SELECT pg_terminate_backend(%s)", (pid,)).scalar()
        time.sleep(0.2)
        appender.append([(project.id, "0002-a", 2, 1, b"y")])
        assert appender_pids() not in ([], [pid])
    finally:
        appender.close()
    assert _journal_ids(engine) == ["0001-a", "0002-a"]


def test_requests_indexed_just_before_a_postgresql_crash_are_all_in_events_once_after_it():
    """The indexer's transactions commit without waiting for the WAL flush (PostgreSQL). A crash that loses
    one loses the journal rows' removal with it: after the restart every journaled event is in `events`
    exactly once, whether the crash came before or after the flush. Its own cluster: this one is crashed."""
    # The WAL writer flushes at most every 10 s: the crash below most likely comes before it has.
    pg = TemporaryPostgres({"wal_writer_delay": "10000ms"})
    url = pg.start()
    try:
        engine = create_engine(url)
        migrate(engine)
        project = ProjectStore(engine).create("p").project
        store = EventStore(engine)
        store.journal(
            [IngestRecord(project.id, events=[event_row_of(project.id, f"u:{n}", f"e{n}")]) for n in range(10)]
        )
        assert store.index_journal(max_events=6) > 0
        with engine.connect() as conn:
            flushed = conn.exec_driver_sql("SELECT pg_current_wal_flush_lsn() >= pg_current_wal_insert_lsn()").scalar()
        engine.dispose()
        pg.crash_and_restart()
        store.index_all()
        with engine.connect() as conn:
            ids = conn.execute(sa.text("SELECT event_id FROM events ORDER BY event_id")).scalars().all()
        assert ids == sorted(f"e{n}" for n in range(10)), f"WAL flushed before the crash: {flushed}"
        assert store.backlog() == journal.Backlog(0, 0, None)
        engine.dispose()
    finally:
        pg.stop()


def test_sqlite_journal_appends_do_not_wait_for_a_transaction_on_the_database(engine):
    """SQLite keeps the journal in a file of its own: a request is journaled while an indexer (here, a test
    transaction) holds the database's write lock, instead of waiting for it to end."""
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL's journal is a table of the database: row locks, no file lock to share")
    project = ProjectStore(engine).create("p").project
    store = EventStore(engine)
    assert journal.file_of(engine) is not None
    appended = threading.Event()

    def append() -> None:
        store.journal([IngestRecord(project.id, events=[event_row_of(project.id, "u:a", "e1")])])
        appended.set()

    with write_transaction(engine):
        thread = threading.Thread(target=append)
        thread.start()
        # Before the file, this append waited for the lock, until this transaction's end or the 30-s timeout.
        assert appended.wait(20), "the journal append waited for the database's write lock"
    thread.join()
    store.index_all()
    assert store.count(project.id) == 1 and store.backlog() == journal.Backlog(0, 0, None)


def test_requests_stored_but_left_in_the_sqlite_journal_file_by_a_crash_are_not_stored_twice(engine, monkeypatch):
    """The indexer commits the stored records with marks, then deletes the rows from the journal file. A
    crash between the two leaves the rows in the file: the next indexer deletes them instead of storing
    their events, drop tallies and security-log entries a second time."""
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL's journal rows leave in the transaction that stores them")
    project = ProjectStore(engine).create("p").project
    store = EventStore(engine)
    security = {
        "project_id": project.id,
        "id": "0000000000001-a",
        "ts": 1,
        "ip": "203.0.113.9",
        "user_agent": None,
        "path": "/event/tell",
        "events": 1,
        "status": 200,
    }
    store.journal(
        [
            IngestRecord(
                project.id, events=[event_row_of(project.id, "u:a", "e1")], drops=Counter({("production", "bot"): 2})
            ),
            IngestRecord(project.id, events=[event_row_of(project.id, "u:b", "e2")], security=security),
        ]
    )

    def crash(file, keys):
        raise OSError("killed before the journal file was updated")

    with monkeypatch.context() as patch:
        patch.setattr(journal, "remove_from_file", crash)
        with pytest.raises(OSError):
            store.index_journal()
    assert store.count(project.id) == 2
    assert store.backlog().requests == 2  # still in the file, marked as stored

    # A later journaled request: indexed normally, after the marked rows are deleted.
    store.journal([IngestRecord(project.id, events=[event_row_of(project.id, "u:c", "e3")])])
    store.index_all()
    assert store.count(project.id) == 3 and store.backlog() == journal.Backlog(0, 0, None)
    with engine.connect() as conn:
        assert dict(conn.execute(sa.text("SELECT reason, sum(count) FROM drop_counts GROUP BY reason")).all()) == {
            "bot": 2
        }
        assert conn.execute(sa.text("SELECT count(*) FROM security_log")).scalar() == 1
        assert conn.execute(sa.text("SELECT count(*) FROM journal_indexed")).scalar() == 0


def test_requests_journaled_in_the_database_itself_are_still_indexed(engine):
    """Rows in the database's own `ingest_journal`: always on PostgreSQL; on SQLite, those a server journaled
    before the journal had its own file. Both kinds are indexed, each once."""
    project = ProjectStore(engine).create("p").project
    store = EventStore(engine)
    old = journal.JournalRecord(project.id, [event_row_of(project.id, "u:a", "e1")], [], [], None)
    appender = journal.Appender(engine)
    try:
        appender.append([journal.row_of(journal.pack(old, "0000000000001-a", 1))])
    finally:
        appender.close()
    store.journal([IngestRecord(project.id, events=[event_row_of(project.id, "u:b", "e2")])])
    assert store.backlog().requests == 2
    store.index_all()
    assert store.count(project.id) == 2 and store.backlog() == journal.Backlog(0, 0, None)


def test_collection_answers_503_while_the_journal_is_over_its_bound_and_keeps_nothing_of_those_requests(
    make_server,
):
    """Answers do not wait for indexing; an overload that lasts is bounded by USERTRAIL_MAX_BACKLOG_EVENTS:
    past it, requests are refused with 503 and Retry-After (the snippet retries on 5xx), and accepted again
    once the indexers have caught up."""
    live = make_server(max_backlog_events=6)
    indexer = live.app.state.collector.indexer
    indexer.close()  # this test reads the backlog and indexes at the moments it checks
    events = [walkme_event(time=now_ms() - i, data_oId=i) for i in range(3)]
    for n in range(2):
        assert _tell(live, [{**e, "sId": f"s{n}"} for e in events]).status_code == 200
    indexer.refresh_backlog()
    assert indexer.backlog_events == 6 and indexer.full()

    refused = _tell(live, events)
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
    error = refused.json()
    assert error["error"] == "request_refused" and error["path"] == "$"
    assert "USERTRAIL_MAX_BACKLOG_EVENTS=6" in error["reason"]
    with httpx.Client(base_url=live.base_url, headers={"User-Agent": CHROME_UA}) as client:
        batch = {"batch": [{"type": "track", "event": "x", "anonymousId": "a1", "messageId": "m1"}]}
        assert client.post(f"/v1/batch?key={live.project.write_key}", json=batch).status_code == 503
    assert _stats(live)["ingest_backlog"]["requests"] == 2  # the refused requests left nothing

    live.index()
    indexer.refresh_backlog()
    assert not indexer.full()
    assert _tell(live, events).status_code == 200
    live.index()
    assert live.scalar("SELECT count(*) FROM events") == 9
