"""The indexer in a process of its own: one per data folder, run by whichever server worker holds the
folder's indexer lock (`USERTRAIL_INDEXER=process`, the default for server workers).

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

One indexer per data folder, not one per worker: SQLite has one writer, and two indexers only take
turns for it. Should the worker holding the lock die, its indexer sees it and stops after its current
transaction, the lock is free again, and another worker starts one. Indexers on several machines (one
PostgreSQL database) are safe side by side: their transactions take disjoint journal rows.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import multiprocessing
import multiprocessing.context
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
_RETRY_S = 1.0  # how often a worker without the lock tries again, and the pause before a restart
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
    """Holds the data folder's indexer lock when it can, and while it does keeps one indexer process
    running (restarting it should it exit); without the lock it tries again every second."""

    def __init__(self, data_dir: Path, nice: int) -> None:
        self.lock_path = data_dir / LOCK_FILE
        self.nice = nice
        self.pid: int | None = None  # of the running indexer process, if this worker runs it
        self._lock: int | None = None
        self._unlocked = False  # the lock file could not be opened (logged once)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="usertrail-indexer-process", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the indexer process after its current transaction, and free the lock."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=_STOP_TIMEOUT_S + 5)
            self._thread = None

    def _run(self) -> None:
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no copy of this worker's state
        try:
            while not self._stop.is_set():
                if not self._take_lock():
                    self._stop.wait(_RETRY_S)
                    continue
                try:
                    exitcode = self._run_child(context)
                except OSError:  # e.g. out of memory or processes: try again
                    log.exception("starting the indexer process failed")
                    exitcode = 1
                if not self._stop.is_set():
                    # 0: it was sent SIGTERM (as a service manager stopping the server sends it to every
                    # process); this worker is then likely stopping too, and closes us within the pause.
                    if exitcode:
                        log.error("the indexer process exited with %s; starting another", exitcode)
                    self._stop.wait(_RETRY_S)
        finally:
            self._free_lock()

    def _run_child(self, context: multiprocessing.context.SpawnContext) -> int | None:
        """Start the indexer process and wait for it to exit, or for `close`; its exit code."""
        child = context.Process(target=run, args=(os.getpid(), self.nice), name="usertrail-indexer")
        child.start()
        self.pid = child.pid
        try:
            while child.is_alive() and not self._stop.is_set():
                child.join(0.5)
            if child.is_alive():  # stopping: let it finish its transaction
                child.terminate()
                child.join(_STOP_TIMEOUT_S)
                if child.is_alive():
                    child.kill()
                    child.join()
            return child.exitcode
        finally:
            self.pid = None

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
