"""Garbage-collector settings for the long-running processes (server workers, the indexer process)."""

from __future__ import annotations

import gc


def tune_garbage_collection() -> None:
    """Exempt what start-up built from collection, and collect young objects far less often.

    Ingest allocates a few container objects per event, which reference counting frees as soon as the
    request is answered (or, in the indexer, the transaction committed). At the default threshold (700)
    the cyclic collector ran over a hundred times a second under load, and its full passes walked the
    ~150,000 objects of the loaded modules: about a tenth of a worker's time (docs/benchmarks.md).
    Cyclic garbage is still collected, every 50,000 net allocations.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
