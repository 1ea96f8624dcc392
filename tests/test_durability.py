"""An acknowledged event survives a crash: SIGKILL the server mid-stream, restart, count.

An answered request's events are durable in the ingest journal or already in `events`; after the restart
the indexer moves what the journal kept, and each event ends up in `events` exactly once."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from usertrail.store import journal
from usertrail.store.database import create_engine, migrate
from usertrail.store.events import EVENT_COLUMNS
from usertrail.store.projects import ProjectStore
from usertrail.testing.postgres import free_port

import server_process
from conftest import CHROME_UA, http_client
from samples import now_ms, walkme_body, walkme_event

pytestmark = pytest.mark.slow


# Recent events: the restarted server's start-up retention job deletes end users (and their events) whose
# sessions are older than the retention period, which would race with the re-sends below.
_START_MS = now_ms() - 3_600_000


def _batch(n: int, size: int = 20) -> list[dict]:
    base = _START_MS + n * 1000
    return [walkme_event(time=base + i, data_oId=n * size + i) for i in range(size)]


_OBJECT_ID = EVENT_COLUMNS.index("object_id")


def test_acknowledged_events_survive_sigkill(database_url: str, tmp_path: Path):
    engine = create_engine(database_url)
    migrate(engine)
    key = ProjectStore(engine).create("durability").write_key
    port = free_port()
    server = server_process.start(database_url, tmp_path, port)
    acknowledged: list[int] = []
    attempted: list[int] = []
    stop = threading.Event()

    def stream(worker: int) -> None:
        with http_client(base_url=f"http://127.0.0.1:{port}", headers={"User-Agent": CHROME_UA}) as client:
            n = worker
            while not stop.is_set():
                attempted.append(n)
                try:
                    response = client.post(f"/event/tell?key={key}", content=walkme_body(_batch(n)), timeout=5)
                except httpx.HTTPError:
                    return  # the server is gone: this batch was never acknowledged
                if response.status_code == 200:
                    acknowledged.append(n)
                n += 4

    threads = [threading.Thread(target=stream, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    while len(acknowledged) < 40:
        time.sleep(0.01)
    os.killpg(server.pid, signal.SIGKILL)
    server.wait()
    stop.set()
    for t in threads:
        t.join()

    def counts(with_journal: bool = True) -> dict[str, int]:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT object_id, count(*) FROM events GROUP BY object_id")).all()
            blobs = conn.execute(sa.text("SELECT record FROM ingest_journal")).scalars().all()
            # SQLite: rows of the journal file stored just before the kill, not yet deleted from it.
            marked = {tuple(r) for r in conn.execute(sa.text("SELECT project_id, id FROM journal_indexed"))}
        file = journal.file_of(engine)
        if file is not None:
            with file.connect() as conn:
                kept = conn.execute(sa.text("SELECT project_id, id, record FROM ingest_journal")).all()
            blobs += [record for project_id, id_, record in kept if (project_id, id_) not in marked]
        found = {r[0]: r[1] for r in rows}
        for blob in blobs if with_journal else []:
            for row in journal.decode(blob).events:
                found[row[_OBJECT_ID]] = found.get(row[_OBJECT_ID], 0) + 1
        return found

    stored = counts()
    expected = {str(n * 20 + i) for n in acknowledged for i in range(20)}
    assert expected <= set(stored), f"{len(expected - set(stored))} acknowledged events were lost"
    assert all(c == 1 for c in stored.values())
    # A batch may be committed with its answer lost in the kill: kept, but it must be one that was sent.
    assert set(stored) <= {str(n * 20 + i) for n in attempted for i in range(20)}
    before_restart = set(stored)

    server = server_process.start(database_url, tmp_path, port)
    try:
        # The restarted server's indexers, not this test, move what the journal kept: nothing lost or doubled.
        server_process.wait_until_indexed(engine)
        indexed = counts(with_journal=False)
        assert set(indexed) == before_restart and all(c == 1 for c in indexed.values())
        # Clients re-send what was not acknowledged (and some that was): still once each.
        sent = range(max(acknowledged) + 4)
        with http_client(base_url=f"http://127.0.0.1:{port}", headers={"User-Agent": CHROME_UA}) as client:
            for n in sent:
                assert client.post(f"/event/tell?key={key}", content=walkme_body(_batch(n))).status_code == 200
        server_process.wait_until_indexed(engine)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    stored = counts(with_journal=False)
    assert set(stored) == {str(n * 20 + i) for n in sent for i in range(20)} | before_restart
    assert all(c == 1 for c in stored.values())
    engine.dispose()
