"""Group commit: requests hand their records to one writer thread, which commits them together.

One transaction (and one fsync) then covers every request that arrived while the previous
commit was running, so throughput grows with load while each answer still waits for its own
data to be durable.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time

from usertrail.store.events import EventStore, IngestRecord, WriteOutcome

log = logging.getLogger(__name__)

_MAX_ROWS_PER_COMMIT = 5_000


class GroupCommitWriter:
    """Commits `IngestRecord`s in batches from a dedicated thread."""

    def __init__(self, store: EventStore, commit_delay_ms: float = 0.0) -> None:
        self.store = store
        self.commit_delay = commit_delay_ms / 1000
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="usertrail-writer", daemon=True)
        self._started = False
        self._lock = threading.Lock()

    async def write(self, record: IngestRecord) -> WriteOutcome:
        """Wait until `record` is committed; raises if the commit failed."""
        self._ensure_started()
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._queue.put((record, loop, future))
        return await future

    def write_sync(self, record: IngestRecord) -> WriteOutcome:
        """Commit one record from a non-async caller (CLI, re-processing)."""
        return self.store.write_many([record])[0]

    def close(self) -> None:
        if self._started:
            self._queue.put(None)
            self._thread.join(timeout=10)

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
            rows = len(first[0].events)
            stop = False
            while rows < _MAX_ROWS_PER_COMMIT:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                pending.append(item)
                rows += len(item[0].events)
            self._commit(pending)
            if stop:
                return

    def _commit(self, pending: list) -> None:
        try:
            outcomes = self.store.write_many([record for record, _, _ in pending])
        except Exception as exc:  # every waiting request must hear about the failure
            log.exception("commit of %d requests failed", len(pending))
            for _, loop, future in pending:
                loop.call_soon_threadsafe(_set_exception, future, exc)
            return
        for (_, loop, future), outcome in zip(pending, outcomes, strict=True):
            loop.call_soon_threadsafe(_set_result, future, outcome)


def _set_result(future: asyncio.Future, value: WriteOutcome) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
