"""Where the session processor's time goes, in process: the full rebuild and the incremental path.

    .venv/bin/python bench/profile_sessions.py                       # SQLite, the 500k-event workload
    .venv/bin/python bench/profile_sessions.py --database postgresql
    .venv/bin/python bench/profile_sessions.py --events 5000000 --users 200000 --skip-incremental

1. Rebuild. The workload of bench/datagen.py is loaded into a fresh database (or `--url` names one
   already loaded), then `SessionProcessor.rebuild` is timed against its main part, sessionizing every
   key column-wise (`sessions.columnar.sessionize_project`), and against the set-based statements the
   session loop uses, run over the whole project (`sessions.derive.sessionize_keys`, what the rebuild
   used before). The rest of the rebuild is links, End User Objects and writing the rows. Then one
   more rebuild runs under cProfile.
2. Incremental. New users' events are written as ingest writes them (`EventStore.write_many`,
   which marks each user pending), then `SessionProcessor.run` processes them: once when the events
   are fresh (the session opens) and once 31 minutes later (the session closes). Both are timed,
   with the SQL statements each user costs, then profiled. The plan of the query that
   finds closable sessions is shown, with its time on a table holding the workload's sessions.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/datagen.py, run as a script

import sqlalchemy as sa

import datagen
from usertrail.sessions import processor as processor_module
from usertrail.sessions.columnar import sessionize_project
from usertrail.sessions.derive import fill_scope, sessionize_keys
from usertrail.sessions.processor import SessionProcessor
from usertrail.sessions.rules import IDLE_MS
from usertrail.store import bulk, user_index
from usertrail.store.database import create_engine
from usertrail.store.events import EventStore, IngestRecord, event_row
from usertrail.store.schema import sessions


def _profile(fn, top: int, pattern: str | None = None) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    fn()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    if pattern:
        stats.sort_stats("cumulative").print_stats(pattern, top)
    return out.getvalue()


def rebuild_parts(engine: sa.Engine, project_id: int, now: int, top: int) -> None:
    """Time the set-based sessionization alone and the whole rebuild; then profile the rebuild."""

    def sessionize_all() -> int:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.execution_options(isolation_level="REPEATABLE READ")
            found = sessionize_project(conn, project_id)
            conn.rollback()
        return sum(len(s) for s in found.sessions.values())

    def set_based() -> int:
        with engine.connect() as conn:
            keys = conn.exec_driver_sql(
                "SELECT DISTINCT user_key FROM events WHERE project_id = " + str(int(project_id))
            ).scalars()
            fill_scope(conn, dict.fromkeys(keys, 0))  # every key: the session loop's statements over the project
            found = sessionize_keys(conn, project_id)
            conn.rollback()
        return sum(len(s) for s in found.sessions.values())

    timings = {}
    for name, fn in (
        ("sessionize every key column-wise (sessions.columnar.sessionize_project)", sessionize_all),
        ("the same with the session loop's statements (derive.sessionize_keys, every key in scope)", set_based),
        ("whole rebuild (also links, End User Objects, and writing every row)", None),
    ):
        began, cpu = time.perf_counter(), time.process_time()
        if fn is None:
            SessionProcessor(engine).rebuild(project_id, now=now)
        else:
            fn()
        timings[name] = time.perf_counter() - began
        print(f"    {timings[name]:7.1f} s ({time.process_time() - cpu:.1f} s CPU in this process)  {name}", flush=True)
    print("\none more rebuild, by part (seconds; `create` = re-creating the indexes dropped for the write):")
    for name, seconds in timed_parts(engine, project_id, now).items():
        print(f"    {seconds:7.2f}  {name}")
    print("\ncProfile of one more rebuild:")
    print(_profile(lambda: SessionProcessor(engine).rebuild(project_id, now=now), top, r"processor|derive|rules"))


def timed_parts(engine: sa.Engine, project_id: int, now: int) -> dict[str, float]:
    """One `SessionProcessor.rebuild`, with the time of each function it calls for a part of the work
    (wrapped for this run only) and of each index it re-creates."""
    times: dict[str, float] = defaultdict(float)

    def timed(module, name: str, label) -> None:
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                times[label(args)] += time.perf_counter() - began

        setattr(module, name, wrapper)
        undo.append((module, name, original))

    undo: list[tuple] = []
    timed(processor_module, "sessionize_project", lambda a: "sessionize every key (columnar.sessionize_project)")
    timed(bulk, "insert_rows", lambda a: f"insert {a[1].name}")
    timed(bulk, "_merge", lambda a: f"merge {a[1].name} (PostgreSQL, stored rows)")
    timed(user_index, "lookup_rows", lambda a: "user list lookup rows (user_index.lookup_rows)")
    timed(sa.Index, "create", lambda a: f"create {a[0].table.name} indexes")
    try:
        began = time.perf_counter()
        SessionProcessor(engine).rebuild(project_id, now=now)
        times["whole rebuild"] = time.perf_counter() - began
    finally:
        for module, name, original in undo:
            setattr(module, name, original)
    return dict(times)


def _new_users(project_id: int, first_user: int, users: int, at: int) -> list[IngestRecord]:
    """Ten events per user, as the native snippet sends them (user id, anonymous id, session id)."""
    records = []
    for u in range(first_user, first_user + users):
        rows = []
        for i in range(10):
            ts = at + i * 6_000
            rows.append(
                event_row(
                    project_id=project_id,
                    user_key=f"u:inc-{u:06d}",
                    event_id=f"{u:06d}-{i:02d}-{'0' * 22}",
                    ts=ts,
                    client_ts=ts,
                    received_at=ts + 200,
                    env="production",
                    source="native",
                    type="page" if i % 4 == 0 else "track",
                    name="Report exported" if i % 4 else "Reports",
                    session_hint=f"cs-inc-{u:06d}",
                    anon_id=f"anon-inc-{u:06d}",
                    user_id=f"inc-{u:06d}",
                    id_source="variable",
                    url_host="app.acme.example",
                    url_path="/reports",
                    country="US",
                    region="Texas",
                    city="Austin",
                    browser="Chrome",
                    browser_version="125.0.0",
                    payload='{"type":"track"}',
                )
            )
        records.append(IngestRecord(project_id, rows))
    return records


class _Counter:
    """Counts the SQL statements an engine runs."""

    def __init__(self, engine: sa.Engine) -> None:
        self.statements = 0
        sa.event.listen(engine, "before_cursor_execute", self._statement)

    def _statement(self, *args) -> None:
        self.statements += 1


def incremental(engine: sa.Engine, project_id: int, users: int, top: int) -> None:
    """Open then close `users` new users' sessions through `SessionProcessor.run`; time and profile."""
    store = EventStore(engine)
    processor = SessionProcessor(engine)
    counter = _Counter(engine)
    now = int(time.time() * 1000)
    for phase, first in (("timed", 0), ("profiled", users)):
        store.write_many(_new_users(project_id, first, users, now - 5 * 60_000))
        for label, at in (("open (fresh events)", now), ("close (31 minutes later)", now + 31 * 60_000)):
            statements = counter.statements
            began = time.perf_counter()
            if phase == "timed":
                done = 0
                while True:
                    stats = processor.run(at, max_rounds=50)
                    if not stats.users:
                        break
                    done += stats.users
                elapsed = time.perf_counter() - began
                print(
                    f"    {label}: {done:,} users in {elapsed:.1f} s = {done / elapsed:,.0f} users/s; "
                    f"{(counter.statements - statements) / max(1, done):.1f} SQL statements per user "
                    "(users are processed in batches, one transaction each)",
                    flush=True,
                )
            else:
                print(f"\ncProfile, {label}:")
                print(_profile(lambda at=at: processor.run(at, max_rounds=50), top, r"processor|identity"))


def closable_query_plan(engine: sa.Engine) -> None:
    """The plan and time of `enqueue_due_closes`'s query on this database."""
    now = int(time.time() * 1000)
    query = (
        sa.select(sessions.c.project_id, sessions.c.user_key, sa.func.min(sessions.c.start_ts))
        .where(sessions.c.status == "open", sessions.c.end_ts <= now - IDLE_MS)
        .group_by(sessions.c.project_id, sessions.c.user_key)
    )
    compiled = query.compile(engine, compile_kwargs={"literal_binds": True})
    explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN ANALYZE "
    with engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(sessions)).scalar_one()
        plan = [" | ".join(str(c) for c in row) for row in conn.exec_driver_sql(explain + str(compiled))]
        began = time.perf_counter()
        due = len(conn.execute(query).all())
        elapsed = time.perf_counter() - began
    print(f"    {total:,} sessions in the table, {due:,} due; the query took {elapsed * 1000:.0f} ms. Plan:")
    for line in plan:
        print(f"      {line}")


def main(argv: list[str] | None = None) -> int:
    """Load the workload, then profile the rebuild and the incremental path."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--events", type=int, default=datagen.QUICK.events)
    p.add_argument("--users", type=int, default=datagen.QUICK.users)
    p.add_argument("--incremental-users", type=int, default=1_000, help="new users for the incremental part")
    p.add_argument("--skip-incremental", action="store_true")
    p.add_argument("--top", type=int, default=25, help="functions listed per profile")
    p.add_argument("--url", help="a database already holding the workload (not loaded, not removed; rebuilt in place)")
    p.add_argument("--project", type=int, default=1, help="with --url: the workload's project id")
    args = p.parse_args(argv)
    workload = replace(datagen.FULL, events=args.events, users=args.users)
    scratch = Path(tempfile.mkdtemp(prefix="usertrail-profile-sessions-"))
    pg = None
    try:
        if args.url:
            url, project_id = args.url, args.project
        elif args.database == "sqlite":
            url = f"sqlite:///{scratch / 'profile.db'}"
        else:
            from usertrail.testing.postgres import TemporaryPostgres

            pg = TemporaryPostgres({"shared_buffers": "1GB", "max_wal_size": "4GB"})
            url = pg.start()
        if not args.url:
            project_id = datagen.prepare_project(url)
            began = time.perf_counter()
            loader = datagen.load_sqlite if args.database == "sqlite" else datagen.load_postgres
            n = loader(url, datagen.rows(workload, project_id=project_id))
            print(f"{args.database}: loaded {n:,} events in {time.perf_counter() - began:.1f} s", flush=True)
        print("\nrebuild:", flush=True)
        engine = create_engine(url)
        rebuild_parts(engine, project_id, workload.end_ms, args.top)
        print("\nfinding closable sessions (enqueue_due_closes), with the workload's sessions in the table:")
        closable_query_plan(engine)
        if not args.skip_incremental:
            print(f"\nincremental, {args.incremental_users:,} new users of 10 events each:", flush=True)
            incremental(engine, project_id, args.incremental_users, args.top)
        engine.dispose()
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
