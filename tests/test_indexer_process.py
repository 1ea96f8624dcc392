"""The indexer in processes of its own (collect/indexer_process.py): one on SQLite, two on PostgreSQL, run
by the server worker that holds the data folder's lock, taken over by another worker when that one dies,
waiting while requests queue, stopped with the server; and the workers' watch-only indexer threads, which
still bound the journal."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from usertrail.collect.indexer import Indexer
from usertrail.collect.indexer_process import Saturation
from usertrail.store.database import create_engine, migrate
from usertrail.store.events import EventStore, IngestRecord
from usertrail.store.projects import ProjectStore
from usertrail.testing.postgres import free_port

import server_process
from conftest import CHROME_UA, http_client
from samples import event_row_of, now_ms, walkme_body, walkme_event


def _indexers(server_pid: int) -> list[int]:
    """The indexer processes under the server's workers (a worker's only children are its indexers)."""
    workers = [pid for pid in server_process.children(server_pid) if "spawn_main" in server_process.command_line(pid)]
    return [child for worker in workers for child in server_process.children(worker)]


def _wait_for(condition, what: str, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        assert time.monotonic() < deadline, f"waited {timeout_s:g} s for {what}"
        time.sleep(0.05)
    return result


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _mark_until(saturation: Saturation, stop: threading.Event) -> None:
    while not stop.is_set():
        saturation.mark(time.monotonic())
        stop.wait(0.002)


def _count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one()


@pytest.mark.slow
def test_one_workers_indexer_processes_store_what_every_worker_journals_and_another_worker_takes_over(
    database_url: str, tmp_path: Path
):
    engine = create_engine(database_url)
    migrate(engine)
    key = ProjectStore(engine).create("indexer").write_key
    port = free_port()
    server = server_process.start(database_url, tmp_path, port)
    start = now_ms() - 60_000
    count = 1 if engine.dialect.name == "sqlite" else 2  # one writer at a time; PostgreSQL's side by side
    try:
        with http_client(base_url=f"http://127.0.0.1:{port}", headers={"User-Agent": CHROME_UA}) as client:

            def send(first: int) -> None:
                # New connections, so that both workers answer some of them.
                for n in range(first, first + 10):
                    events = [walkme_event(time=start + n * 100 + i, data_oId=n * 10 + i) for i in range(10)]
                    response = client.post(
                        f"/event/tell?key={key}", content=walkme_body(events), headers={"Connection": "close"}
                    )
                    assert response.status_code == 200

            first = _wait_for(lambda: len(_indexers(server.pid)) == count and _indexers(server.pid), "indexers")
            assert (tmp_path / "indexer.lock").exists()
            assert len({_parent(pid) for pid in first}) == 1  # one worker runs them
            # While a worker's requests queue (here: as if), indexing waits and the journal absorbs them.
            saturated, marking = Saturation(tmp_path), threading.Event()
            marker = threading.Thread(target=_mark_until, args=(saturated, marking))
            marker.start()
            try:
                time.sleep(0.2)
                send(0)
                time.sleep(1.0)
                assert EventStore(engine).backlog().requests == 10 and _count(engine) == 0
            finally:
                marking.set()
                marker.join()
            server_process.wait_until_indexed(engine)  # by the indexer process: this test indexes nothing
            assert _count(engine) == 100
            assert _indexers(server.pid) == first  # the other worker runs none

            os.kill(_parent(first[0]), signal.SIGKILL)
            # Its indexers stop by themselves (their parent is gone), and a surviving worker starts others.
            _wait_for(lambda: not any(server_process.alive(pid) for pid in first), "the orphaned indexers to stop")
            second = _wait_for(lambda: len(_indexers(server.pid)) == count and _indexers(server.pid), "new indexers")
            assert not set(second) & set(first)
            send(10)
            server_process.wait_until_indexed(engine)
            assert _count(engine) == 200
    finally:
        server.send_signal(signal.SIGTERM)  # the supervisor alone: it stops the workers, and they their indexers
        server.wait(timeout=60)
    assert not any(server_process.alive(pid) for pid in second)
    engine.dispose()


def test_a_workers_saturation_reaches_the_indexer_process_through_the_shared_file(tmp_path: Path):
    """Two mappings of the file, as a worker and the indexer process have; a new file reads as never."""
    worker, indexer = Saturation(tmp_path), Saturation(tmp_path)
    assert indexer.last() == 0.0
    worker.mark(1234.5)
    assert indexer.last() == 1234.5 and Saturation(tmp_path).last() == 1234.5
    watching = Indexer(EventStore(create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")), index=False, saturation=worker)
    watching.arrived()
    assert indexer.last() == 1234.5  # one request in flight is not a queue
    watching.arrived()
    assert indexer.last() > 1234.5 and indexer.last() <= time.monotonic()
    for mapping in (worker, indexer):
        mapping.close()


def test_a_watching_indexer_thread_reads_the_backlog_and_leaves_the_journal_alone(engine: sa.Engine):
    """In process mode a worker's indexer thread only reads the backlog, so collection still refuses
    requests past USERTRAIL_MAX_BACKLOG_EVENTS; the indexing is the indexer process's."""
    store = EventStore(engine)
    project = ProjectStore(engine).create("watch").project
    rows = [event_row_of(project.id, "u1", f"e{i}") for i in range(6)]
    store.journal([IngestRecord(project.id, rows, [], Counter(), None)])
    indexer = Indexer(store, max_backlog=5, index=False)
    indexer.start()
    try:
        _wait_for(indexer.full, "the backlog read")
        time.sleep(0.2)  # a thread that indexed would have emptied the journal by now
    finally:
        indexer.close()
    assert indexer.backlog_events == 6 and store.backlog().requests == 1
    assert store.count(project.id) == 0
