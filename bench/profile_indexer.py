"""What the indexer costs per event once `events` is large, and, on SQLite, which tables' pages it writes.

    .venv/bin/python bench/profile_indexer.py                          # SQLite and PostgreSQL
    .venv/bin/python bench/profile_indexer.py --databases sqlite --prefill 1000000 --events 100000
    .venv/bin/python bench/profile_indexer.py --prefill 200000 --events 40000 --busy-thread

`bench/ingest.py` reports the indexers' end-to-end rate from a live server; this script explains it. It
fills a fresh database through the server's own code (`Collector.collect`, then `EventStore.journal` and
`EventStore.index_journal`, as the writer thread and the indexer do) with `--prefill` events from
bench/ingest.py's request bodies (50 events per request, requests spread over 20,000 end users), then
journals `--events` more and times `index_journal` over them on one thread: wall and CPU µs per event.
With `--busy-thread` it times that again while another thread of the process decodes requests without
pause, as a server worker's event loop does under load: the indexer thread shares the interpreter lock with
it, and each time the database driver lets go of the lock (every step of a statement) it may wait a whole
switch interval to get it back.

Then the page accounting. SQLite: another `--events` are indexed with the write-ahead log's checkpoints
off, so that the log holds every page the indexer wrote; each frame is attributed to the table or index
owning its page (the `dbstat` table), per event. PostgreSQL: the write-ahead log's bytes per event.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import struct
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ingest.py, run as a script

import sqlalchemy as sa

import ingest
from profile_ingest import _bodies, _KeepingWriter, request_facts
from usertrail.collect.service import WALKME, Collector
from usertrail.collect.wire import decode_walkme
from usertrail.config import Settings
from usertrail.store.journal import Packed
from usertrail.web.app import build_collector

_PART = 200  # requests built and journaled at once


class _Filler:
    """Journals fresh requests (distinct events, users in the bench's order) through the server's code."""

    def __init__(self, url: str) -> None:
        self.key = ingest.prepare_database(url)
        self.collector: Collector = build_collector(Settings(database_url=url, trusted_proxies=()))
        self.keeper = _KeepingWriter()
        self.collector.writer = self.keeper  # type: ignore[assignment]
        self.requests = 0

    def journal(self, events: int) -> int:
        """Journal about `events` events (whole requests of 50), 8 requests per commit; returns the events."""
        wanted = max(1, events // ingest.EVENTS_PER_BATCH)
        done = 0
        while done < wanted:
            count = min(_PART, wanted - done)
            bodies = _bodies(self.key, count, 1_000_000 + self.requests * ingest.EVENTS_PER_BATCH, self.requests)
            asyncio.run(self._collect(bodies))
            records: list[Packed] = self.keeper.records
            for i in range(0, len(records), 8):
                self.collector.events.journal(records[i : i + 8])
            records.clear()
            self.requests += count
            done += count
        return wanted * ingest.EVENTS_PER_BATCH

    async def _collect(self, bodies: list[bytes]) -> None:
        for body in bodies:
            await self.collector.collect(request_facts(body, self.key), WALKME)

    def index(self, max_events: int) -> None:
        while self.collector.events.index_journal(max_events):
            pass


class _BusyThread:
    """Decodes a request body over and over in a thread of its own, as a server worker's event loop does under
    load: the indexer then shares the interpreter lock with it, as the server's indexer thread does."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _BusyThread:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        limits = Settings().limits
        while not self._stop.is_set():
            decode_walkme(self.body, "text/plain", limits)


def _timed(filler: _Filler, events: int, max_events: int, busy: bool = False) -> dict[str, float]:
    n = filler.journal(events)
    with _BusyThread(_bodies(filler.key, 1, 0)[0]) if busy else contextlib.nullcontext():
        wall, cpu = time.perf_counter(), time.process_time()
        filler.index(max_events)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"events": n, "wall_us": wall / n * 1e6, "cpu_us": cpu / n * 1e6, "per_s": n / wall}


def _sqlite_pages(filler: _Filler, db: Path, events: int, max_events: int) -> tuple[int, Counter]:
    """Index `events` more with checkpoints off; the log's frames by owning table or index."""
    engine = filler.collector.events.engine

    @sa.event.listens_for(engine, "connect")
    def _no_checkpoints(dbapi_connection, _record) -> None:
        dbapi_connection.execute("PRAGMA wal_autocheckpoint=0")

    engine.dispose()  # the indexer's next connections come with checkpoints off
    n = filler.journal(events)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")  # from here, the log holds the indexer's pages
    filler.index(max_events)
    with engine.connect() as conn:
        owner = dict(conn.exec_driver_sql("SELECT pageno, name FROM dbstat").fetchall())
    frames: Counter = Counter()
    with open(f"{db}-wal", "rb") as wal:
        page_size = struct.unpack(">I", wal.read(32)[8:12])[0]
        while len(header := wal.read(24)) == 24:
            frames[owner.get(struct.unpack(">I", header[:4])[0], "(free pages)")] += 1
            wal.seek(page_size, 1)
    return n, frames


def _pg_wal_bytes(filler: _Filler, events: int, max_events: int) -> tuple[int, float]:
    engine = filler.collector.events.engine
    n = filler.journal(events)
    with engine.connect() as conn:
        before = conn.exec_driver_sql("SELECT pg_current_wal_lsn()").scalar_one()
    filler.index(max_events)
    with engine.connect() as conn:
        written = conn.exec_driver_sql("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (before,)).scalar_one()
    return n, float(written) / n


def profile(name: str, url: str, db: Path | None, args: argparse.Namespace) -> None:
    """Fill one database, time the indexer on it and print what it writes (`db`: SQLite's file, else None)."""
    filler = _Filler(url)
    began = time.perf_counter()
    for done in range(0, args.prefill, 100_000):
        filler.journal(min(100_000, args.prefill - done))
        filler.index(20_000)
    print(f"\n## {name}: {args.prefill:,} events stored in {time.perf_counter() - began:.0f} s", flush=True)
    runs = [_timed(filler, args.events, args.max_events) for _ in range(args.repeat)]
    best = min(runs, key=lambda r: r["wall_us"])
    print(
        f"indexing {best['events']:,} events, {args.max_events:,} per transaction (best of {args.repeat}): "
        f"{best['wall_us']:.1f} µs per event wall, {best['cpu_us']:.1f} CPU ⇒ {best['per_s']:,.0f} events/s"
    )
    if args.busy_thread:
        sys.setswitchinterval(args.switch_interval_ms / 1000)
        busy = min(
            (_timed(filler, args.events, args.max_events, busy=True) for _ in range(args.repeat)),
            key=lambda r: r["wall_us"],
        )
        sys.setswitchinterval(0.005)
        print(
            f"beside a busy thread (switch interval {args.switch_interval_ms:g} ms): {busy['wall_us']:.1f} µs per "
            f"event wall ⇒ {busy['per_s']:,.0f} events/s"
        )
    if db is not None:
        n, frames = _sqlite_pages(filler, db, args.events, args.max_events)
        total = sum(frames.values())
        print(f"\nSQLite pages written per event: {total / n:.2f} (frames of the write-ahead log)\n")
        print("| table or index | pages per event | share |")
        print("|---|---|---|")
        for owner, count in frames.most_common(args.top):
            print(f"| {owner} | {count / n:.3f} | {count / total:.0%} |")
    else:
        n, per_event = _pg_wal_bytes(filler, args.events, args.max_events)
        print(f"PostgreSQL write-ahead log: {per_event:,.0f} bytes per event indexed")
    filler.collector.events.close()
    filler.collector.events.engine.dispose()


def main(argv: list[str] | None = None) -> int:
    """Profile the indexer on each database."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--databases", default="sqlite,postgresql")
    p.add_argument("--prefill", type=int, default=1_000_000, help="events stored before the timed run")
    p.add_argument("--events", type=int, default=100_000, help="events indexed in each timed run")
    p.add_argument("--max-events", type=int, default=2_000, help="events per indexer transaction (the server's)")
    p.add_argument("--repeat", type=int, default=2, help="timed runs (the best counts)")
    p.add_argument("--top", type=int, default=14, help="tables and indexes listed")
    p.add_argument(
        "--busy-thread", action="store_true", help="also time indexing beside a thread that decodes requests nonstop"
    )
    p.add_argument("--switch-interval-ms", type=float, default=5.0, help="sys.setswitchinterval for --busy-thread")
    args = p.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="usertrail-indexer-"))
    try:
        for name in [d.strip() for d in args.databases.split(",") if d.strip()]:
            with contextlib.ExitStack() as stack:
                if name == "postgresql":
                    from usertrail.testing.postgres import TemporaryPostgres

                    profile(name, stack.enter_context(TemporaryPostgres()), None, args)
                else:
                    db = scratch / "indexer.db"
                    profile(name, f"sqlite:///{db}", db, args)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"\n(CPU probe: {ingest.cpu_probe():.0f} M loops/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
