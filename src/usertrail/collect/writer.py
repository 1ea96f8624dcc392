"""Group commit: requests hand their records to one writer thread, which journals them together.

One transaction (and one fsync) then covers every request that arrived while the previous
commit was running, so throughput grows with load while each answer still waits for its own
data to be durable in the ingest journal (store/journal.py); the indexer (collect/indexer.py),
told after each commit, stores them into `events`.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable

from usertrail.store.events import EventStore
from usertrail.store.journal import Appender, Packed

log = logging.getLogger(__name__)

_MAX_ROWS_PER_COMMIT = 5_000


class GroupCommitWriter:
    """Journals packed records (`IngestRecord.pack`) in batches from a dedicated thread, compressing them there;
    calls `on_commit` after each commit."""

    def __init__(
        self, store: EventStore, commit_delay_ms: float = 0.0, on_commit: Callable[[], None] = lambda: None
    ) -> None:
        self.store = store
        self.on_commit = on_commit
        self.commit_delay = commit_delay_ms / 1000
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="usertrail-writer", daemon=True)
        self._started = False
        self._lock = threading.Lock()

    async def write(self, record: Packed) -> None:
        """Wait until `record` is durable in the journal; raises if the commit failed."""
        self._ensure_started()
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._queue.put((record, loop, future))
        return await future

    def close(self) -> None:
        if self._started:
            self._queue.put(None)
            self._thread.join(timeout=10)
        self.store.close()

    def _ensure_started(self) -> None:
        if not self._started:
            with self._lock:
                if not self._started:
                    self._thread.start()
                    self._started = True

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            pending = [first]
            if self.commit_delay:
                time.sleep(self.commit_delay)
            rows = first[0].events
            stop = False
            while rows < _MAX_ROWS_PER_COMMIT and len(pending) < Appender.MAX_ROWS:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                pending.append(item)
                rows += item[0].events
            self._commit(pending)
            if stop:
                return

    def _commit(self, pending: list) -> None:
        try:
            self.store.journal([record for record, _, _ in pending])
        except Exception as exc:  # every waiting request must hear about the failure
            log.exception("commit of %d requests failed", len(pending))
            for _, loop, future in pending:
                loop.call_soon_threadsafe(_set_exception, future, exc)
            return
        for _, loop, future in pending:
            loop.call_soon_threadsafe(_set_result, future)
        self.on_commit()


def _set_result(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _set_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
