"""A deterministic event workload: 5,000,000 events from 200,000 end users over 90 days.

    .venv/bin/python bench/datagen.py --sqlite /tmp/ut.db                 # migrate, create a project, load
    .venv/bin/python bench/datagen.py --postgres postgresql://…/db        # same, with COPY
    .venv/bin/python bench/datagen.py --parquet /tmp/events.parquet       # export (needs duckdb)
    .venv/bin/python bench/datagen.py --events 500000 --users 20000 --csv /tmp/events.csv

The shape follows the engines study (shared/research/engines.md): events per end user are
log-normal, a quarter of the users come once, the others come back over an exponential lifetime
(mean 20 days), sessions last at most 25 minutes with about 9 events each. Each user has a home
city and a browser; a few events come from elsewhere or from another browser, some users upgrade
their browser, a few events have no location. About 8% of sessions are passive (a page load and
heartbeats only: empty sessions), and a few heavy users have one "marathon" day of activity longer
than 12 hours, so the 12-hour session cap is exercised too.

Everything comes from one `random.Random(seed)` (no numpy here), so the same `Workload` always
gives byte-identical rows. `rows()` yields tuples in `EVENT_COLUMNS` order, by default in
arrival order (event time), as a real event log is written; `order="user"` gives (user, time).
Later benchmarks import `Workload`, `rows` and the loaders from this module.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import itertools
import operator
import random
import sqlite3
import sys
import tempfile
import time
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from usertrail.store.events import EVENT_COLUMNS, STORED_COLUMNS, stored_row

DAY_MS = 86_400_000
MINUTE_MS = 60_000
END_MS = 1_748_736_000_000  # 2025-06-01T00:00:00Z: the end of the 90 days, fixed so runs compare

# (country, region, city): the home of each user, weighted towards the first entries.
CITIES = [
    ("US", "California", "San Francisco"), ("US", "New York", "New York"), ("US", "Texas", "Austin"),
    ("US", "Washington", "Seattle"), ("US", "Illinois", "Chicago"), ("US", "Massachusetts", "Boston"),
    ("GB", "England", "London"), ("GB", "Scotland", "Edinburgh"), ("DE", "Berlin", "Berlin"),
    ("DE", "Bavaria", "Munich"), ("DE", "Hamburg", "Hamburg"), ("FR", "Île-de-France", "Paris"),
    ("FR", "Auvergne-Rhône-Alpes", "Lyon"), ("IL", "Tel Aviv", "Tel Aviv"), ("IL", "Jerusalem", "Jerusalem"),
    ("IN", "Karnataka", "Bengaluru"), ("IN", "Maharashtra", "Mumbai"), ("JP", "Tokyo", "Tokyo"),
    ("BR", "São Paulo", "São Paulo"), ("CA", "Ontario", "Toronto"), ("CA", "Quebec", "Montreal"),
    ("AU", "New South Wales", "Sydney"), ("AU", "Victoria", "Melbourne"), ("NL", "North Holland", "Amsterdam"),
    ("ES", "Madrid", "Madrid"), ("ES", "Catalonia", "Barcelona"), ("SG", "Singapore", "Singapore"),
    ("PL", "Masovia", "Warsaw"),
]  # fmt: skip
CITY_WEIGHTS = list(itertools.accumulate(1 / (i + 1) ** 0.8 for i in range(len(CITIES))))

# (browser, version, os, device type, weight); an upgrade moves a user to the next version.
BROWSERS = [
    ("Chrome", "125.0.0", "Windows", "desktop", 30),
    ("Chrome", "124.0.0", "Mac OS X", "desktop", 20),
    ("Edge", "125.0.0", "Windows", "desktop", 15),
    ("Firefox", "126.0", "Linux", "desktop", 10),
    ("Safari", "17.4", "Mac OS X", "desktop", 15),
    ("Mobile Safari", "17.4", "iOS", "mobile", 5),
    ("Chrome Mobile", "125.0.0", "Android", "mobile", 5),
]
BROWSER_WEIGHTS = list(itertools.accumulate(b[4] for b in BROWSERS))
PLANS = ["free", "pro", "VIP"]

# WalkMe and native event types: (type, app_type, weight). The first event of every session is a
# page change; passive types (see sessions/rules.py) make up about a quarter of the rest.
EVENT_TYPES = [
    ("pageChange", None, 18),
    ("click", "launcher", 16),
    ("click", "shoutout", 10),
    ("play", "wt", 8),
    ("play", "step", 4),
    ("complete", "wt", 5),
    ("sessionPing", None, 14),
    ("loaded", "launcher", 6),
    ("visible", "shoutout", 4),
    ("search", "widgetSearch", 4),
    ("submitted", "survey", 3),
    ("open", "player", 4),
    ("idle", None, 2),
    ("track", None, 2),
]
TYPE_WEIGHTS = list(itertools.accumulate(t[2] for t in EVENT_TYPES))
PAGE_CHANGE = 0
# Passive sessions: one page load, then only heartbeats and items appearing.
PASSIVE_FOLLOWERS = [i for i, t in enumerate(EVENT_TYPES) if t[0] in ("sessionPing", "loaded", "visible", "idle")]
OBJECTS = {
    "launcher": ("7001", "Need help?"),
    "shoutout": ("5002", "Upgrade to VIP"),
    "wt": ("124910", "Create your first report"),
    "step": ("12491003", "Create your first report · step 3"),
    "widgetSearch": (None, "billing"),
    "survey": ("9001", "How are we doing?"),
    "player": (None, "Menu"),
}
SECTIONS = ["home", "reports", "dashboards", "settings", "billing", "users", "projects", "inbox", "help", "admin"]
PATHS = [f"/{SECTIONS[i % len(SECTIONS)]}/{i // len(SECTIONS)}" if i >= len(SECTIONS) else f"/{SECTIONS[i]}"
         for i in range(200)]  # fmt: skip
PATH_WEIGHTS = list(itertools.accumulate(1 / (i + 1) for i in range(len(PATHS))))  # Zipf
TITLES = [f"{p.strip('/').replace('/', ' ').title()} - Acme" for p in PATHS]

MAX_SESSION_SPAN_MS = 25 * MINUTE_MS
SINGLE_VISIT_SHARE = 0.25
PASSIVE_SESSION_SHARE = 0.08
MARATHON_EVENTS = 50  # a marathon day: 50 events 5-25 minutes apart, about 12.5 hours
UNLOCATED, TRAVEL, OTHER_BROWSER = 0.01, 0.02, 0.03
TRAVELLED = UNLOCATED + TRAVEL
ANY_EXTRA = TRAVELLED + OTHER_BROWSER


@dataclass(frozen=True)
class Workload:
    """What to generate. Equal workloads give identical rows."""

    events: int = 5_000_000
    users: int = 200_000
    days: int = 90
    end_ms: int = END_MS
    seed: int = 20240601

    @property
    def start_ms(self) -> int:
        return self.end_ms - self.days * DAY_MS

    @property
    def name(self) -> str:
        """A short name for files holding this workload."""
        return f"events-{self.events}-{self.users}-{self.days}d-{self.seed}"


FULL = Workload()
QUICK = Workload(events=500_000, users=20_000)


@dataclass
class _Plan:
    """The whole workload in compact arrays (about 25 bytes per event): rows are built from it."""

    # per user
    city: array
    browser: array
    plan: bytearray
    upgrade_at: array  # event time from which the user's browser is one version newer (or never)
    # per event, in generation order: user by user, then by time
    ts: array
    user: array
    session: array  # session number within the user (the client session id derives from it)
    kind: bytearray  # index into EVENT_TYPES
    path: array
    extra: bytearray  # 0 normal, 1 unlocated, 2 travelling (location from `travel`), 3 other browser
    travel: array


def _allocate(rng: random.Random, workload: Workload) -> tuple[list[int], list[bool]]:
    """Events per user: single-visit users get a few, the rest share the remainder log-normally."""
    single = [rng.random() < SINGLE_VISIT_SHARE for _ in range(workload.users)]
    counts = [0] * workload.users
    weights = [0.0] * workload.users
    for u in range(workload.users):
        if single[u]:
            counts[u] = 1 + min(int(rng.expovariate(1 / 8)), 40)
        else:
            counts[u] = 2  # a returning user has at least two sessions, so at least two events
            weights[u] = rng.lognormvariate(0.0, 1.1)
    left = workload.events - sum(counts)
    if left < 0:
        raise ValueError(f"{workload.events} events are too few for {workload.users} users")
    total_weight = sum(weights)
    shares = [w / total_weight * left for w in weights]
    for u, share in enumerate(shares):
        counts[u] += int(share)
    # Largest remainders get the events rounding left over, so the total is exact.
    short = workload.events - sum(counts)
    by_remainder = sorted(range(workload.users), key=lambda u: (shares[u] - int(shares[u]), -u), reverse=True)
    for u in by_remainder[:short]:
        counts[u] += 1
    return counts, single


def _composition(rng: random.Random, total: int, parts: int) -> list[int]:
    """`total` split into `parts` positive integers, uniformly among all such splits."""
    if parts <= 1:
        return [total]
    cuts = sorted(rng.sample(range(1, total), parts - 1))
    return [b - a for a, b in itertools.pairwise([0, *cuts, total])]


def _plan(workload: Workload) -> _Plan:
    rng = random.Random(workload.seed)
    counts, single = _allocate(rng, workload)
    p = _Plan(
        city=array("H"),
        browser=array("B"),
        plan=bytearray(),
        upgrade_at=array("q"),
        ts=array("q"),
        user=array("i"),
        session=array("I"),
        kind=bytearray(),
        path=array("H"),
        extra=bytearray(),
        travel=array("H"),
    )
    start, end = workload.start_ms, workload.end_ms
    window = end - start
    choices, rand, uniform = rng.choices, rng.random, rng.uniform
    kinds = range(len(EVENT_TYPES))
    cities = range(len(CITIES))
    path_range = range(len(PATHS))
    for u in range(workload.users):
        n = counts[u]
        p.city.append(choices(cities, cum_weights=CITY_WEIGHTS)[0])
        p.browser.append(choices(range(len(BROWSERS)), cum_weights=BROWSER_WEIGHTS)[0])
        p.plan.append(choices((0, 1, 2), (70, 25, 5))[0])
        if single[u]:
            sessions = 1
            life = 0.0
        else:
            sessions = min(n, max(2, round(n / 9 * uniform(0.7, 1.3))))
            # Busy users need room: at least two hours per session.
            life = min(window - DAY_MS, max(rng.expovariate(1 / (20 * DAY_MS)), sessions * 7_200_000))
        first = uniform(start, end - life - MAX_SESSION_SPAN_MS)
        starts = sorted([first, *(uniform(first, first + life) for _ in range(sessions - 1))])
        marathon = not single[u] and n >= 2 * MARATHON_EVENTS and rand() < 0.02
        if marathon:
            # The 12-hour cap needs a run of activity longer than 12 hours: session 0 gets 50 events.
            sizes = [MARATHON_EVENTS, *_composition(rng, n - MARATHON_EVENTS, sessions - 1)]
            starts[0] = min(starts[0], end - 21 * 3_600_000)
        else:
            sizes = _composition(rng, n, sessions)
        upgrade = rand() < 0.08 and not single[u]
        p.upgrade_at.append(int(uniform(first, first + life)) if upgrade else 2**62)
        for si, (s0, k) in enumerate(zip(starts, sizes, strict=True)):
            if marathon and si == 0:
                offsets = list(itertools.accumulate(uniform(5, 25) * MINUTE_MS for _ in range(k - 1)))
                span = offsets[-1]
            elif k > 1:
                span = min(MAX_SESSION_SPAN_MS, uniform(0.5, 1.5) * (k - 1) * 90_000)
                offsets = sorted(rand() * span for _ in range(k - 1))
            else:
                span, offsets = 0, []
            s0 = min(s0, end - span - 1)
            times = [int(s0), *(int(s0 + o) for o in offsets)]
            if rand() < PASSIVE_SESSION_SHARE and not (marathon and si == 0):
                types = [PAGE_CHANGE, *choices(PASSIVE_FOLLOWERS, k=k - 1)]
            else:
                types = [PAGE_CHANGE, *choices(kinds, cum_weights=TYPE_WEIGHTS, k=k - 1)]
            # Every session starts with a page change, so the page is always drawn before it is used.
            pages = iter(choices(path_range, cum_weights=PATH_WEIGHTS, k=types.count(PAGE_CHANGE)))
            paths = []
            for kind in types:
                if kind == PAGE_CHANGE:
                    path = next(pages)
                paths.append(path)
            draws = [rand() for _ in range(k)]
            p.extra.extend([0 if r >= ANY_EXTRA else 1 if r < UNLOCATED else 2 if r < TRAVELLED else 3 for r in draws])
            p.travel.extend([int(r * 1e6) % len(CITIES) if UNLOCATED <= r < TRAVELLED else 0 for r in draws])
            p.ts.extend(times)
            p.user.extend([u] * k)
            p.session.extend([si] * k)
            p.kind.extend(types)
            p.path.extend(paths)
    assert len(p.ts) == workload.events
    return p


# The values are built in this order, then put in EVENT_COLUMNS order by one itemgetter call.
_BUILD_ORDER = (
    "project_id", "user_key", "event_id", "ts", "client_ts", "received_at", "env", "source", "type", "name",
    "app_type", "object_id", "object_name", "session_hint", "visit_id", "anon_id", "user_id", "id_source",
    "url_host", "url_path", "title", "country", "region", "city", "browser", "browser_version", "os",
    "device_type", "is_mobile", "ip_masked", "payload",
)  # fmt: skip


def _reorder() -> operator.itemgetter:
    # A column added to the schema later is filled with NULL (the index one past the built values).
    return operator.itemgetter(
        *(_BUILD_ORDER.index(c) if c in _BUILD_ORDER else len(_BUILD_ORDER) for c in EVENT_COLUMNS)
    )


def rows(workload: Workload = FULL, project_id: int = 1, order: str = "time") -> Iterator[tuple]:
    """The workload's events as `events` row tuples (EVENT_COLUMNS order).

    `order="time"`: by event time, as they would have been written (ties keep user order);
    `order="user"`: by user, then time. User keys are `u:user-000123`; event ids are 32 hex
    characters (like the server's 128-bit ids), unique across the workload.
    """
    p = _plan(workload)
    if order == "time":
        indices: Iterable[int] = sorted(range(len(p.ts)), key=p.ts.__getitem__)
    elif order == "user":
        indices = range(len(p.ts))
    else:
        raise ValueError(f"order must be 'time' or 'user', not {order!r}")
    reorder = _reorder()
    seed = workload.seed
    blake = hashlib.blake2b
    user_ids = [f"user-{u:06d}" for u in range(workload.users)]
    plans = [f'"plan":"{PLANS[c]}"' for c in p.plan]
    upgraded = [_next_version(b) for b in BROWSERS]
    for g in indices:
        u = p.user[g]
        ts = p.ts[g]
        type_, app_type, _ = EVENT_TYPES[p.kind[g]]
        extra = p.extra[g]
        if extra == 1:
            country = region = city = None
        else:
            country, region, city = CITIES[p.travel[g] if extra == 2 else p.city[u]]
        b = p.browser[u]
        if extra == 3:
            b = (b + 3) % len(BROWSERS)
        browser, version, os_name, device, _ = BROWSERS[b]
        if ts >= p.upgrade_at[u] and extra != 3:
            version = upgraded[b]
        object_id, object_name = OBJECTS.get(app_type, (None, None))  # type: ignore[arg-type]
        path = p.path[g]
        uid = user_ids[u]
        yield reorder(
            (
                project_id,
                "u:" + uid,
                blake(b"%d/%d" % (seed, g), digest_size=16).hexdigest(),
                ts,
                ts,
                ts + 150 + g % 1_850,  # received shortly after
                "production",
                "native",
                type_,
                None,
                app_type,
                object_id,
                object_name,
                f"cs-{u:06d}-{p.session[g]:05d}",
                None,
                None,
                uid,
                "variable",
                "app.acme.example",
                PATHS[path],
                TITLES[path],
                country,
                region,
                city,
                browser,
                version,
                os_name,
                device,
                device == "mobile",
                f"198.51.{u % 250}.0",
                f'{{"event":"{type_}",{plans[u]},"v":{g % 1000}}}',
                None,
            )
        )


def _next_version(browser: tuple) -> str:
    major, _, rest = browser[1].partition(".")
    return f"{int(major) + 1}.{rest}"


# --- writers ------------------------------------------------------------------------------------


def _chunks(it: Iterable[tuple], size: int) -> Iterator[list[tuple]]:
    it = iter(it)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def load_sqlite(url_or_path: str, rows_: Iterable[tuple], chunk: int = 100_000) -> int:
    """Append rows to `events` of a migrated SQLite database with the raw driver; returns the count.

    Bulk-load settings for this connection only (no fsync until the end, a 1 GB page cache), and
    the secondary index is dropped and rebuilt after the load (a sort beats 5M random inserts).
    """
    path = url_or_path.removeprefix("sqlite:///")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-1000000")
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type='index' AND tbl_name='events' AND sql IS NOT NULL"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        sql = f"INSERT INTO events ({', '.join(STORED_COLUMNS)}) VALUES ({', '.join('?' * len(STORED_COLUMNS))})"
        count = 0
        for batch in _chunks(map(stored_row, rows_), chunk):
            conn.execute("BEGIN")
            conn.executemany(sql, batch)
            conn.execute("COMMIT")
            count += len(batch)
        for _, create in indexes:
            conn.execute(create)
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return count
    finally:
        conn.close()


def _csv_text(batch: list[tuple]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(batch)
    return out.getvalue()


def load_postgres(url: str, rows_: Iterable[tuple] | None = None, csv_path: Path | None = None) -> int:
    """Append rows (or a CSV whose header names its `events` columns, as `write_csv` writes) to `events`
    of a migrated PostgreSQL database.

    COPY in CSV format; from a file no Python touches the rows. The table's indexes and primary
    key are dropped during the load and rebuilt after it, then the table is vacuumed and analysed
    (what autovacuum would do after a bulk load). Returns the number of rows loaded.
    """
    import psycopg

    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        constraints = conn.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'events'::regclass AND contype IN ('p', 'u')"
        ).fetchall()
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'events' "
            "AND indexname NOT IN (SELECT conname FROM pg_constraint WHERE conrelid = 'events'::regclass)"
        ).fetchall()
        if csv_path is not None:
            with csv_path.open() as f:
                columns = f.readline().strip()
        else:
            columns = ", ".join(STORED_COLUMNS)
        with conn.transaction():
            for name, _ in indexes:
                conn.execute(f'DROP INDEX "{name}"')
            for name, _ in constraints:
                conn.execute(f'ALTER TABLE events DROP CONSTRAINT "{name}"')
            header = "true" if csv_path is not None else "false"
            cursor = conn.cursor()
            with cursor.copy(f"COPY events ({columns}) FROM STDIN (FORMAT csv, HEADER {header})") as copy:
                if csv_path is not None:
                    with csv_path.open("rb") as f:
                        while block := f.read(8 << 20):
                            copy.write(block)
                else:
                    assert rows_ is not None
                    for batch in _chunks(map(stored_row, rows_), 50_000):
                        copy.write(_csv_text(batch))
        conn.execute("SET maintenance_work_mem = '1GB'")
        for name, definition in constraints:
            conn.execute(f'ALTER TABLE events ADD CONSTRAINT "{name}" {definition}')
        for _, definition in indexes:
            conn.execute(definition)
        conn.execute("VACUUM ANALYZE events")
        return cursor.rowcount


def write_csv(path: Path, rows_: Iterable[tuple], chunk: int = 50_000) -> int:
    """Rows as `events` stores them, as CSV with a header (NULL is an empty field); returns the count."""
    count = 0
    with path.open("w", newline="") as f:
        f.write(",".join(STORED_COLUMNS) + "\n")
        for batch in _chunks(map(stored_row, rows_), chunk):
            f.write(_csv_text(batch))
            count += len(batch)
    return count


def _duckdb_types() -> dict[str, str]:
    from usertrail.store.schema import events

    names = {"INTEGER": "INTEGER", "BIGINT": "BIGINT", "BOOLEAN": "BOOLEAN", "SMALLINT": "SMALLINT"}
    return {c.name: names.get(str(c.type), "VARCHAR") for c in events.columns}


def csv_to_parquet(csv_path: Path, parquet_path: Path) -> None:
    """Convert a CSV written by `write_csv` to Parquet (zstd) with DuckDB, keeping column types."""
    import duckdb

    columns = ", ".join(f"'{name}': '{kind}'" for name, kind in _duckdb_types().items())
    con = duckdb.connect()
    try:
        con.execute(
            f"COPY (SELECT * FROM read_csv('{csv_path}', header = true, columns = {{{columns}}})) "
            f"TO '{parquet_path}' (FORMAT parquet, COMPRESSION zstd)"
        )
    finally:
        con.close()


def export_parquet(path: Path, rows_: Iterable[tuple]) -> int:
    """Rows to Parquet, through a temporary CSV next to `path` (DuckDB reads CSV in parallel)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(suffix=".csv", dir=path.parent) as tmp:
        count = write_csv(Path(tmp.name), rows_)
        csv_to_parquet(Path(tmp.name), path)
    return count


def prepare_project(url: str, name: str = "bench") -> int:
    """Migrate the database at `url` and create a project; its id."""
    from usertrail.store.database import create_engine, migrate
    from usertrail.store.projects import ProjectStore

    engine = create_engine(url)
    try:
        migrate(engine)
        return ProjectStore(engine).create(name).project.id
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    """Generate the workload into the targets given on the command line, timing each step."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=FULL.events)
    p.add_argument("--users", type=int, default=FULL.users)
    p.add_argument("--days", type=int, default=FULL.days)
    p.add_argument("--seed", type=int, default=FULL.seed)
    p.add_argument("--order", choices=("time", "user"), default="time")
    p.add_argument("--sqlite", help="SQLite file (or sqlite:/// URL): migrated, project 'bench' created, loaded")
    p.add_argument("--postgres", help="PostgreSQL URL of an existing database: same")
    p.add_argument("--parquet", type=Path, help="write a Parquet export (needs duckdb)")
    p.add_argument("--csv", type=Path, help="write a CSV export")
    p.add_argument("--count-only", action="store_true", help="only generate, to time the generator")
    args = p.parse_args(argv)
    workload = replace(FULL, events=args.events, users=args.users, days=args.days, seed=args.seed)
    print(f"workload: {workload}")
    if args.count_only or not any((args.sqlite, args.postgres, args.parquet, args.csv)):
        began = time.perf_counter()
        n = sum(1 for _ in rows(workload, order=args.order))
        print(f"generated {n:,} rows in {time.perf_counter() - began:.1f} s")
    for target, value in (("csv", args.csv), ("parquet", args.parquet)):
        if value:
            began = time.perf_counter()
            writer = write_csv if target == "csv" else export_parquet
            n = writer(value, rows(workload, order=args.order))  # type: ignore[operator]
            print(f"{target}: {n:,} rows to {value} in {time.perf_counter() - began:.1f} s (generation included)")
    for target, value in (("sqlite", args.sqlite), ("postgres", args.postgres)):
        if value:
            url = value if "://" in value else f"sqlite:///{Path(value).resolve()}"
            project_id = prepare_project(url)
            began = time.perf_counter()
            loader = load_sqlite if target == "sqlite" else load_postgres
            n = loader(url, rows(workload, project_id=project_id, order=args.order))
            elapsed = time.perf_counter() - began
            print(f"{target}: {n:,} rows into project {project_id} in {elapsed:.1f} s (generation included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
