"""Sessions and End User Objects benchmark (issue 3): full rebuild against a DuckDB ceiling, then steady state.

    .venv/bin/python bench/sessions.py            # 5M events / 200k users; steady state on SQLite, 10 min
    .venv/bin/python bench/sessions.py --quick    # 500k events / 20k users; steady state 2 min
    .venv/bin/python bench/sessions.py --databases postgresql --steady postgresql   # PostgreSQL's steady state

Rebuild. The workload of bench/datagen.py (deterministic; cached as CSV and Parquet under
bench/results/data/) is loaded into a fresh SQLite file and a fresh PostgreSQL database (migrated,
project "bench"), and `SessionProcessor.rebuild` — the product's own code — is timed on each. In
the same run, hand-written DuckDB SQL over the Parquet export computes the same sessions and the
same standard attributes (the columnar ceiling). Every session and every End User Object of the
rebuild is then compared with DuckDB's, column by column.

Steady state. The real server (`uvicorn --factory --workers 2`, its own session loop) runs on the
same database, with a second project whose UUID provider is `variable`. A load generator process
sends native batches through HTTP at a fixed rate (5,000 events/s). Each simulated end user sends
a burst of 4-16 events in two batches 10 s apart, then goes quiet; event times are back-dated 29
minutes (the batch's `sentAt` is the real send time), so every session becomes closable about a
minute after its last batch. Every ~10 s the backlog is sampled (`pending_users`, and open
sessions that are already closable). Afterwards the delay from "closable" (last event + 30 min)
to "closed" (`closed_at`) and to "End User Object committed" is measured for every session that
became closable during the load.

Output: tables on stdout, JSON under bench/results/, and (full runs) the results block of the
"Sessions and End User Objects (issue 3)" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import hashlib
import heapq
import io
import ipaddress
import itertools
import json
import math
import multiprocessing
import pstats
import random
import re
import resource
import shlex
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ingest.py and bench/datagen.py, run as a script

import datagen
import ingest
from usertrail.config import Settings
from usertrail.sessions.rules import IDLE_MS, MAX_SESSION_MS, PAGE_TYPES, PASSIVE_TYPES

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
DATA_DIR = RESULTS_DIR / "data"
DOCS_FILE = ROOT / "docs" / "benchmarks.md"
DOCS_SECTION = "## Sessions and End User Objects (issue 3)"
RESULTS_START = "<!-- sessions-results:start (written by bench/sessions.py; edit the reading below, not this block) -->"
RESULTS_END = "<!-- sessions-results:end -->"

TARGET_RATIO = 5.0  # rebuild within 5x of the DuckDB ceiling
# Each rebuild after the first runs this much later than the one before: a row stamped with the rebuild's `now`
# (closed_at, updated_at) would then differ from the stored one, unless the rebuild keeps the stored stamps
# (sessions/stamps.py). Small enough that no session becomes closable in between (the runs are checked).
RUN_STEP_MS = 1_000
TARGET_P99_S = 60.0
BACKDATE_MS = 29 * 60_000
PG_SETTINGS = {
    "shared_buffers": "1GB",
    "max_wal_size": "4GB",
    # Commit times of End User Object rows tell when each close became visible (steady state).
    "track_commit_timestamp": "on",
}


def _sql_list(values: frozenset[str]) -> str:
    return ", ".join(f"'{v}'" for v in sorted(values))


# --- the DuckDB ceiling ----------------------------------------------------------------------------


def duckdb_sql(source: str, project_id: int, now: int) -> list[str]:
    """Hand-written DuckDB SQL computing the product's sessions and standard attributes, exactly.

    `source` is a table or `read_parquet('…')`. Same rule as sessions/rules.py: events ordered
    by (ts, event_id); a gap of 30 minutes or more starts a new run of activity; inside a run
    longer than 12 hours the first event 12 hours or more after a session's start starts the
    next session (a recursive CTE, only over the few runs that long). A session is closed if a
    later one exists or its last event is 30 minutes old at `now`; it is empty if it has no
    non-passive event and at most one page view. Location and browser of a session are those
    of its latest event that has them; the End User Object reads closed, non-empty sessions.
    """
    loc = "{'country': country, 'region': region, 'city': city}"
    brw = "{'browser': browser, 'version': browser_version}"
    order = "{'ts': ts, 'id': event_id}"
    session_aggregates = f"""
        min(ts) AS start_ts, max(ts) AS end_ts, count(*) AS event_count,
        count(*) FILTER (WHERE type NOT IN ({_sql_list(PASSIVE_TYPES)})) AS interaction_count,
        count(*) FILTER (WHERE type IN ({_sql_list(PAGE_TYPES)})) AS page_views,
        arg_max({loc}, {order}) FILTER (WHERE country <> '') AS loc,
        arg_max({brw}, {order}) FILTER (WHERE browser <> '') AS brw"""
    sessions_sql = f"""
CREATE OR REPLACE TABLE duck_sessions AS
WITH RECURSIVE
e AS (
    SELECT user_key, ts, event_id, type, country, region, city, browser, browser_version,
           CASE WHEN ts - lag(ts) OVER (PARTITION BY user_key ORDER BY ts, event_id) < {IDLE_MS}
                THEN 0 ELSE 1 END AS new_run
    FROM {source} WHERE project_id = {project_id}
),
r AS (
    SELECT *, sum(new_run) OVER (PARTITION BY user_key ORDER BY ts, event_id ROWS UNBOUNDED PRECEDING) AS run_no
    FROM e
),
runs AS (SELECT user_key, run_no, {session_aggregates} FROM r GROUP BY user_key, run_no),
long_runs AS (SELECT user_key, run_no, start_ts FROM runs WHERE end_ts - start_ts >= {MAX_SESSION_MS}),
long_events AS (SELECT r.* FROM r SEMI JOIN long_runs USING (user_key, run_no)),
cuts(user_key, run_no, cut) AS (
    SELECT user_key, run_no, start_ts FROM long_runs
    UNION ALL
    SELECT c.user_key, c.run_no,
           (SELECT min(x.ts) FROM long_events x
            WHERE x.user_key = c.user_key AND x.run_no = c.run_no AND x.ts >= c.cut + {MAX_SESSION_MS})
    FROM cuts c WHERE c.cut IS NOT NULL
),
capped AS (
    SELECT x.user_key, {session_aggregates}
    FROM long_events x ASOF JOIN (SELECT * FROM cuts WHERE cut IS NOT NULL) c
         ON x.user_key = c.user_key AND x.run_no = c.run_no AND x.ts >= c.cut
    GROUP BY x.user_key, x.run_no, c.cut
),
s AS (
    SELECT * EXCLUDE (run_no) FROM runs WHERE end_ts - start_ts < {MAX_SESSION_MS}
    UNION ALL
    SELECT * FROM capped
)
SELECT user_key, start_ts, end_ts, event_count, interaction_count, page_views,
       interaction_count = 0 AND page_views <= 1 AS is_empty,
       start_ts < max(start_ts) OVER (PARTITION BY user_key) OR {now} - end_ts >= {IDLE_MS} AS closed,
       loc.country AS country, loc.region AS region, loc.city AS city,
       brw.browser AS browser, brw.version AS browser_version
FROM s
"""
    users_sql = """
CREATE OR REPLACE TABLE duck_users AS
SELECT user_key, first_seen, last_seen, total_sessions,
       total_session_duration_ms / total_sessions AS avg_session_duration_ms,
       total_session_duration_ms,
       -- the mean of (next start - previous end): the sum telescopes to two sums and two ends
       CASE WHEN total_sessions > 1
            THEN ((sum_start - first_seen) - (sum_end - last_seen)) / (total_sessions - 1) END
           AS avg_time_between_sessions_ms,
       latest.country AS country, latest.region AS region, latest.city AS city,
       latest.browser AS browser_name, latest.browser_version AS browser_version
FROM (
    SELECT user_key, min(start_ts) AS first_seen, arg_max(end_ts, start_ts) AS last_seen,
           count(*) AS total_sessions, sum(end_ts - start_ts) AS total_session_duration_ms,
           sum(start_ts) AS sum_start, sum(end_ts) AS sum_end,
           arg_max_null({'country': country, 'region': region, 'city': city,
                         'browser': browser, 'browser_version': browser_version}, start_ts) AS latest
    FROM duck_sessions WHERE closed AND NOT is_empty
    GROUP BY user_key
)
"""
    return [sessions_sql, users_sql]


@dataclass
class DuckResult:
    over_parquet_s: list[float] = field(default_factory=list)
    over_table_s: list[float] = field(default_factory=list)
    load_table_s: float = 0.0
    sessions: int = 0
    closed: int = 0
    users: int = 0
    threads: int = 0
    version: str = ""

    @property
    def ceiling_s(self) -> float:
        """The ceiling: the median run over the Parquet export (what the issue asks for)."""
        return statistics.median(self.over_parquet_s)


def run_duckdb(parquet: Path, project_id: int, now: int, repeat: int) -> tuple[DuckResult, Any]:
    """Time the DuckDB SQL over the Parquet file (and over a loaded table, for reference)."""
    import duckdb

    con = duckdb.connect()
    result = DuckResult(version=duckdb.__version__)
    result.threads = int(con.execute("SELECT current_setting('threads')").fetchone()[0])  # type: ignore[index]
    for source, times in ((f"read_parquet('{parquet}')", result.over_parquet_s), ("ev", result.over_table_s)):
        if source == "ev":
            began = time.perf_counter()
            con.execute(f"CREATE TABLE ev AS SELECT * FROM read_parquet('{parquet}')")
            result.load_table_s = time.perf_counter() - began
        for _ in range(repeat):
            began = time.perf_counter()
            for statement in duckdb_sql(source, project_id, now):
                con.execute(statement)
            times.append(time.perf_counter() - began)
    result.sessions, result.closed = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE closed) FROM duck_sessions"
    ).fetchone()  # type: ignore[misc]
    con.execute("DROP TABLE ev")  # 5M rows in memory, not needed for the checks
    result.users = con.execute("SELECT count(*) FROM duck_users").fetchone()[0]  # type: ignore[index]
    return result, con


# --- comparing the rebuild with DuckDB -------------------------------------------------------------

USER_COLUMNS = (
    "first_seen", "last_seen", "total_sessions", "avg_session_duration_ms", "total_session_duration_ms",
    "avg_time_between_sessions_ms", "country", "region", "city", "browser_name", "browser_version",
)  # fmt: skip
SESSION_COLUMNS = (
    "end_ts", "event_count", "interaction_count", "page_views", "is_empty", "closed",
    "country", "region", "city", "browser", "browser_version",
)  # fmt: skip


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-9)
    return a == b


def _compare(product: dict, duck: dict, columns: tuple[str, ...], label: str) -> dict[str, Any]:
    only_product = product.keys() - duck.keys()
    only_duck = duck.keys() - product.keys()
    mismatches: dict[str, int] = {}
    examples: list[str] = []
    for key in sorted(product.keys() & duck.keys()):
        a, b = product[key], duck[key]
        for i, column in enumerate(columns):
            if not _same(a[i], b[i]):
                mismatches[column] = mismatches.get(column, 0) + 1
                if len(examples) < 8:
                    examples.append(f"{label} {key}: {column} product={a[i]!r} duckdb={b[i]!r}")
    examples += [f"{label} {k}: only in the product" for k in sorted(only_product)[:4]]
    examples += [f"{label} {k}: only in DuckDB" for k in sorted(only_duck)[:4]]
    return {
        "product": len(product),
        "duckdb": len(duck),
        "only_product": len(only_product),
        "only_duckdb": len(only_duck),
        "mismatched_rows_by_column": mismatches,
        "examples": examples,
        "equal": not only_product and not only_duck and not mismatches,
    }


def check_against_duckdb(engine, project_id: int, con) -> dict[str, Any]:
    """Compare every End User Object and every session of the rebuild with DuckDB's."""
    import sqlalchemy as sa

    from usertrail.store.schema import end_users, sessions

    with engine.connect() as conn:
        users_rows = conn.execute(
            sa.select(end_users.c.user_key, *(end_users.c[c] for c in USER_COLUMNS)).where(
                end_users.c.project_id == project_id
            )
        ).all()
        session_rows = conn.execute(
            sa.select(
                sessions.c.user_key,
                sessions.c.start_ts,
                sessions.c.end_ts,
                sessions.c.event_count,
                sessions.c.interaction_count,
                sessions.c.page_views,
                sessions.c.is_empty,
                sessions.c.status,
                *(sessions.c[c] for c in ("country", "region", "city", "browser", "browser_version")),
            ).where(sessions.c.project_id == project_id)
        ).all()
    product_users = {r[0]: tuple(r[1:]) for r in users_rows}
    duck_users = {r[0]: tuple(r[1:]) for r in con.execute("SELECT * FROM duck_users").fetchall()}
    product_sessions = {
        (r[0], r[1]): (r[2], r[3], r[4], r[5], bool(r[6]), r[7] == "closed", *r[8:]) for r in session_rows
    }
    duck_sessions = {
        (r[0], r[1]): tuple(r[2:])
        for r in con.execute(
            "SELECT user_key, start_ts, end_ts, event_count, interaction_count, page_views, is_empty, closed, "
            "country, region, city, browser, browser_version FROM duck_sessions"
        ).fetchall()
    }
    return {
        "users": _compare(product_users, duck_users, USER_COLUMNS, "user"),
        "sessions": _compare(product_sessions, duck_sessions, SESSION_COLUMNS, "session"),
        "sessions_closed": sum(1 for v in product_sessions.values() if v[5]),
        "sessions_empty": sum(1 for v in product_sessions.values() if v[4]),
    }


# --- data --------------------------------------------------------------------------------------------


def ensure_exports(workload: datagen.Workload, regenerate: bool) -> tuple[Path, Path, dict[str, float]]:
    """The workload as CSV and Parquet under bench/results/data/, generated once and then reused."""
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    # The events table grows columns over time: a new schema means new files.
    schema = hashlib.sha256(",".join(datagen.STORED_COLUMNS).encode()).hexdigest()[:8]
    csv_path = DATA_DIR / f"{workload.name}-{schema}.csv"
    parquet_path = DATA_DIR / f"{workload.name}-{schema}.parquet"
    timings: dict[str, float] = {}
    if regenerate or not csv_path.exists():
        began = time.perf_counter()
        partial = csv_path.with_suffix(".csv.partial")
        datagen.write_csv(partial, datagen.rows(workload))
        partial.rename(csv_path)
        timings["generate_csv_s"] = time.perf_counter() - began
        parquet_path.unlink(missing_ok=True)
    if not parquet_path.exists():
        began = time.perf_counter()
        datagen.csv_to_parquet(csv_path, parquet_path)
        timings["csv_to_parquet_s"] = time.perf_counter() - began
    return csv_path, parquet_path, timings


def load(database: str, url: str, workload: datagen.Workload, csv_path: Path) -> tuple[int, int, float]:
    """Migrate a fresh database, create project "bench", load the events; (project id, rows, seconds)."""
    project_id = datagen.prepare_project(url, "bench")
    began = time.perf_counter()
    if database == "sqlite":
        # SQLite takes tuples through the driver: regenerating them is as fast as parsing the CSV.
        n = datagen.load_sqlite(url, datagen.rows(workload, project_id=project_id))
    else:
        if project_id != 1:
            raise RuntimeError("the cached CSV holds project 1's rows: load into a fresh database")
        n = datagen.load_postgres(url, csv_path=csv_path)
    return project_id, n, time.perf_counter() - began


# --- the rebuild -------------------------------------------------------------------------------------


@dataclass
class Rebuild:
    database: str
    events: int = 0
    load_s: float = 0.0
    rebuild_s: float = 0.0
    users: int = 0
    sessions_closed: int = 0
    profiles: int = 0
    python_cpu: float = 0.0  # cores used by this process and its helper processes (store/staging.py) during the rebuild
    db_cpu: float = 0.0  # cores used by PostgreSQL's processes
    other_cpu: float = 0.0  # everything else on the machine
    cpu_probe_mops: float = 0.0
    quiet_wait_s: float = 0.0
    check: dict[str, Any] = field(default_factory=dict)
    profile: str = ""
    runs_s: list[float] = field(default_factory=list)  # every timed rebuild, the first one after the load first
    # Per run: (sessions, End User Objects) stamped with its `now`, i.e. closed or changed by that run.
    stamped: list[tuple[int, int]] = field(default_factory=list)
    changed_s: float | None = None  # the run after every stored session and End User Object was changed
    changed_equal: bool | None = None


def count_stamped(engine, project_id: int, now: int) -> tuple[int, int]:
    """(sessions closed at `now`, End User Objects updated at `now`): what a rebuild at `now` wrote anew."""
    import sqlalchemy as sa

    from usertrail.store.schema import end_users, sessions

    with engine.connect() as conn:
        closed = conn.execute(
            sa.select(sa.func.count()).where(sessions.c.project_id == project_id, sessions.c.closed_at == now)
        ).scalar_one()
        updated = conn.execute(
            sa.select(sa.func.count()).where(end_users.c.project_id == project_id, end_users.c.updated_at == now)
        ).scalar_one()
    return closed, updated


def change_every_row(engine, project_id: int) -> None:
    """Change every stored session and End User Object of the project, as a change of the session rules
    would, so the next rebuild finds every one of them different (then VACUUM on PostgreSQL, as rows written
    over time would have been)."""

    from usertrail.store.schema import end_users, sessions

    with engine.begin() as conn:
        conn.execute(sessions.update().where(sessions.c.project_id == project_id).values(page_views=-1))
        conn.execute(end_users.update().where(end_users.c.project_id == project_id).values(total_sessions=-1))
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE sessions, end_users")


def time_rebuild(engine, project_id: int, now: int, postmaster: int | None, quiet_wait: float) -> Rebuild:
    """One timed `SessionProcessor.rebuild`, with the CPU used by us, the database and the rest."""
    from usertrail.sessions.processor import SessionProcessor

    result = Rebuild(engine.dialect.name)
    result.quiet_wait_s, busy = ingest.wait_for_quiet(quiet_wait)
    if busy >= 0.3:
        print(f"    (machine still busy: {busy:.2f} cores used by other processes; measuring anyway)")
    probe = ingest.cpu_probe()
    pg_pids = ingest.process_tree(postmaster) if postmaster else []
    usage0, pg0, busy0 = _own_cpu(), ingest.cpu_seconds(pg_pids), ingest.machine_busy()
    began = time.perf_counter()
    stats = SessionProcessor(engine).rebuild(project_id, now=now)
    result.rebuild_s = time.perf_counter() - began
    usage1, busy1 = _own_cpu(), ingest.machine_busy()
    pg_pids = ingest.process_tree(postmaster) if postmaster else []
    result.db_cpu = (ingest.cpu_seconds(pg_pids) - pg0) / result.rebuild_s
    result.python_cpu = (usage1 - usage0) / result.rebuild_s
    result.other_cpu = max(0.0, ingest.busy_cores(busy0, busy1) - result.python_cpu - result.db_cpu)
    result.cpu_probe_mops = (probe + ingest.cpu_probe()) / 2
    result.users, result.sessions_closed, result.profiles = stats.users, stats.sessions_closed, stats.profiles_updated
    return result


def _own_cpu() -> float:
    """CPU seconds of this process and of its children that ended (the rebuild's staging helper)."""
    usages = map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return sum(u.ru_utime + u.ru_stime for u in usages)


def profile_rebuild(engine, project_id: int, now: int, top: int) -> str:
    """cProfile of one more rebuild: the functions with the most own time, and the biggest callers."""
    from usertrail.sessions.processor import SessionProcessor

    profiler = cProfile.Profile()
    profiler.enable()
    SessionProcessor(engine).rebuild(project_id, now=now)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


# --- steady state: the load generator (its own process) ----------------------------------------------

USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0.0.0 Safari/537.36"
)
EVENTS_PER_USER = (4, 16)  # uniform: 10 on average
BATCH_EVENTS = 50


def _user_parts(rng: random.Random, user: int, arrive: float, gap_s: float) -> list[tuple[float, int, list]]:
    """One simulated end user: (due time, user, [(ms before the due time, type, page)]) for each batch."""
    n = rng.randint(*EVENTS_PER_USER)
    first = (n + 1) // 2
    pages = [rng.randrange(len(datagen.PATHS)) for _ in range(3)]
    kinds = ["page", *rng.choices(["track", "track", "track", "page"], k=n - 1)]
    # The first batch covers the last minute before it is sent, the second the 10 s before it.
    spread1 = sorted((rng.random() * 60_000 for _ in range(first)), reverse=True)
    spread2 = [*sorted((rng.random() * gap_s * 1000 for _ in range(n - first - 1)), reverse=True), 0.0]
    events = [(int(o), k, pages[i % 3]) for i, (o, k) in enumerate(zip(spread1 + spread2, kinds, strict=True))]
    return [(arrive, user, events[:first]), (arrive + gap_s, user, events[first:])]


def _message(spec: dict, user: int, seq: int, at_ms: int, kind: str, page: int) -> bytes:
    import msgspec

    path = datagen.PATHS[page]
    message: dict[str, Any] = {
        "type": kind,
        "userId": f"steady-{spec['run']}-{user:07d}",
        "anonymousId": f"anon-{spec['run']}-{user:07d}",
        "messageId": f"{spec['run']}-{user}-{seq}",
        "timestamp": at_ms,
        "context": {
            "sessionId": f"cs-{spec['run']}-{user:07d}",
            "page": {"url": f"https://app.acme.example{path}", "title": datagen.TITLES[page]},
        },
    }
    if kind == "track":
        message["event"] = "Report exported" if seq % 3 else "Clicked Save"
        message["properties"] = {"format": "csv", "rows": seq * 7}
    else:
        message["name"] = datagen.TITLES[page]
    return msgspec.json.encode(message)


async def _steady_drive(spec: dict[str, Any], pipe: Connection) -> dict[str, Any]:
    """Send the users' batches on schedule (open loop) over keep-alive connections."""
    rng = random.Random(spec["seed"])
    ips = [ip.encode() for ip in ingest._public_ips(rng, 2_000)]
    clock = time.perf_counter
    duration, gap_s = spec["duration_s"], spec["burst_gap_s"]
    user_rate = spec["rate"] / (sum(EVENTS_PER_USER) / 2)
    head = (
        b"POST /v1/batch?key=%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: %s\r\n"
        b"Content-Type: application/json\r\nConnection: keep-alive\r\n"
    ) % (spec["key"].encode(), spec["port"], USER_AGENT.encode())
    queue: asyncio.Queue = asyncio.Queue()
    stats = {"acked": 0, "sent": 0, "non_200": 0, "failures": [], "latency": [], "lag": []}
    acked_per_s: list[int] = []  # events acknowledged in each second of the run: shows stalls
    statuses: dict[int, int] = {}

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", spec["port"], limit=1 << 20)
        while (item := await queue.get()) is not None:
            messages, due = item
            t0 = clock()
            body = b'{"sentAt":%d,"batch":[%s]}' % (int(time.time() * 1000), b",".join(messages))
            ip = ips[len(stats["latency"]) % len(ips)]
            writer.write(head + b"X-Forwarded-For: %s\r\nContent-Length: %d\r\n\r\n" % (ip, len(body)) + body)
            stats["sent"] += len(messages)
            try:
                response = await reader.readuntil(b"\r\n\r\n")
                match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", response)
                text = await reader.readexactly(int(match.group(1))) if match else b""
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                # Counted as failed; carry on over a new connection so the rate holds.
                stats["non_200"] += 1
                if len(stats["failures"]) < 10:
                    stats["failures"].append(repr(exc))
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", spec["port"], limit=1 << 20)
                continue
            status = int(response[9:12])
            statuses[status] = statuses.get(status, 0) + 1
            stats["latency"].append(clock() - t0)
            stats["lag"].append(t0 - (start + due))
            if status == 200:
                stats["acked"] += len(messages)
                second = int(clock() - start)
                acked_per_s.extend([0] * (second + 1 - len(acked_per_s)))
                acked_per_s[second] += len(messages)
            else:
                stats["non_200"] += 1
                if len(stats["failures"]) < 10:
                    stats["failures"].append(f"{status}: {text[:300]!r}")
        writer.close()

    start, wall0 = clock(), time.time()
    workers = [asyncio.create_task(connection()) for _ in range(spec["connections"])]
    due: list[tuple[float, int, list]] = []
    pipe.send(("started", wall0))
    next_user, seq, last_report = 0, 0, 0.0
    load_end_wall = None
    while True:
        now = clock() - start
        while now < duration and next_user / user_rate <= now:
            for part in _user_parts(rng, next_user, next_user / user_rate, gap_s):
                heapq.heappush(due, part)
            next_user += 1
        if now >= duration and load_end_wall is None:
            load_end_wall = time.time()  # no new users from here on; second batches still go out
        batch: list[bytes] = []
        while due and due[0][0] <= now:
            at, user, events = heapq.heappop(due)
            at_ms = int((wall0 + at) * 1000) - BACKDATE_MS
            for before_ms, kind, page in events:
                batch.append(_message(spec, user, seq, at_ms - before_ms, kind, page))
                seq += 1
                if len(batch) == BATCH_EVENTS:
                    queue.put_nowait((batch, at))
                    batch = []
        if batch:
            queue.put_nowait((batch, now))
        if now - last_report >= 1:
            last_report = now
            pipe.send(("progress", {"t": now, "acked": stats["acked"], "queued_requests": queue.qsize()}))
        if now >= duration and not due:
            break
        await asyncio.sleep(0.05)
    # The run ends on time: what a server that fell behind has not taken by now is not sent.
    unsent = 0
    while not queue.empty():
        unsent += len(queue.get_nowait()[0])
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    latency = sorted(stats["latency"])
    lag = sorted(stats["lag"])
    return {
        "users": next_user,
        "acked": stats["acked"],
        "sent": stats["sent"],
        "unsent": unsent,
        "non_200": stats["non_200"],
        "statuses": statuses,
        "failures": stats["failures"],
        "requests": len(latency),
        "latency_p50_ms": _pct(latency, 0.5) * 1000,
        "latency_p99_ms": _pct(latency, 0.99) * 1000,
        "send_lag_p99_s": _pct(lag, 0.99),
        "send_lag_max_s": lag[-1] if lag else 0.0,
        "load_end_wall": load_end_wall,
        "acked_per_s": acked_per_s,
        "finished_wall": time.time(),
    }


def steady_load(spec: dict[str, Any], pipe: Connection) -> None:
    """Process entry point of the steady-state load generator."""
    try:
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            runner = asyncio.run
        pipe.send(("result", runner(_steady_drive(spec, pipe))))
    except Exception as exc:  # the parent must hear about it rather than wait forever
        pipe.send(("error", repr(exc)))
        raise


def _pct(values: list[float], q: float) -> float:
    """The q-quantile of sorted values (nearest rank); 0 for none."""
    if not values:
        return 0.0
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


# --- steady state: the run -----------------------------------------------------------------------------


@dataclass
class Steady:
    database: str
    rate: float
    duration_s: float
    users: int = 0
    events_acked: int = 0
    events_unsent: int = 0  # generated but still queued in the load generator when the run ended
    events_per_s: float = 0.0
    non_200: int = 0
    failures: list[str] = field(default_factory=list)
    request_p50_ms: float = 0.0
    request_p99_ms: float = 0.0
    send_lag_p99_s: float = 0.0
    send_lag_max_s: float = 0.0
    longest_stall_s: int = 0  # longest run of seconds in which no request was acknowledged
    client_queue_max: int = 0  # requests waiting in the load generator (the server fell behind)
    acked_per_s: list[int] = field(default_factory=list)
    sessions_closable: int = 0  # sessions that became closable during the load
    sessions_closed: int = 0  # ... of which closed by the end of the drain
    close_p50_s: float = 0.0  # closed_at - closable
    close_p99_s: float = 0.0
    close_max_s: float = 0.0
    visible_p50_s: float = 0.0  # End User Object committed - closable
    visible_p90_s: float = 0.0
    visible_p99_s: float = 0.0
    visible_max_s: float = 0.0
    visible_measured: int = 0
    still_open: int = 0  # closable during the load, not closed by the end of the drain
    not_sessionized: int = 0  # ... of which the events had not even been made into a session
    still_open_min_delay_s: float = 0.0
    drain_s: float = 0.0
    samples: list[dict[str, Any]] = field(default_factory=list)
    server_cpu: float = 0.0
    loadgen_cpu: float = 0.0
    other_cpu: float = 0.0
    backlog_verdict: str = ""


def _prepare_steady_project(url: str) -> tuple[int, str]:
    """A project whose production environment identifies users by a variable; (id, write key)."""
    import msgspec

    from usertrail.project_settings import UuidSettings
    from usertrail.store.database import create_engine
    from usertrail.store.projects import ProjectStore

    engine = create_engine(url)
    try:
        store = ProjectStore(engine)
        new = store.create("steady")
        production = store.environments(new.project.id)["production"]
        uuid = UuidSettings(provider="variable", source="currentUser.id")
        store.save_environment(new.project.id, "production", msgspec.structs.replace(production, uuid=uuid))
        return new.project.id, new.write_key
    finally:
        engine.dispose()


class _Sampler:
    """Reads the backlog while the server runs (its own connection: WAL and MVCC readers block nobody)."""

    def __init__(self, url: str, project_id: int) -> None:
        from usertrail.store.database import create_engine

        self.engine = create_engine(url)
        self.project_id = project_id
        self.sqlite_path = url.removeprefix("sqlite:///") if url.startswith("sqlite") else None
        self._sqlite = sqlite3.connect(self.sqlite_path, isolation_level=None) if self.sqlite_path else None
        self._last_rowid = 0
        self.visible: dict[str, int] = {}  # user key -> first time its End User Object was seen (ms)

    def backlog(self) -> dict[str, int]:
        import sqlalchemy as sa

        now = int(time.time() * 1000)
        with self.engine.connect() as conn:
            pending, claimed = conn.execute(
                sa.text("SELECT count(*), count(claimed_until) FROM pending_users WHERE project_id = :p").bindparams(
                    p=self.project_id
                )
            ).one()
            open_due, open_all, closed = conn.execute(
                sa.text(
                    "SELECT sum(CASE WHEN status = 'open' AND end_ts <= :due THEN 1 ELSE 0 END), "
                    "sum(CASE WHEN status = 'open' THEN 1 ELSE 0 END), "
                    "sum(CASE WHEN status = 'closed' THEN 1 ELSE 0 END) FROM sessions WHERE project_id = :p"
                ).bindparams(p=self.project_id, due=now - IDLE_MS)
            ).one()
        return {
            "pending": pending,
            "claimed": claimed,
            "open_closable": open_due or 0,
            "open": open_all or 0,
            "closed": closed or 0,
        }

    def poll_visible(self) -> None:
        """SQLite: new End User Object rows since the last poll (rowids only grow as rows are inserted)."""
        if self._sqlite is None:
            return
        now = int(time.time() * 1000)
        rows = self._sqlite.execute(
            "SELECT rowid, user_key FROM end_users WHERE rowid > ? AND project_id = ?",
            (self._last_rowid, self.project_id),
        ).fetchall()
        for rowid, key in rows:
            self.visible.setdefault(key, now)
            self._last_rowid = max(self._last_rowid, rowid)

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        self.engine.dispose()


def run_steady(database: str, url: str, args: argparse.Namespace, postmaster: int | None, work_dir: Path) -> Steady:
    """Start the server, drive it at a fixed rate for the run, drain, and measure close delays."""
    project_id, key = _prepare_steady_project(url)
    port = ingest.free_port()
    settings = Settings(
        data_dir=work_dir,
        database_url=url,
        trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),),
        # The bulk-loaded workload is from 2025: the daily retention job would delete all of it.
        user_retention_days=36_500,
        session_batch=args.session_batch,
    )
    result = Steady(database, args.rate, args.steady_minutes * 60)
    spec = {
        "port": port,
        "key": key,
        "rate": args.rate,
        "duration_s": args.steady_minutes * 60,
        "burst_gap_s": 10.0,
        "connections": args.connections,
        "seed": 3,
        "run": f"{database[:2]}{int(time.time()) % 100_000}",
    }
    server = ingest.start_server(port, 2, settings.to_env(), work_dir / "server.log")
    sampler = _Sampler(url, project_id)
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    loader = context.Process(target=steady_load, args=(spec, child_end), name="steady-loadgen", daemon=True)
    outcome: dict[str, Any] | None = None
    try:
        ingest.wait_for_quiet(args.quiet_wait)
        loader.start()
        message = _receive(parent_end, loader, server, 60)
        load_start_wall = message[1]
        server_pids = ingest.process_tree(server.pid) + (ingest.process_tree(postmaster) if postmaster else [])
        cpu0, busy0, t0 = ingest.cpu_seconds(server_pids), ingest.machine_busy(), time.monotonic()
        loader_cpu0 = ingest.cpu_seconds([loader.pid]) if loader.pid else 0.0
        next_sample = time.monotonic()
        acked = 0
        while outcome is None:
            if parent_end.poll(0.5):
                message = parent_end.recv()
                if message[0] == "error":
                    raise RuntimeError(f"load generator failed: {message[1]}")
                if message[0] == "progress":
                    acked = message[1]["acked"]
                    result.client_queue_max = max(result.client_queue_max, message[1]["queued_requests"])
                if message[0] == "result":
                    outcome = message[1]
            if not loader.is_alive() and outcome is None and not parent_end.poll(0):
                raise RuntimeError(f"load generator exited with {loader.exitcode}")
            if server.poll() is not None:
                raise RuntimeError(f"server exited with {server.returncode} during the run")
            sampler.poll_visible()
            if time.monotonic() >= next_sample:
                next_sample += 10
                t_s = round(time.time() - load_start_wall, 1)
                result.samples.append({"t_s": t_s, "acked": acked, **sampler.backlog()})
        cpu1, busy1 = ingest.cpu_seconds(server_pids), ingest.machine_busy()
        elapsed = time.monotonic() - t0
        loader_cpu1 = ingest.cpu_seconds([loader.pid]) if loader.pid else 0.0
        result.server_cpu = (cpu1 - cpu0) / elapsed
        result.loadgen_cpu = (loader_cpu1 - loader_cpu0) / elapsed
        result.other_cpu = max(0.0, ingest.busy_cores(busy0, busy1) - result.server_cpu - result.loadgen_cpu)
        # Drain: the last sessions become closable about 70 s after the load; wait for them (bounded).
        load_end_wall = outcome["load_end_wall"]
        drain_began = time.monotonic()
        while time.monotonic() - drain_began < args.max_drain:
            sampler.poll_visible()
            backlog = sampler.backlog()
            if time.monotonic() >= next_sample:
                next_sample += 10
                t_s = round(time.time() - load_start_wall, 1)
                result.samples.append({"t_s": t_s, "acked": outcome["acked"], **backlog})
            if time.time() > load_end_wall + 75 and backlog["pending"] == 0 and backlog["open_closable"] == 0:
                break
            time.sleep(1.0)
        result.drain_s = time.monotonic() - drain_began
        sampler.poll_visible()
        measured_at = int(time.time() * 1000)
    finally:
        loader.join(timeout=30)
        if loader.is_alive():
            loader.kill()
        ingest.stop_server(server)
    visible = dict(sampler.visible)
    if database == "postgresql":
        visible = _commit_times(sampler.engine, project_id)
    last_event, latest = _steady_sessions(sampler.engine, project_id)
    sampler.close()

    result.users = outcome["users"]
    result.events_acked = outcome["acked"]
    result.events_unsent = outcome["unsent"]
    result.events_per_s = outcome["acked"] / (outcome["finished_wall"] - load_start_wall)
    result.non_200 = outcome["non_200"]
    result.failures = outcome["failures"]
    result.request_p50_ms, result.request_p99_ms = outcome["latency_p50_ms"], outcome["latency_p99_ms"]
    result.send_lag_p99_s, result.send_lag_max_s = outcome["send_lag_p99_s"], outcome["send_lag_max_s"]
    result.acked_per_s = outcome["acked_per_s"]
    result.longest_stall_s = max(
        (len(list(g)) for zero, g in itertools.groupby(result.acked_per_s, key=bool) if not zero), default=0
    )
    window = (int(load_start_wall * 1000), int(load_end_wall * 1000))
    _close_delays(result, last_event, latest, visible, window, measured_at)
    result.backlog_verdict = _backlog_verdict(result.samples, result.duration_s)
    return result


def _receive(pipe: Connection, loader, server, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pipe.poll(0.05):
            message = pipe.recv()
            if message[0] == "error":
                raise RuntimeError(f"load generator failed: {message[1]}")
            return message
        if not loader.is_alive():
            raise RuntimeError(f"load generator exited with {loader.exitcode}")
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}")
    raise RuntimeError("timed out waiting for the load generator")


def _commit_times(engine, project_id: int) -> dict[str, int]:
    """PostgreSQL: when each End User Object row was committed (track_commit_timestamp)."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT user_key, (extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000)::bigint "
                "FROM end_users WHERE project_id = :p"
            ).bindparams(p=project_id)
        ).all()
    return {key: ms for key, ms in rows if ms is not None}


def _steady_sessions(engine, project_id: int) -> tuple[dict[str, int], dict[str, Any]]:
    """Each steady-state user's last event time, and their latest session (if any was made)."""
    import sqlalchemy as sa

    from usertrail.store.schema import events, sessions

    with engine.connect() as conn:
        last_event = dict(
            conn.execute(
                sa.select(events.c.user_key, sa.func.max(events.c.ts))
                .where(events.c.project_id == project_id)
                .group_by(events.c.user_key)
            ).all()
        )
        rows = conn.execute(
            sa.select(
                sessions.c.user_key,
                sessions.c.start_ts,
                sessions.c.end_ts,
                sessions.c.status,
                sessions.c.closed_at,
                sessions.c.is_empty,
            ).where(sessions.c.project_id == project_id)
        ).all()
    latest: dict[str, Any] = {}
    for row in rows:
        if row.user_key not in latest or row.start_ts > latest[row.user_key].start_ts:
            latest[row.user_key] = row
    return last_event, latest


def _close_delays(
    result: Steady,
    last_event: dict[str, int],
    latest: dict[str, Any],
    visible: dict[str, int],
    window: tuple[int, int],
    end: int,
) -> None:
    """Delays for the sessions that became closable during the load.

    Each simulated user has one session, closable 30 minutes after their last stored event. One
    not closed by the end (still open, or its events not even sessionized yet) has waited at
    least until then: it counts in the percentiles with that lower bound.
    """
    closes, shows, waiting = [], [], []
    for key, last_ts in last_event.items():
        closable = last_ts + IDLE_MS
        if not window[0] <= closable <= window[1]:
            continue
        result.sessions_closable += 1
        session = latest.get(key)
        if session is not None and session.status == "closed" and session.end_ts == last_ts:
            result.sessions_closed += 1
            closes.append((session.closed_at - closable) / 1000)
            if key in visible and not session.is_empty:
                shows.append((visible[key] - closable) / 1000)
        else:
            result.not_sessionized += session is None
            waiting.append((end - closable) / 1000)
    closes = sorted(closes + waiting)
    shows = sorted(shows + waiting)
    result.still_open = len(waiting)
    result.still_open_min_delay_s = min(waiting) if waiting else 0.0
    result.close_p50_s, result.close_p99_s = _pct(closes, 0.5), _pct(closes, 0.99)
    result.close_max_s = closes[-1] if closes else 0.0
    result.visible_measured = len(shows) - len(waiting)
    result.visible_p50_s, result.visible_p90_s = _pct(shows, 0.5), _pct(shows, 0.9)
    result.visible_p99_s = _pct(shows, 0.99)
    result.visible_max_s = shows[-1] if shows else 0.0


def _backlog_verdict(samples: list[dict[str, Any]], duration_s: float) -> str:
    """Compare the backlog in the last quarter of the load with the second quarter."""

    def mean_backlog(lo: float, hi: float) -> float | None:
        values = [s["pending"] + s["open_closable"] for s in samples if lo <= s["t_s"] < hi]
        return statistics.mean(values) if values else None

    second = mean_backlog(duration_s / 4, duration_s / 2)
    last = mean_backlog(duration_s * 3 / 4, duration_s)
    if second is None or last is None:
        return "not enough samples"
    grows = last > 1.5 * second + 500
    return f"{'grows' if grows else 'flat'}: mean backlog {second:,.0f} in the 2nd quarter, {last:,.0f} in the last"


# --- reporting -------------------------------------------------------------------------------------


def rebuild_table(rebuilds: list[Rebuild], duck: DuckResult) -> str:
    """Markdown table: rebuild time per engine against the DuckDB ceiling."""
    lines = [
        "| engine | events | load s | rebuild s (median) | runs s (the first right after the load) | × DuckDB "
        "| target ≤ 5× | sessions / End User Objects each run stamped | after every stored row changed s "
        "| Python CPU | DB CPU | other CPU | CPU probe | users | sessions closed | End User Objects "
        "| equal to DuckDB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rebuilds:
        ratio = r.rebuild_s / duck.ceiling_s
        equal = r.check.get("all_runs_equal")
        runs = ", ".join(f"{t:.1f}" for t in r.runs_s)
        stamped = "; ".join(f"{s:,} / {u:,}" for s, u in r.stamped)
        changed = "" if r.changed_s is None else f"{r.changed_s:.1f} ({r.changed_s / duck.ceiling_s:.1f}×)"
        if r.changed_equal is False:
            changed += ", NOT equal to DuckDB"
        lines.append(
            f"| {r.database} | {r.events:,} | {r.load_s:.0f} | {r.rebuild_s:.1f} | {runs} | {ratio:.1f}× "
            f"| {'met' if ratio <= TARGET_RATIO else 'missed'} | {stamped} | {changed} | {r.python_cpu:.2f} "
            f"| {r.db_cpu:.2f} "
            f"| {r.other_cpu:.2f} | {r.cpu_probe_mops:.0f} | {r.users:,} | {r.sessions_closed:,} | {r.profiles:,} "
            f"| {'yes' if equal else 'NO'} |"
        )
    parquet = ", ".join(f"{t:.2f}" for t in duck.over_parquet_s)
    table = ", ".join(f"{t:.2f}" for t in duck.over_table_s)
    lines.append(
        f"| DuckDB {duck.version} ({duck.threads} threads) | | "
        f"| **{duck.ceiling_s:.2f}** over Parquet (runs: {parquet}); "
        f"{statistics.median(duck.over_table_s):.2f} over a loaded table (runs: {table}) | | 1.0× | | | | | | | | "
        f"{duck.users:,} | {duck.sessions:,} sessions ({duck.closed:,} closed) | {duck.users:,} | |"
    )
    return "\n".join(lines)


def steady_table(runs: list[Steady]) -> str:
    """Markdown table: steady-state close delays and backlog."""
    lines = [
        "| engine | minutes | events/s acked (offered) | events not sent (server behind) | end users "
        "| request p50/p99 ms | longest ack stall s "
        "| sessions closable during the load | closed by the end | close delay p50 / p99 / max s "
        "| End User Object delay p50 / p90 / p99 / max s | target p99 ≤ 60 s | backlog | server CPU "
        "| load gen CPU | other CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in runs:
        at_least = "≥ " if s.still_open else ""
        lines.append(
            f"| {s.database} | {s.duration_s / 60:g} | {s.events_per_s:,.0f} ({s.rate:,.0f}) | {s.events_unsent:,} "
            f"| {s.users:,} "
            f"| {s.request_p50_ms:.0f} / {s.request_p99_ms:.0f} | {s.longest_stall_s} | {s.sessions_closable:,} "
            f"| {s.sessions_closed:,} ({s.still_open:,} not: {s.not_sessionized:,} of them never sessionized) "
            f"| {at_least}{s.close_p50_s:.1f} / {at_least}{s.close_p99_s:.1f} / {at_least}{s.close_max_s:.1f} "
            f"| {at_least}{s.visible_p50_s:.1f} / {at_least}{s.visible_p90_s:.1f} / {at_least}{s.visible_p99_s:.1f} / "
            f"{at_least}{s.visible_max_s:.1f} "
            f"| {'met' if s.visible_p99_s <= TARGET_P99_S and s.still_open == 0 else 'missed'} "
            f"| {s.backlog_verdict} | {s.server_cpu:.2f} | {s.loadgen_cpu:.2f} | {s.other_cpu:.2f} |"
        )
    return "\n".join(lines)


def samples_table(run: Steady) -> str:
    """The backlog every ~10 s (every 60 s shown for long runs)."""
    step = 1 if run.duration_s <= 180 else 6
    lines = [
        f"{run.database}: backlog over time (t = seconds since the load started; the load ends at "
        f"{run.duration_s:.0f} s)",
        "",
        "| t s | events acked | pending users (claimed) | open sessions | open and closable | closed |",
        "|---|---|---|---|---|---|",
    ]
    for i, s in enumerate(run.samples):
        if i % step == 0 or i == len(run.samples) - 1:
            lines.append(
                f"| {s['t_s']:.0f} | {s['acked']:,} | {s['pending']:,} ({s['claimed']:,}) | {s['open']:,} "
                f"| {s['open_closable']:,} | {s['closed']:,} |"
            )
    return "\n".join(lines)


def docs_block(payload: dict[str, Any], rebuilds: list[Rebuild], duck: DuckResult, steadies: list[Steady]) -> str:
    """The generated part of the docs section."""
    info = payload["machine"]
    w = payload["workload"]
    parts = [
        RESULTS_START,
        "",
        f"- **Date:** {payload['date']}",
        f"- **Command:** `{payload['command']}`",
        f"- **Machine:** {info['nproc']} cores (`nproc`), {info['cpu_model']}, {info['memory']} RAM, {info['os']}",
        f"- **Software:** Python {info['python']}, {info['packages']}, duckdb {duck.version}, {info['postgres']}",
        f"- **Code:** {info['code']}",
        f"- **Workload:** `bench/datagen.py`, {w['events']:,} events, {w['users']:,} end users, {w['days']} days "
        f"ending {w['end']}, seed {w['seed']}; rebuild at `now` = the end of the 90 days; PostgreSQL settings "
        f"{', '.join(f'{k}={v}' for k, v in PG_SETTINGS.items())} (fsync on); raw results in "
        f"`bench/results/{payload['json']}` (git-ignored)",
        "",
        "Full rebuild (`SessionProcessor.rebuild`) against DuckDB SQL over the Parquet export. Each engine rebuilds "
        f"{payload['rebuild_repeat']} times in a row (the first right after the bulk load, each later one "
        f"{RUN_STEP_MS / 1000:g} s later in `now`), every run checked against DuckDB's result; the median run is "
        "compared with the median of DuckDB's runs, and its CPU is shown"
        + (
            ". Then every stored session and End User Object is changed, and one more rebuild is timed and checked "
            "(not in the median):"
            if payload["changed_run"]
            else ":"
        ),
        "",
        rebuild_table(rebuilds, duck),
        "",
    ]
    for r in rebuilds:
        users, sessions = r.check["users"], r.check["sessions"]
        parts.append(
            f"- {r.database} check: End User Objects {users['product']:,} vs DuckDB {users['duckdb']:,}, "
            f"columns differing {users['mismatched_rows_by_column'] or 'none'}; sessions {sessions['product']:,} "
            f"vs {sessions['duckdb']:,} ({r.check['sessions_closed']:,} closed, {r.check['sessions_empty']:,} empty), "
            f"columns differing {sessions['mismatched_rows_by_column'] or 'none'}"
        )
    if steadies:
        parts += ["", "Steady state (the server's own session loop, 2 workers, native batches over HTTP):", ""]
        parts.append(steady_table(steadies))
        for s in steadies:
            parts += ["", samples_table(s)]
    parts += ["", RESULTS_END]
    return "\n".join(parts)


def update_docs(block: str) -> None:
    """Replace the generated block in this benchmark's section (the section is created if missing)."""
    text = DOCS_FILE.read_text() if DOCS_FILE.exists() else "# Benchmarks\n"
    if RESULTS_START in text and RESULTS_END in text:
        before, rest = text.split(RESULTS_START, 1)
        text = before + block + rest.split(RESULTS_END, 1)[1]
    elif DOCS_SECTION in text:
        head, tail = text.split(DOCS_SECTION, 1)
        text = head + DOCS_SECTION + "\n\n" + block + "\n" + tail
    else:
        text = text.rstrip("\n") + f"\n\n{DOCS_SECTION}\n\n{block}\n"
    DOCS_FILE.write_text(text)


# --- the run -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; the defaults are the published configuration."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="500k events, 20k users, 2-min steady state; no docs")
    p.add_argument("--databases", default="sqlite,postgresql", help="rebuild on these: sqlite, postgresql")
    p.add_argument("--steady", default="sqlite", help="steady state on these (comma-separated; '' for none)")
    p.add_argument(
        "--session-batch", type=int, default=Settings().session_batch, help="users per session-loop transaction"
    )
    p.add_argument("--steady-minutes", type=float, help="length of the steady-state load (default 10, --quick 2)")
    p.add_argument("--rate", type=float, default=5_000, help="events/s sent in the steady state")
    p.add_argument("--connections", type=int, default=8, help="keep-alive connections of the load generator")
    p.add_argument("--max-drain", type=float, default=75, help="seconds to wait after the load for closes")
    p.add_argument("--duck-repeat", type=int, default=3, help="DuckDB runs (the median is the ceiling)")
    p.add_argument(
        "--rebuild-repeat", type=int, default=3, help="rebuilds per engine (the median is compared with the ceiling)"
    )
    p.add_argument(
        "--changed-run",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after the timed runs, change every stored session and End User Object and time one more rebuild "
        "(reported apart, not in the median)",
    )
    p.add_argument("--profile", action="store_true", help="cProfile one more SQLite rebuild and print it")
    p.add_argument("--regenerate", action="store_true", help="regenerate the cached CSV/Parquet export")
    p.add_argument("--quiet-wait", type=float, default=20.0, help="seconds to wait for an idle machine before timing")
    p.add_argument("--keep", action="store_true", help="keep the scratch databases (path printed)")
    p.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    p.add_argument("--update-docs", action="store_true", help="update docs/benchmarks.md even with --quick")
    args = p.parse_args(argv)
    if args.steady_minutes is None:
        args.steady_minutes = 2.0 if args.quick else 10.0
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 1 if a check failed (results differ from DuckDB, or requests failed)."""
    args = parse_args(argv)
    command = (
        ".venv/bin/python bench/sessions.py" + (" " + shlex.join(argv if argv is not None else sys.argv[1:])).rstrip()
    )
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    info = ingest.machine_info()
    print(f"machine: {info['nproc']} cores, {info['cpu_model']}, {info['memory']}, {info['os']}", flush=True)
    workload = datagen.QUICK if args.quick else datagen.FULL
    now = workload.end_ms
    databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    steady_on = [d.strip() for d in args.steady.split(",") if d.strip()]

    print(f"workload: {workload}", flush=True)
    csv_path, parquet_path, gen_timings = ensure_exports(workload, args.regenerate)
    for name, seconds in gen_timings.items():
        print(f"    {name}: {seconds:.1f} s", flush=True)
    ingest.wait_for_quiet(args.quiet_wait)
    duck, con = run_duckdb(parquet_path, 1, now, args.duck_repeat)
    print(
        f"duckdb {duck.version}: {duck.ceiling_s:.2f} s over Parquet (runs {duck.over_parquet_s}), "
        f"{statistics.median(duck.over_table_s):.2f} s over a table; {duck.sessions:,} sessions, {duck.users:,} users",
        flush=True,
    )

    rebuilds: list[Rebuild] = []
    steadies: list[Steady] = []
    scratch = Path(tempfile.mkdtemp(prefix="usertrail-sessions-"))
    failed = False
    try:
        for database in databases:
            with contextlib.ExitStack() as stack:
                postmaster = None
                if database == "sqlite":
                    url = f"sqlite:///{scratch / 'sessions.db'}"
                else:
                    from usertrail.testing.postgres import PostgresUnavailable, TemporaryPostgres

                    try:
                        pg = TemporaryPostgres(PG_SETTINGS)
                    except PostgresUnavailable as exc:
                        print(f"skipping postgresql: {exc}")
                        continue
                    cluster_url = pg.start()
                    stack.callback(pg.stop)
                    postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
                    import sqlalchemy as sa

                    admin = sa.create_engine(cluster_url, isolation_level="AUTOCOMMIT")
                    with admin.connect() as conn:
                        conn.exec_driver_sql("CREATE DATABASE bench_sessions")
                    admin.dispose()
                    url = cluster_url.rsplit("/", 1)[0] + "/bench_sessions"
                print(f"{database}: loading {workload.events:,} events ...", flush=True)
                project_id, n, load_s = load(database, url, workload, csv_path)
                print(f"    loaded {n:,} events in {load_s:.1f} s", flush=True)

                from usertrail.store.database import create_engine

                engine = create_engine(url)
                stack.callback(engine.dispose)
                print(f"{database}: rebuild, {args.rebuild_repeat} runs ...", flush=True)
                runs = []
                for run in range(args.rebuild_repeat):
                    run_now = now + run * RUN_STEP_MS
                    timed = time_rebuild(engine, project_id, run_now, postmaster, args.quiet_wait)
                    # Every run replaces the last one's rows: each is checked against DuckDB's.
                    timed.check = check_against_duckdb(engine, project_id, con)
                    timed.stamped = [count_stamped(engine, project_id, run_now)]
                    equal = timed.check["users"]["equal"] and timed.check["sessions"]["equal"]
                    failed |= not equal
                    print(
                        f"    run {run + 1}: {timed.rebuild_s:.1f} s = {timed.rebuild_s / duck.ceiling_s:.1f}× DuckDB; "
                        f"CPU: python {timed.python_cpu:.2f}, db {timed.db_cpu:.2f}, other {timed.other_cpu:.2f}; "
                        f"equal to DuckDB: {equal}; sessions / End User Objects it stamped: "
                        f"{timed.stamped[0][0]:,} / {timed.stamped[0][1]:,}",
                        flush=True,
                    )
                    for line in timed.check["users"]["examples"] + timed.check["sessions"]["examples"]:
                        print(f"    {line}")
                    runs.append(timed)
                # The median run stands for the engine, as the median of DuckDB's runs is the ceiling.
                rebuild = sorted(runs, key=lambda r: r.rebuild_s)[len(runs) // 2]
                rebuild.events, rebuild.load_s = n, load_s
                rebuild.runs_s = [r.rebuild_s for r in runs]
                rebuild.check["all_runs_equal"] = all(
                    r.check["users"]["equal"] and r.check["sessions"]["equal"] for r in runs
                )
                rebuild.stamped = [r.stamped[0] for r in runs]
                if args.changed_run:
                    change_every_row(engine, project_id)
                    changed = time_rebuild(
                        engine, project_id, now + args.rebuild_repeat * RUN_STEP_MS, postmaster, args.quiet_wait
                    )
                    check = check_against_duckdb(engine, project_id, con)
                    rebuild.changed_s = changed.rebuild_s
                    rebuild.changed_equal = check["users"]["equal"] and check["sessions"]["equal"]
                    failed |= not rebuild.changed_equal
                    print(
                        f"    after every stored session and End User Object was changed: {changed.rebuild_s:.1f} s "
                        f"= {changed.rebuild_s / duck.ceiling_s:.1f}× DuckDB; equal to DuckDB: {rebuild.changed_equal}",
                        flush=True,
                    )
                rebuilds.append(rebuild)
                if args.profile and database == "sqlite":
                    rebuild.profile = profile_rebuild(engine, project_id, now, 30)
                    print(rebuild.profile)
                if database in steady_on:
                    print(f"{database}: steady state, {args.rate:,.0f} events/s for {args.steady_minutes:g} min ...")
                    work_dir = scratch / f"steady-{database}"
                    work_dir.mkdir()
                    steady = run_steady(database, url, args, postmaster, work_dir)
                    steadies.append(steady)
                    failed |= steady.non_200 > 0
                    print(steady_table([steady]))
                    print()
                    print(samples_table(steady), flush=True)
                if args.keep:
                    print(f"    kept: {url}")
                    stack.pop_all()
    finally:
        con.close()
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)

    print()
    print(rebuild_table(rebuilds, duck))
    if steadies:
        print()
        print(steady_table(steadies))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    json_name = f"sessions-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if args.quick else ''}.json"
    payload = {
        "benchmark": "sessions",
        "date": started,
        "command": command,
        "machine": info,
        "json": json_name,
        "workload": {
            "events": workload.events,
            "users": workload.users,
            "days": workload.days,
            "seed": workload.seed,
            "end": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(workload.end_ms / 1000)),
        },
        "generation": gen_timings,
        "rebuild_repeat": args.rebuild_repeat,
        "run_step_ms": RUN_STEP_MS,
        "changed_run": args.changed_run,
        "duckdb": duck.__dict__,
        "rebuilds": [r.__dict__ for r in rebuilds],
        "steady": [s.__dict__ for s in steadies],
    }
    (RESULTS_DIR / json_name).write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"\nJSON: {RESULTS_DIR / json_name}")
    if not args.no_docs and (not args.quick or args.update_docs):
        update_docs(docs_block(payload, rebuilds, duck, steadies))
        print(f"updated {DOCS_FILE.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
