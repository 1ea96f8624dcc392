"""The indexer in processes of its own, run by whichever server worker holds the data folder's indexer
lock (`USERTRAIL_INDEXER=process`, the default for server workers).

As a thread of a worker, the indexer shares that worker's interpreter lock with collection. sqlite3
releases the lock at every step of a statement, and each row of a batch insert is a step, so beside a
thread that decodes requests nonstop a transaction's rows took 96 times longer on SQLite (3 times on
PostgreSQL) than alone (docs/benchmarks.md, `bench/profile_indexer.py --busy-thread`). In a process of
its own the indexer competes for CPU only, and at a lower priority (`nice`), so a load that leaves a core
idle is indexed as it comes. A burst that fills the cores is answered first and indexed as it subsides:
while any worker's requests queue (the workers mark it in a small shared file, `Saturation`), the indexer
waits, for at most `USERTRAIL_INDEX_DELAY_S` since the journal was last empty. The priority alone is not
enough on PostgreSQL, where most of the indexer's work is done by its database server process, at the
database's priority (2 workers' full pipeline fell from 55% to 33% of the ceiling, docs/benchmarks.md).

Indexers per data folder, not per worker: one on SQLite, which has one writer (two would only take
turns for it); two on PostgreSQL, whose indexers store side by side (`USERTRAIL_INDEXER_PROCESSES`).
Should the worker holding the lock die, its indexers see it and stop after their current transaction,
the lock is free again, and another worker starts new ones. Indexers on several machines (one
PostgreSQL database) are safe side by side too: their transactions take disjoint journal rows.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import multiprocessing
import multiprocessing.process
import os
import signal
import struct
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_FILE = "indexer.lock"
SATURATION_FILE = "collection-saturated"
# How long the indexer rests when the journal was empty: the most an event waits before it is indexed
# when the server is idle. A round on an empty journal is one indexed read.
_POLL_S = 0.05
_RETRY_S = 1.0  # how often a worker tries for the lock, or, holding it, checks its indexer processes
_STOP_TIMEOUT_S = 30.0
_SLOT = struct.Struct("d")


class Saturation:
    """When collection was last saturated in any server worker of a data folder: one 8-byte slot of a
    shared, memory-mapped file, in CLOCK_MONOTONIC seconds (one clock for every process of the machine).
    Workers write it, the indexer process reads it; an aligned 8-byte store is never seen half-written."""

    def __init__(self, data_dir: Path) -> None:
        path = data_dir / SATURATION_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < _SLOT.size:
                os.ftruncate(fd, _SLOT.size)
            self._map = mmap.mmap(fd, _SLOT.size)
        finally:
            os.close(fd)

    def mark(self, now: float) -> None:
        """Collection is saturated at `now` (time.monotonic())."""
        _SLOT.pack_into(self._map, 0, now)

    def last(self) -> float:
        return _SLOT.unpack_from(self._map, 0)[0]

    def close(self) -> None:
        self._map.close()


class IndexerProcess:
    """Holds the data folder's indexer lock when it can, and while it does keeps `processes` indexer
    processes running (restarting one that exits); without the lock it tries again every second."""

    def __init__(self, data_dir: Path, nice: int, processes: int = 1) -> None:
        self.lock_path = data_dir / LOCK_FILE
        self.nice = nice
        self.processes = processes
        self._lock: int | None = None
        self._unlocked = False  # the lock file could not be opened (logged once)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="usertrail-indexer-process", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the indexer processes after their current transactions, and free the lock."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=_STOP_TIMEOUT_S + 5)
            self._thread = None

    def _run(self) -> None:
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no copy of this worker's state
        children: list[multiprocessing.process.BaseProcess] = []
        try:
            while not self._stop.is_set():
                if not self._take_lock():
                    self._stop.wait(_RETRY_S)
                    continue
                for child in [c for c in children if not c.is_alive()]:
                    children.remove(child)
                    # 0: it was sent SIGTERM (as a service manager stopping the server sends it to every
                    # process); this worker is then likely stopping too, and stops the replacement.
                    if child.exitcode:
                        log.error("an indexer process exited with %s; starting another", child.exitcode)
                try:
                    while len(children) < self.processes:
                        child = context.Process(target=run, args=(os.getpid(), self.nice), name="usertrail-indexer")
                        child.start()
                        children.append(child)
                except OSError:  # e.g. out of memory or processes: the next round tries again
                    log.exception("starting an indexer process failed")
                self._stop.wait(_RETRY_S)
        finally:
            _stop_all(children)
            self._free_lock()

    def _take_lock(self) -> bool:
        if self._lock is not None:
            return True
        try:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            # Indexers are safe side by side, so a folder that cannot hold the lock only costs the
            # workers' taking turns: each runs an indexer process.
            if not self._unlocked:
                log.warning("no indexer lock at %s (%s): this worker runs an indexer process too", self.lock_path, exc)
                self._unlocked = True
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock = fd
        return True

    def _free_lock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor releases the lock
            self._lock = None


def _stop_all(children: list[multiprocessing.process.BaseProcess]) -> None:
    """SIGTERM each (it finishes its transaction), wait, then kill what is left."""
    for child in children:
        if child.is_alive():
            child.terminate()
    deadline = time.monotonic() + _STOP_TIMEOUT_S
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            child.kill()
            child.join()


def run(parent_pid: int, nice: int) -> None:
    """The indexer process: index the journal until SIGTERM or until `parent_pid` is gone (its worker
    died, and with it the lock). Settings come from the USERTRAIL_* variables the worker was started with."""
    from usertrail.collect.indexer import BUSY_S, max_events_for
    from usertrail.config import Settings
    from usertrail.gc_tuning import tune_garbage_collection
    from usertrail.store.database import create_engine
    from usertrail.store.events import EventStore

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # A Ctrl-C at the terminal reaches the whole process group; the worker stops us in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(nice)
    settings = Settings.from_env()
    engine = create_engine(settings.resolved_database_url)
    store = EventStore(engine)
    max_events = max_events_for(engine)
    saturation = Saturation(settings.data_dir)
    tune_garbage_collection()
    last_empty = time.monotonic()
    try:
        while not stop.is_set() and os.getppid() == parent_pid:
            now = time.monotonic()
            if now - saturation.last() < BUSY_S and now - last_empty < settings.index_delay_s:
                stop.wait(BUSY_S)
                continue
            try:
                moved = store.index_journal(max_events)
            except Exception:  # e.g. the database was briefly unreachable: the rows stay journaled
                log.exception("indexing the ingest journal failed")
                stop.wait(_RETRY_S)
                continue
            if not moved:
                last_empty = time.monotonic()
                stop.wait(_POLL_S)
    finally:
        saturation.close()
        store.close()
        engine.dispose()
