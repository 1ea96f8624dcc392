"""The indexer: moves journaled requests into `events` and the side tables, in bulk, in the background.

Collection answers once a request's row is in the ingest journal (store/journal.py); this thread then
stores the journaled records many requests at a time, so the costly part of storing an event (its row
and indexes in `events`, the reports' rollup, the session loop's pending marks) is paid in large
transactions off the request's path. With `USERTRAIL_INDEXER=thread` every server process runs one; by
default the indexing is done by a process of its own (collect/indexer_process.py) and the workers' threads
only read the backlog. Indexers' transactions take disjoint journal rows, and rows left by a process that
died are taken by whichever indexer comes next.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

import sqlalchemy as sa

from usertrail.store.events import EventStore

if TYPE_CHECKING:
    from usertrail.collect.indexer_process import Saturation

log = logging.getLogger(__name__)

BUSY_S = 0.02  # requests queued this recently: collection is saturated
_BACKLOG_READ_S = 1.0
# Events per indexing transaction, at most (a transaction takes what the journal holds, usually far less).
# SQLite's indexers take turns for one write lock, and each transaction pays a commit, a settle and the
# rollup's totals: draining a backlog, 10,000 stored 13,000–15,700 events/s against 9,200–9,400 for 2,000
# (docs/benchmarks.md, session 24; beside collection the difference was within that day's noise).
# Journal appends do not wait for it; the session loop and admin writes wait up to about a second.
# PostgreSQL's indexers run side by side: 2,000.
_MAX_EVENTS = {"sqlite": 10_000, "postgresql": 2_000}


def max_events_for(engine: sa.Engine) -> int:
    """Events per indexing transaction, at most, on `engine`'s database."""
    return _MAX_EVENTS[engine.dialect.name]


class Indexer:
    """Indexes the journal from a daemon thread: at once after each journal commit, else every `idle_s`.
    With `index=False` the thread only reads the backlog (the indexer runs in a process of its own,
    collect/indexer_process.py), so that collection still refuses requests past `max_backlog`, and
    `saturation` passes this process's saturation on to that indexer.

    While this process's collection is saturated (requests are queueing: more than one is between arrival
    and answer, now or under `BUSY_S` ago; the collector keeps `in_flight`), indexing waits, for at most
    `delay_s` since the journal was last empty: a burst is then answered at the speed of journaling alone,
    and indexed as it subsides. A longer overload has the indexer run alongside collection again.

    Answers do not wait for indexing (the journal is a queue of its own, store/journal.py), so an overload
    that lasts grows the backlog. Past `max_backlog` events (0: no bound) collection refuses requests for
    a while (`full`, HTTP 503; clients retry later), so the journal's disk and the delay before events
    show stay bounded. The thread reads the backlog at most once a second.
    """

    def __init__(
        self,
        store: EventStore,
        max_events: int | None = None,
        idle_s: float = 0.5,
        delay_s: float = 0.0,
        max_backlog: int = 0,
        index: bool = True,
        saturation: Saturation | None = None,
    ) -> None:
        self.store = store
        self.max_events = max_events or max_events_for(store.engine)
        self.index = index
        self.saturation = saturation  # shared with the indexer process, if there is one
        self.idle_s = idle_s
        self.delay_s = delay_s
        self.max_backlog = max_backlog
        self.backlog_events = 0  # as last read by `refresh_backlog`
        self._backlog_read_at = 0.0
        self.in_flight = 0  # collection requests of this process being handled (Collector.collect)
        self._saturated_at = 0.0
        self._last_empty = time.monotonic()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None and (self.index or self.max_backlog):
            self._thread = threading.Thread(target=self._run, name="usertrail-indexer", daemon=True)
            self._thread.start()

    def notify(self) -> None:
        """New rows are in the journal (called by the group-commit writer after each commit)."""
        self._wake.set()

    def arrived(self) -> None:
        """A collection request arrived (the collector calls `left` when it is answered)."""
        self.in_flight += 1
        if self.in_flight > 1:
            self._saturated()

    def left(self) -> None:
        self.in_flight -= 1
        if self.in_flight > 1:
            self._saturated()

    def _saturated(self) -> None:
        self._saturated_at = time.monotonic()
        if self.saturation is not None:
            self.saturation.mark(self._saturated_at)

    def full(self) -> bool:
        """Whether the journal held `max_backlog` events or more when last read: refuse new requests."""
        return 0 < self.max_backlog <= self.backlog_events

    def refresh_backlog(self) -> None:
        """Read the journal's backlog (every project's: they share the indexers and the disk)."""
        self.backlog_events = self.store.backlog().events
        self._backlog_read_at = time.monotonic()

    def drain(self) -> int:
        """Index everything journaled so far from the calling thread, waiting for rows other indexers are
        storing; on return all of it is in `events`. Returns the requests this call indexed."""
        return self.store.index_all(self.max_events)

    def close(self) -> None:
        """Stop the thread after its current transaction; what is left stays journaled for the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            if self.max_backlog and now - self._backlog_read_at >= _BACKLOG_READ_S:
                try:
                    self.refresh_backlog()
                except Exception:  # as below: the next read may succeed
                    log.exception("reading the ingest journal's backlog failed")
                    self._backlog_read_at = now
            if not self.index:
                self._stop.wait(_BACKLOG_READ_S)
                continue
            saturated = self.in_flight > 1 or now - self._saturated_at < BUSY_S
            if saturated and now - self._last_empty < self.delay_s:
                self._stop.wait(BUSY_S)
                continue
            try:
                moved = self.store.index_journal(self.max_events)
            except Exception:  # e.g. the database was briefly unreachable: the rows stay journaled
                log.exception("indexing the ingest journal failed")
                moved = 0
            if not moved:
                self._last_empty = time.monotonic()
                self._wake.wait(self.idle_s)
                self._wake.clear()
