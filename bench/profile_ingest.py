"""Where one ingest request's CPU time goes, in process and without HTTP: decode, pipeline, store.

    .venv/bin/python bench/profile_ingest.py                      # SQLite and PostgreSQL
    .venv/bin/python bench/profile_ingest.py --databases sqlite --top 20

Uses the same request bodies as bench/ingest.py (WalkMe batches of 50 unique events) and the
server's own code: `decode_walkme`, then `Collector.collect` with the group-commit writer replaced
by one that only keeps the records, then `EventStore.journal` over groups of records, as the
writer thread commits them under load, and `EventStore.index_journal`, as the indexer stores them.
Each stage is timed once plainly, then once under cProfile
(on fresh events, so nothing is a duplicate) to list the functions that cost the most.
py-spy would show the same from a live server; it is not installed here, cProfile is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import pstats
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ingest.py, run as a script

import ingest
from usertrail.collect.service import WALKME, Collector, RequestFacts
from usertrail.collect.wire import decode_walkme
from usertrail.config import Settings
from usertrail.store.journal import Packed
from usertrail.web.app import build_collector


class _KeepingWriter:
    """Stands in for the group-commit writer: keeps the records, commits nothing."""

    def __init__(self) -> None:
        self.records: list[Packed] = []

    async def write(self, record: Packed) -> None:
        self.records.append(record)

    def close(self) -> None:
        pass


def _bodies(key: str, count: int, first_seq: int, first_request: int = 0) -> list[bytes]:
    """Bodies of `count` requests whose events are numbered from `first_seq` and whose users go on from
    request number `first_request` of a run (so that consecutive parts of a run visit every user)."""
    spec = {
        "first_request": first_request,
        "seed": first_seq,
        "users": 20_000,
        "key": key,
        "port": 0,
        "first_seq": first_seq,
        "base_ms": int(time.time() * 1000) - 6 * 3_600_000,
        "requests": count,
    }
    requests, _ = ingest.build_requests(spec)
    return [r.split(b"\r\n\r\n", 1)[1] for r in requests]


def request_facts(body: bytes, key: str) -> RequestFacts:
    """What the server's route hands the collector for one of the load generator's WalkMe requests."""
    return RequestFacts(
        body=body,
        content_type="text/plain",
        peer="81.2.69.160",
        forwarded_for=None,
        user_agent=ingest.USER_AGENTS[0],
        origin=ingest.ORIGIN,
        key=key,
        path="/event/tell",
    )


def _profile(label: str, us_per_event: float, work: Callable[[], object], top: int) -> None:
    """Print the stage's time and the functions that cost the most when running `work`."""
    profiler = cProfile.Profile()
    profiler.enable()
    work()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    listing = out.getvalue()
    # Keep the table only: the header lines repeat what we print ourselves.
    listing = listing[listing.find("   ncalls") :] if "   ncalls" in listing else listing
    per_request = us_per_event * ingest.EVENTS_PER_BATCH / 1000
    print(f"\n### {label}: {us_per_event:.1f} µs per event ({per_request:.2f} ms per request)")
    print(listing.rstrip())


def profile_database(
    name: str, url: str, requests: int, group: int, top: int, repeat: int, cpu_time: bool = False
) -> dict[str, float]:
    """Time and profile the three stages against one database; µs per event for each.

    Timings are the best of `repeat` runs on different events: a shared virtual CPU only ever
    makes a run slower. Decode and collect are timed request by request, alternately, so that
    the pipeline's share (their difference) is not distorted by the CPU's speed drifting.
    """
    key = ingest.prepare_database(url)
    settings = Settings(database_url=url, trusted_proxies=())
    collector: Collector = build_collector(settings)
    keeper = _KeepingWriter()
    collector.writer = keeper  # type: ignore[assignment]
    limits = settings.limits
    # CPU time of this process leaves out the time other processes take from a shared machine
    # (and, for the store, the time spent waiting for fsync and for PostgreSQL's own processes).
    clock = time.process_time if cpu_time else time.perf_counter
    events = requests * ingest.EVENTS_PER_BATCH

    def facts(body: bytes) -> RequestFacts:
        return request_facts(body, key)

    async def collect(bodies: list[bytes]) -> None:
        for body in bodies:
            await collector.collect(facts(body), WALKME)

    async def decode_and_collect(bodies: list[bytes]) -> tuple[float, float]:
        decode = total = 0.0
        for body in bodies:
            t0 = clock()
            decode_walkme(body, "text/plain", limits)
            t1 = clock()
            await collector.collect(facts(body), WALKME)
            decode += t1 - t0
            total += clock() - t1
        return decode, total

    print(f"\n## {name}: {requests} requests of {ingest.EVENTS_PER_BATCH} events")
    asyncio.run(collect(_bodies(key, 1, 90_000_000)))  # warm caches and connections
    keeper.records.clear()
    # Distinct events for every run: their records feed the store, where a repeat would be a
    # (cheaper) duplicate.
    timings = [asyncio.run(decode_and_collect(_bodies(key, requests, i * 1_000_000))) for i in range(repeat)]
    decode_us = min(d for d, _ in timings) / events * 1e6
    collect_us = min(c for _, c in timings) / events * 1e6
    timed_records = [keeper.records[i * requests : (i + 1) * requests] for i in range(repeat)]

    profiled = _bodies(key, requests, 50_000_000)
    _profile(
        "decode (decode_walkme)", decode_us, lambda: [decode_walkme(b, "text/plain", limits) for b in profiled], top
    )
    keeper.records.clear()
    _profile(
        "decode + pipeline (Collector.collect, no storage)", collect_us, lambda: asyncio.run(collect(profiled)), top
    )
    profiled_records = list(keeper.records)

    def journal(records: list[Packed]) -> float:
        began = clock()
        for i in range(0, len(records), group):
            collector.events.journal(records[i : i + group])
        return clock() - began

    def index() -> float:
        began = clock()
        while collector.events.index_journal():
            pass
        return clock() - began

    journal_us, index_us = [], []
    for records in timed_records:
        journal_us.append(journal(records) / events * 1e6)
        index_us.append(index() / events * 1e6)
    _profile(
        f"journal (EventStore.journal, {group} requests per commit)",
        min(journal_us),
        lambda: journal(profiled_records),
        top,
    )
    _profile("index (EventStore.index_journal)", min(index_us), index, top)
    collector.events.engine.dispose()
    return {"decode": decode_us, "pipeline": collect_us - decode_us, "journal": min(journal_us), "index": min(index_us)}


def main(argv: list[str] | None = None) -> int:
    """Profile each database and print a per-stage summary."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=300, help="requests (of 50 events) per stage")
    p.add_argument("--group", type=int, default=8, help="requests per commit in the store stage")
    p.add_argument("--databases", default="sqlite,postgresql")
    p.add_argument("--top", type=int, default=12, help="functions listed per stage")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per stage (the best counts)")
    p.add_argument("--cpu-time", action="store_true", help="time this process's CPU instead of wall time")
    args = p.parse_args(argv)
    summary: dict[str, dict[str, float]] = {}
    scratch = Path(tempfile.mkdtemp(prefix="usertrail-profile-"))
    try:
        for name in [d.strip() for d in args.databases.split(",") if d.strip()]:
            with contextlib.ExitStack() as stack:
                if name == "postgresql":
                    from usertrail.testing.postgres import TemporaryPostgres

                    url = stack.enter_context(TemporaryPostgres())
                else:
                    url = f"sqlite:///{scratch / 'profile.db'}"
                summary[name] = profile_database(
                    name, url, args.requests, args.group, args.top, args.repeat, args.cpu_time
                )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    clock = "CPU time" if args.cpu_time else "wall time"
    print(f"\n## Summary: µs per event, one thread, {clock} (this CPU's probe: {ingest.cpu_probe():.0f} M loops/s)\n")
    print("| database | decode | pipeline | journal | answered: total ⇒ events/s | index ⇒ events/s |")
    print("|---|---|---|---|---|---|")
    for name, stages in summary.items():
        answered = stages["decode"] + stages["pipeline"] + stages["journal"]
        print(
            f"| {name} | {stages['decode']:.1f} | {stages['pipeline']:.1f} | {stages['journal']:.1f} "
            f"| {answered:.1f} ⇒ {1e6 / answered:,.0f} | {stages['index']:.1f} ⇒ {1e6 / stages['index']:,.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
