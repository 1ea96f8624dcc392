"""Engagement reports benchmark (issue 7): items report, step funnels and widget report on WalkMe content events.

    .venv/bin/python bench/reports.py              # 2,000,000 events, 50,000 end users, both engines (~8 min)
    .venv/bin/python bench/reports.py --quick      # 200,000 events, 5,000 end users; docs left alone
    .venv/bin/python bench/reports.py --databases sqlite --no-docs

The workload is deterministic (one seeded `random.Random` per session, as in bench/datagen.py): end
users with log-normal activity over 90 days ending 2025-06-01T00:00Z, sessions of 1-4 engagements
with WalkMe content — Walk-Thrus and Smart Walk-Thrus played step by step (drop-offs, restarts,
steps out of order, completions, goals), ShoutOuts shown and clicked, Launcher clicks, Resources,
Surveys, widget opens and searches. 8% of sessions start anonymous (WalkMe cache id) and end with
the user identified in the same WalkMe session, so identity stitching links them. Each event's
payload is a WalkMe event of about 400 bytes.

Per engine: a fresh database (migrated, project "bench"), the rows loaded with bench/datagen.py's
bulk loaders (indexes rebuilt after the load), the reports' rollup built from them with
`usertrail.reports.rollup.rebuild` (what migration 0020 does on an existing database; new events are
rolled up at ingest), `SessionProcessor.rebuild` (sessions, identity links and End User Objects,
which the funnel and the segment filter read), then each report timed three times with the product's
own functions (`usertrail.reports.engagement`, as the API calls them).
The 90-day items report is checked against counts kept by the generator, and every report is
compared between the engines.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import itertools
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/datagen.py and bench/ingest.py, run as a script

import msgspec
import sqlalchemy as sa

import datagen
import ingest
from usertrail.reports import engagement, rollup
from usertrail.reports.engagement import ITEM_KINDS, Scope, TimeRange
from usertrail.segments.membership import catalog_of
from usertrail.segments.model import parse
from usertrail.segments.sql import Compiler
from usertrail.sessions.processor import SessionProcessor
from usertrail.store.database import create_engine
from usertrail.store.events import EVENT_COLUMNS, event_row

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
DOCS_FILE = ROOT / "docs" / "benchmarks.md"
DOCS_SECTION = "## Reports (issue 7)"
RESULTS_START = "<!-- reports-results:start (written by bench/reports.py; edit the reading below, not this block) -->"
RESULTS_END = "<!-- reports-results:end -->"
PG_SETTINGS = {"shared_buffers": "1GB", "max_wal_size": "4GB"}

DAY_MS = 86_400_000
RUNS = 3

# Items: (app type, first id, how many, names). Ids look like WalkMe's numeric object ids.
WALKTHRUS = [f"Walk-Thru {i}" for i in range(40)]
SMART_WALKTHRUS = [f"Smart Walk-Thru {i}" for i in range(15)]
CATALOG = {
    "wt": (200_000, WALKTHRUS),
    "bizFlow": (300_000, SMART_WALKTHRUS),
    "shoutout": (5_000, [f"ShoutOut {i}" for i in range(20)]),
    "launcher": (7_000, [f"Launcher {i}" for i in range(10)]),
    "resource": (8_000, [f"Resource {i}" for i in range(30)]),
    "survey": (9_000, [f"Survey {i}" for i in range(10)]),
}
ENGAGEMENTS = [("wt", 30), ("bizFlow", 10), ("shoutout", 15), ("launcher", 15), ("resource", 8), ("survey", 7),
               ("widget", 15)]  # fmt: skip
ENGAGEMENT_WEIGHTS = list(itertools.accumulate(w for _, w in ENGAGEMENTS))
TERMS = ["billing", "invoice", "export", "password", "reset password", "report", "dashboard", "api key", "users",
         "permissions", "sso", "integrations", "csv", "import", "filters", "segments", "pricing", "upgrade", "vip",
         "support", "contact", "delete account", "language", "timezone", "notifications"]  # fmt: skip
BROWSERS = [("Chrome", "125.0.0", 60), ("Firefox", "126.0", 20), ("Edge", "125.0.0", 20)]
BROWSER_WEIGHTS = list(itertools.accumulate(b[2] for b in BROWSERS))
DROP_OFF, RESTART, SWAP = 0.10, 0.03, 0.03  # per step of a flow
ANONYMOUS_START = 0.08
ACCOUNT = "3210be7ad82f403298f7c4da065ec657"


def _zipf(n: int) -> list[float]:
    return list(itertools.accumulate(1 / (i + 1) for i in range(n)))


ZIPF = {n: _zipf(n) for n in {len(names) for _, names in CATALOG.values()} | {len(TERMS)}}


@dataclass(frozen=True)
class Workload:
    events: int = 2_000_000
    users: int = 50_000
    days: int = 90
    end_ms: int = datagen.END_MS
    seed: int = 20261122

    @property
    def start_ms(self) -> int:
        return self.end_ms - self.days * DAY_MS


FULL = Workload()
QUICK = Workload(events=200_000, users=5_000)

# One generated event: (ts, type, app type, object id, object name, play instance, owner flow id).
Event = tuple[int, str, str, str | None, str | None, str | None, str | None]


def _session_events(rng: random.Random, start: int) -> list[Event]:
    """The WalkMe content events of one session: 1-4 engagements, a few seconds to a minute apart."""
    out: list[Event] = []
    t = start

    def emit(type_: str, app: str, oid: str | None, name: str | None, pid: str | None, owner: str | None = None):
        nonlocal t
        out.append((t, type_, app, oid, name, pid, owner))
        t += rng.randint(3_000, 60_000)

    for _ in range(rng.randint(1, 4)):
        kind = rng.choices(ENGAGEMENTS, cum_weights=ENGAGEMENT_WEIGHTS)[0][0]
        if kind == "widget":
            emit("open", "player", None, "Menu", None)
            for _ in range(rng.choice((0, 0, 1, 1, 2))):
                emit("search", "widgetSearch", None, rng.choices(TERMS, cum_weights=ZIPF[len(TERMS)])[0], None)
            continue
        first, names = CATALOG[kind]
        i = rng.choices(range(len(names)), cum_weights=ZIPF[len(names)])[0]
        oid, name = str(first + i), names[i]
        pid = f"{t}-{oid}-{rng.getrandbits(64):016x}"
        if kind in ("wt", "bizFlow"):
            emit("play", kind, oid, name, pid)
            _flow_steps(rng, emit, kind, oid, pid, steps=3 + i % 10)
        elif kind == "shoutout":
            emit("play", kind, oid, name, pid)
            emit("click" if rng.random() < 0.3 else "close", kind, oid, name, pid)
        elif kind == "launcher":
            emit("click", kind, oid, name, None)
        elif kind == "resource":
            emit("play", kind, oid, name, pid)
        else:
            emit("play", kind, oid, name, pid)
            if rng.random() < 0.4:
                emit("submitted", kind, oid, name, pid)
    return out


def _flow_steps(rng: random.Random, emit: Callable, kind: str, flow: str, pid: str, steps: int) -> None:
    """Steps played in order with drop-offs, an occasional restart and an occasional swapped pair."""
    step_app, owner = ("step", None) if kind == "wt" else ("bizFlowStep", flow)
    k, restarted = 1, False
    while k <= steps:
        if k < steps and rng.random() < SWAP:
            for j in (k + 1, k):
                emit("play", step_app, f"{flow}{j:02d}", f"Step {j}", pid, owner)
            k += 2
            continue
        emit("play", step_app, f"{flow}{k:02d}", f"Step {k}", pid, owner)
        if rng.random() < DROP_OFF:
            return
        if not restarted and k >= 2 and rng.random() < RESTART:
            restarted, k = True, 1
            continue
        k += 1
    emit("complete", kind, flow, None, pid)
    if kind == "bizFlow" and rng.random() < 0.5:
        emit("goalReach", kind, flow, None, pid)


@dataclass
class Truth:
    """What the items report over the whole workload must say, counted while generating."""

    plays: defaultdict = field(default_factory=lambda: defaultdict(int))  # (app type, id) -> plays
    users: defaultdict = field(default_factory=lambda: defaultdict(set))  # -> users who played
    completions: defaultdict = field(default_factory=lambda: defaultdict(set))  # -> completed play instances

    def count(self, user: int, ev: Event) -> None:
        _, type_, app, oid, _, pid, _ = ev
        kind = ITEM_KINDS.get(app)
        if kind is None or oid is None:
            return
        if type_ in kind.plays:
            self.plays[(app, oid)] += 1
            self.users[(app, oid)].add(user)
        elif type_ in kind.completions:
            self.completions[(app, oid)].add(pid)


def _session_rng(workload: Workload, n: int) -> random.Random:
    return random.Random(f"{workload.seed}/{n}")


def _plan(workload: Workload) -> list[tuple[int, int, int, int]]:
    """(start, user, session number, events to keep) of every session, in start order."""
    rng = random.Random(workload.seed)
    weights = list(itertools.accumulate(rng.lognormvariate(0, 1.0) for _ in range(workload.users)))
    first_day = [rng.uniform(workload.start_ms, workload.end_ms - 10 * DAY_MS) for _ in range(workload.users)]
    sessions, total, n = [], 0, 0
    while total < workload.events:
        user = rng.choices(range(workload.users), cum_weights=weights)[0]
        start = int(rng.uniform(first_day[user], workload.end_ms - 3 * 3_600_000))
        count = len(_session_events(_session_rng(workload, n), start))
        keep = min(count, workload.events - total)
        sessions.append((start, user, n, keep))
        total += keep
        n += 1
    sessions.sort()
    return sessions


_COLUMN = {name: i for i, name in enumerate(EVENT_COLUMNS)}


def rows(workload: Workload, project_id: int, truth: Truth | None = None) -> Iterator[tuple]:
    """`events` rows (EVENT_COLUMNS order), session by session in start order, as a log is written."""
    profile = random.Random(workload.seed + 1)
    browsers = [profile.choices(BROWSERS, cum_weights=BROWSER_WEIGHTS)[0] for _ in range(workload.users)]
    blake = hashlib.blake2b
    encode = msgspec.json.encode
    constant = event_row(
        project_id=project_id, env="production", source="walkme", url_host="app.acme.example", url_path="/reports",
        title="Reports - Acme", country="US", os="Windows", device_type="desktop", is_mobile=False,
        ip_masked="198.51.100.0",
    )  # fmt: skip
    c = _COLUMN
    for start, user, n, keep in _plan(workload):
        rng = _session_rng(workload, n)
        events = _session_events(rng, start)[:keep]
        hint = f"s-{workload.seed}-{n}"
        anonymous = len(events) > 1 and rng.random() < ANONYMOUS_START
        visit = blake(hint.encode(), digest_size=16).hexdigest()
        browser, version, _ = browsers[user]
        env = {"browser": {"name": browser, "version": version}, "os": {"name": "Windows"}, "mobile": False}
        ctx = {"location": {"protocol": "https:", "hostname": "app.acme.example", "pathname": "/reports"},
               "isIframe": False, "visitId": visit, "title": "Reports - Acme"}  # fmt: skip
        for i, ev in enumerate(events):
            ts, type_, app, oid, name, pid, owner = ev
            identified = not anonymous or i == len(events) - 1
            euid = f"user-{user:06d}" if identified else f"dev-{n}"
            data: dict = {"type": app}
            if oid:
                data["oId"] = int(oid)
            if name:
                data["oName"] = name
            if pid:
                data["pId"] = pid
            if owner:
                data |= {"owId": int(owner), "owName": SMART_WALKTHRUS[int(owner) - 300_000], "owType": "bizFlow"}
            payload = {
                "time": ts,
                "type": type_,
                "data": data,
                "sId": hint,
                "wm": {"uId": ACCOUNT, "euId": euid, "euIdSource": "Identifier" if identified else "Cache",
                       "permId": -1, "env": 0, "platform": 1},
                "env": env,
                "ctx": ctx,
                "version": {"lib": "20250601-101010-a9fb741f", "pe": "5.0.2"},
            }  # fmt: skip
            if truth is not None:
                truth.count(user, ev)
            row = list(constant)
            row[c["user_key"]] = ("u:" if identified else "a:") + euid
            row[c["event_id"]] = blake(b"%s/%d" % (hint.encode(), i), digest_size=16).hexdigest()
            row[c["ts"]] = row[c["client_ts"]] = ts
            row[c["received_at"]] = ts + 200
            row[c["type"]], row[c["app_type"]], row[c["object_id"]], row[c["object_name"]] = type_, app, oid, name
            row[c["session_hint"]], row[c["visit_id"]] = hint, visit
            row[c["anon_id"]], row[c["user_id"]] = (None, euid) if identified else (euid, None)
            row[c["id_source"]] = "variable" if identified else "anonymous_fallback"
            row[c["browser"]], row[c["browser_version"]] = browser, version
            row[c["payload"]] = encode(payload).decode()
            yield tuple(row)


# --- the measurements -----------------------------------------------------------------------------


@dataclass
class Timing:
    engine: str
    report: str
    detail: str
    rows: int
    first_s: float
    median_s: float


def _timed(engine: sa.Engine, run: Callable[[sa.Connection], object]) -> tuple[object, float, float]:
    """The result, the first run's seconds and the median of RUNS runs (each on a fresh connection)."""
    times, result = [], None
    for _ in range(RUNS):
        with engine.connect() as conn:
            began = time.perf_counter()
            result = run(conn)
            times.append(time.perf_counter() - began)
    return result, times[0], statistics.median(times)


def _summary(result: object) -> object:
    """A comparable form of a report's result (for the cross-engine check)."""
    if isinstance(result, list):
        return [r.as_json() if hasattr(r, "as_json") else r for r in result]
    if isinstance(result, engagement.Funnel):
        return result.step_json()
    if isinstance(result, engagement.WidgetReport):
        return {"days": result.days, "totals": result.totals, "terms": result.top_search_terms}
    return result


DERIVED = ("sessions", "identity_links", "session_hints", "end_users")


def load(name: str, url: str, workload: Workload, project_id: int, csv_path: Path, truth: Truth) -> tuple[int, float]:
    """Generate and load the events (the first engine also writes them to `csv_path`, which later
    PostgreSQL loads COPY as they are); returns (rows, seconds)."""
    began = time.perf_counter()
    if name == "postgresql" and csv_path.exists():
        loaded = datagen.load_postgres(url, csv_path=csv_path)
    else:
        generated = rows(workload, project_id, None if truth.plays else truth)
        with csv_path.open("w", newline="") as f:
            f.write(",".join(EVENT_COLUMNS) + "\n")
            writer = csv.writer(f, lineterminator="\n")

            def tee() -> Iterator[tuple]:
                for row in generated:
                    writer.writerow(row)
                    yield row

            loader = datagen.load_sqlite if name == "sqlite" else datagen.load_postgres
            loaded = loader(url, tee())
    return loaded, time.perf_counter() - began


def build_rollup(url: str, project_id: int) -> float:
    """The reports' rollup from the loaded events (the bulk loaders bypass ingest); seconds."""
    began = time.perf_counter()
    engine = create_engine(url)
    with engine.begin() as conn:
        rollup.rebuild(conn, project_id)
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("ANALYZE report_days")
            conn.exec_driver_sql("ANALYZE report_steps")
    engine.dispose()
    return time.perf_counter() - began


def derive(url: str, project_id: int, end: int, source_url: str | None) -> tuple[str, float]:
    """Sessions, identity links and End User Objects: `SessionProcessor.rebuild` on the first engine;
    later engines copy the first engine's rows (the same result, without a second rebuild)."""
    began = time.perf_counter()
    if source_url is None:
        SessionProcessor(create_engine(url, durable=False)).rebuild(project_id, end)
        return "rebuild", time.perf_counter() - began
    source, target = create_engine(source_url), create_engine(url)
    metadata = sa.MetaData()
    with source.connect() as read, target.begin() as write:
        for name in DERIVED:
            table = sa.Table(name, metadata, autoload_with=target)
            result = read.execution_options(yield_per=20_000).execute(sa.select(table))
            for chunk in result.mappings().partitions():
                write.execute(table.insert(), [dict(r) for r in chunk])
        if target.dialect.name == "postgresql":
            write.exec_driver_sql("ANALYZE")
    source.dispose()
    target.dispose()
    return "copied", time.perf_counter() - began


def cases(engine: sa.Engine, workload: Workload, project_id: int) -> list[tuple[str, str, Callable]]:
    end = workload.end_ms
    last30, whole = TimeRange(end - 30 * DAY_MS, end), TimeRange(workload.start_ms, end)
    # The API's default range ends now, so it starts and ends inside a day: partial days at both ends.
    partial = TimeRange(end - 30 * DAY_MS - 7 * 3_600_000, end - 7 * 3_600_000)
    with engine.connect() as conn:
        tree = parse({"rules": [{"attribute": "Browser Name", "operator": "is", "value": "Firefox"}]},
                     catalog_of(conn, project_id))  # fmt: skip
        compiler = Compiler(project_id, end, engine.dialect.name)
        members = conn.execute(compiler.count(tree)).scalar_one()
    firefox = compiler.members(tree)
    wt, swt = str(CATALOG["wt"][0]), str(CATALOG["bizFlow"][0])
    wt_steps = [f"{wt}{k:02d}" for k in range(1, 4)]
    return [
        ("items", "last 30 days", lambda c: engagement.items(c, Scope(project_id, last30))),
        ("items", "30 days ending 17:00 (partial days at both ends)",
         lambda c: engagement.items(c, Scope(project_id, partial))),
        ("items", "90 days (checked)", lambda c: engagement.items(c, Scope(project_id, whole))),
        ("items", f"last 30 days, segment of {members:,} users",
         lambda c: engagement.items(c, Scope(project_id, last30, firefox))),
        ("funnel", f"Walk-Thru {wt}, observed order, last 30 days",
         lambda c: engagement.funnel(c, Scope(project_id, last30), "wt", wt)),
        ("funnel", f"Walk-Thru {wt}, steps= 3 steps, segment",
         lambda c: engagement.funnel(c, Scope(project_id, last30, firefox), "wt", wt, wt_steps)),
        ("funnel", f"Smart Walk-Thru {swt}, observed order, last 30 days",
         lambda c: engagement.funnel(c, Scope(project_id, last30), "bizFlow", swt)),
        ("widget", "last 30 days, top 10 terms", lambda c: engagement.widget(c, Scope(project_id, last30))),
        ("widget", "30 days ending 17:00, top 10 terms", lambda c: engagement.widget(c, Scope(project_id, partial))),
    ]  # fmt: skip


def measure(name: str, url: str, workload: Workload, project_id: int) -> tuple[list[Timing], dict]:
    """Time every report; the results, for the checks."""
    engine = create_engine(url)
    timings, results = [], {}
    for report, detail, run in cases(engine, workload, project_id):
        result, first, median = _timed(engine, run)
        count = len(result.steps) if isinstance(result, engagement.Funnel) else len(_summary(result))  # type: ignore[arg-type]
        timings.append(Timing(name, report, detail, count, first, median))
        results[(report, detail)] = _summary(result)
        print(f"{name}: {report} ({detail}): {median * 1000:,.0f} ms (first {first * 1000:,.0f} ms)", flush=True)
    engine.dispose()
    return timings, results


def check_truth(results: dict, truth: Truth) -> list[str]:
    """Differences between the 90-day items report and the generator's own counts."""
    reported = next(v for (report, detail), v in results.items() if report == "items" and "90 days" in detail)
    problems = []
    expected_keys = set(truth.plays) | set(truth.completions)
    got = {(r["app_type"], r["object_id"]): r for r in reported}
    if set(got) != expected_keys:
        problems.append(f"items differ: {sorted(set(got) ^ expected_keys)[:5]}")
    for key in expected_keys & set(got):
        row = got[key]
        want = (truth.plays[key], len(truth.users[key]), len(truth.completions[key]))
        completions = row["completions"] if row["completions"] is not None else 0
        if (row["plays"], row["unique_users"], completions) != want:
            problems.append(f"{key}: reported {(row['plays'], row['unique_users'], completions)}, expected {want}")
    return problems


# --- output ------------------------------------------------------------------------------------------


def table(timings: list[Timing], metas: dict[str, dict]) -> str:
    lines = [
        "| engine | events | load s | rollup s | sessions s | events in the last 30 days | report | what | rows "
        f"| first run ms | median of {RUNS} ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in timings:
        m = metas[t.engine]
        lines.append(
            f"| {t.engine} | {m['events']:,} | {m['load_s']:.0f} | {m['rollup_s']:.0f} "
            f"| {m['derive_s']:.0f} ({m['derived']}) | {m['last30_events']:,} | {t.report} | {t.detail} | {t.rows} "
            f"| {t.first_s * 1000:,.0f} | {t.median_s * 1000:,.0f} |"
        )
    return "\n".join(lines)


def docs_block(timings, metas, checks: list[str], workload: Workload, info: dict, command: str, raw: Path) -> str:
    return "\n".join(
        [
            RESULTS_START,
            "",
            f"- **Date:** {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            f"- **Command:** {command if command.startswith('`') else f'`{command}`'}",
            f"- **Machine:** {info['nproc']} cores (`nproc`), {info['cpu_model']}, {info['memory']} RAM, {info['os']}"
            f"; shared: other engineers' work kept {info['busy_before']} busy just before the run",
            f"- **Software:** Python {info['python']}, {info['packages']}, {info['postgres']}",
            f"- **Code:** {info['code']}",
            f"- **Workload:** `bench/reports.py`, {workload.events:,} WalkMe content events (payloads ~600 bytes), "
            f"{workload.users:,} end users, {workload.days} days ending 2025-06-01T00:00Z, seed {workload.seed}; "
            "sessions, links and End User Objects from `SessionProcessor.rebuild` on the first engine, copied "
            "to the second; PostgreSQL settings "
            f"{', '.join(f'{k}={v}' for k, v in PG_SETTINGS.items())} (fsync on); "
            f"load average {info['loadavg']} at the start; raw results in `{raw.relative_to(ROOT)}` (git-ignored)",
            "",
            table(timings, metas),
            "",
            *(f"- {c}" for c in checks),
            "",
            RESULTS_END,
        ]
    )


def update_docs(block: str) -> None:
    text = DOCS_FILE.read_text()
    if RESULTS_START in text and RESULTS_END in text:
        head, rest = text.split(RESULTS_START, 1)
        _, tail = rest.split(RESULTS_END, 1)
        text = head + block + tail
    else:
        intro = (
            "Latency of the engagement reports (docs/reports.md) on a realistically sized event table, measured\n"
            "with the product's own report functions on a freshly loaded database. The block below is written\n"
            "by `bench/reports.py`."
        )
        text = text.rstrip("\n") + f"\n\n{DOCS_SECTION}\n\n{intro}\n\n{block}\n"
    DOCS_FILE.write_text(text)


def render_from_json(files: list[Path], command: str) -> None:
    """The docs block from the raw results of runs made separately (one per engine, say), as one table."""
    files = [f.resolve() for f in files]
    runs = [json.loads(f.read_text()) for f in files]
    timings = [Timing(**t) for run in runs for t in run["timings"]]
    metas = {name: meta for run in runs for name, meta in run["metas"].items()}
    checks = [c for run in runs for c in run["checks"]]
    info = dict(runs[0]["info"])
    for key in ("busy_before", "loadavg"):
        info[key] = " / ".join(f"{run['info'].get(key, '?')} ({', '.join(run['metas'])})" for run in runs)
    commands = "; ".join(f"`{run.get('command', '?')}`" for run in runs)
    workload = Workload(**runs[0]["workload"])
    block = docs_block(timings, metas, checks, workload, info, f"{commands}, then `{command}`", files[0])
    update_docs(block.replace(f"`{files[0].relative_to(ROOT)}`", ", ".join(f"`{f.relative_to(ROOT)}`" for f in files)))
    print(f"docs: {DOCS_FILE.relative_to(ROOT)} updated")


def _postgres_url(stack: contextlib.ExitStack) -> str | None:
    from usertrail.testing.postgres import PostgresUnavailable, TemporaryPostgres

    try:
        pg = TemporaryPostgres(PG_SETTINGS)
    except PostgresUnavailable as exc:
        print(f"skipping postgresql: {exc}")
        return None
    cluster_url = pg.start()
    stack.callback(pg.stop)
    admin = sa.create_engine(cluster_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql("CREATE DATABASE bench_reports")
    admin.dispose()
    return cluster_url.rsplit("/", 1)[0] + "/bench_reports"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200k events, 5k users; docs left alone")
    parser.add_argument("--databases", nargs="+", choices=("sqlite", "postgresql"), default=["sqlite", "postgresql"])
    parser.add_argument("--events", type=int)
    parser.add_argument("--users", type=int)
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument(
        "--from-json",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="only write the docs block from raw results of earlier runs (e.g. one run per engine)",
    )
    args = parser.parse_args(argv)
    if args.from_json:
        render_from_json(args.from_json, ".venv/bin/python bench/reports.py " + " ".join(argv or []))
        return 0
    workload = QUICK if args.quick else FULL
    workload = replace(workload, events=args.events or workload.events, users=args.users or workload.users)
    info = ingest.machine_info()
    info["loadavg"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    before = ingest.machine_busy()
    time.sleep(1.0)
    info["busy_before"] = f"{ingest.busy_cores(before, ingest.machine_busy()):.2f} cores"
    print(f"workload: {workload}; machine: {info['nproc']} cores, other load {info['busy_before']}", flush=True)
    timings: list[Timing] = []
    metas: dict[str, dict] = {}
    all_results: dict[str, dict] = {}
    checks: list[str] = []
    truth = Truth()
    scratch = Path(tempfile.mkdtemp(prefix="usertrail-reports-"))
    failed = False
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, scratch, True)
        first_url: str | None = None
        for database in args.databases:
            url = f"sqlite:///{scratch / 'reports.db'}" if database == "sqlite" else _postgres_url(stack)
            if url is None:
                continue
            project_id = datagen.prepare_project(url)
            loaded, load_s = load(database, url, workload, project_id, scratch / "events.csv", truth)
            print(f"{database}: {loaded:,} events loaded in {load_s:.0f} s", flush=True)
            rollup_s = build_rollup(url, project_id)
            print(f"{database}: reports' rollup built in {rollup_s:.0f} s", flush=True)
            derived, derive_s = derive(url, project_id, workload.end_ms, first_url)
            print(f"{database}: sessions, links and End User Objects ({derived}) in {derive_s:.0f} s", flush=True)
            first_url = first_url or url
            with create_engine(url).connect() as conn:
                in_range = conn.execute(
                    sa.text("SELECT count(*) FROM events WHERE project_id = :p AND ts >= :a"),
                    {"p": project_id, "a": workload.end_ms - 30 * DAY_MS},
                ).scalar_one()
            got, results = measure(database, url, workload, project_id)
            timings += got
            metas[database] = {"events": loaded, "load_s": load_s, "rollup_s": rollup_s, "derived": derived,
                               "derive_s": derive_s,
                               "last30_events": in_range}  # fmt: skip
            all_results[database] = results
            problems = check_truth(results, truth)
            failed |= bool(problems)
            checks.append(
                f"{database}: the 90-day items report equals the generator's own counts (plays, unique users, "
                f"completions of {len(set(truth.plays) | set(truth.completions))} items)"
                if not problems
                else f"{database}: the items report DIFFERS from the generator: {'; '.join(problems[:5])}"
            )
    if len(all_results) == 2:
        same = all_results["sqlite"] == all_results["postgresql"]
        failed |= not same
        checks.append("every report is equal on SQLite and PostgreSQL" if same else "reports DIFFER between engines")
    for c in checks:
        print(c)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    raw = RESULTS_DIR / f"reports-{time.strftime('%Y%m%d-%H%M%S')}.json"
    command = ".venv/bin/python bench/reports.py" + (" " + " ".join(argv) if argv else "")
    raw.write_text(json.dumps({"workload": workload.__dict__, "info": info, "metas": metas, "checks": checks,
                               "timings": [t.__dict__ for t in timings], "command": command}, indent=2))  # fmt: skip
    print(table(timings, metas))
    if not args.quick and not args.no_docs and len(metas) == 2:
        update_docs(docs_block(timings, metas, checks, workload, info, command, raw))
        print(f"docs: {DOCS_FILE.relative_to(ROOT)} updated")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
