"""Latency of the overview page's queries (reports/overview.py) on a realistically sized project.

    .venv/bin/python bench/overview.py                                   # 2M events, 100k users, both engines
    .venv/bin/python bench/overview.py --events 200000 --users 10000 --no-docs   # a quick run

The events come from bench/datagen.py (90 days ending 2025-06-01, about a fifth page views); sessions
and End User Objects from `SessionProcessor.rebuild` on SQLite, copied to PostgreSQL (as
bench/reports.py does). Each query runs on fresh connections: the first run and the median of three
are reported, then once more without the overview's two indexes (migration 0016) for comparison.
A full run rewrites the generated block of "Overview (issue 7)" in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/datagen.py and bench/reports.py

import sqlalchemy as sa

import datagen
import reports as reports_bench
from usertrail.reports import overview
from usertrail.reports.engagement import DAY_MS, TimeRange
from usertrail.store.database import create_engine
from usertrail.store.schema import PAGE_VIEWS_WHERE

ROOT = Path(__file__).resolve().parent.parent
DOCS_FILE = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- overview-results:start", "<!-- overview-results:end -->"
RUNS = 3
INDEXES = ("ix_sessions_overview", "ix_events_page_views")


def timed(engine: sa.Engine, run: Callable[[sa.Connection], object], runs: int = RUNS) -> tuple[object, float, float]:
    times, result = [], None
    for _ in range(runs):
        with engine.connect() as conn:
            began = time.perf_counter()
            result = run(conn)
            times.append(time.perf_counter() - began)
    return result, times[0], statistics.median(times)


def cases(pid: int, end: int) -> list[tuple[str, Callable[[sa.Connection], object]]]:
    last30, last90 = TimeRange(end - 30 * DAY_MS, end), TimeRange(end - 90 * DAY_MS, end)
    return [
        ("daily, last 30 days", lambda c: overview.daily(c, pid, last30)),
        ("daily, 90 days", lambda c: overview.daily(c, pid, last90)),
        ("top pages, last 30 days", lambda c: overview.top_pages(c, pid, last30)),
        ("top pages, 90 days", lambda c: overview.top_pages(c, pid, last90)),
    ]


def sizes(engine: sa.Engine, end: int) -> dict[str, int]:
    """How much the 30-day range holds: closed sessions and page views."""
    span = TimeRange(end - 30 * DAY_MS, end)
    with engine.connect() as conn:
        sessions = conn.execute(
            sa.text("SELECT count(*) FROM sessions WHERE start_ts >= :a AND start_ts < :b"),
            {"a": span.start, "b": span.end},
        ).scalar_one()
        views = conn.execute(
            sa.text(f"SELECT count(*) FROM events WHERE {PAGE_VIEWS_WHERE} AND ts >= :a AND ts < :b"),
            {"a": span.start, "b": span.end},
        ).scalar_one()
    return {"sessions_30d": sessions, "page_views_30d": views}


def measure(name: str, url: str, pid: int, end: int) -> list[dict]:
    engine = create_engine(url)
    rows = []
    try:
        for label, run in cases(pid, end):
            result, first, median = timed(engine, run)
            rows.append({"engine": name, "case": label, "first_ms": first * 1000, "median_ms": median * 1000,
                         "summary": summary(result)})  # fmt: skip
        with engine.begin() as conn:
            for index in INDEXES:
                conn.exec_driver_sql(f"DROP INDEX {index}")
        for row, (_, run) in zip(rows, cases(pid, end), strict=True):
            _, first, _ = timed(engine, run, runs=1)
            row["without_indexes_ms"] = first * 1000
    finally:
        engine.dispose()
    return rows


def summary(result: object) -> str:
    if isinstance(result, overview.Daily):
        t = result.totals
        return (
            f"{len(result.days)} days; {t['active_users']:,} users, {t['sessions']:,} sessions, {t['events']:,} events"
        )
    assert isinstance(result, overview.TopPages)
    return f"{len(result.pages)} pages of {result.page_views:,} page views (complete: {result.complete})"


def table(rows: list[dict], size: dict[str, dict]) -> str:
    lines = [
        "| engine | sessions in 30 days | page views in 30 days | query | result | first run ms | median of 3 ms "
        "| without the 0016 indexes ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = size[r["engine"]]
        lines.append(
            f"| {r['engine']} | {s['sessions_30d']:,} | {s['page_views_30d']:,} | {r['case']} | {r['summary']} | "
            f"{r['first_ms']:,.0f} | {r['median_ms']:,.0f} | {r['without_indexes_ms']:,.0f} |"
        )
    return "\n".join(lines)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    load = os.getloadavg()[0]
    return f"{os.cpu_count()} cores, {cpu}, Linux {platform.release()}; load average {load:.1f} at the start (shared)"


def update_docs(block: str) -> None:
    text = DOCS_FILE.read_text()
    start, end = text.index(START), text.index(END)
    head = text[:start] + START + " (written by bench/overview.py) -->\n\n"
    DOCS_FILE.write_text(head + block + "\n\n" + text[end:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args(argv)
    workload = datagen.Workload(events=args.events, users=args.users)
    end = workload.end_ms
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    host = machine()
    rows: list[dict] = []
    size: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        sqlite_url = f"sqlite:///{Path(tmp) / 'overview.db'}"
        pid = datagen.prepare_project(sqlite_url)
        began = time.perf_counter()
        datagen.load_sqlite(sqlite_url, datagen.rows(workload, pid))
        print(f"sqlite: loaded {args.events:,} events in {time.perf_counter() - began:.0f} s", flush=True)
        how, seconds = reports_bench.derive(sqlite_url, pid, end, None)
        print(f"sqlite: sessions ({how}) in {seconds:.0f} s", flush=True)
        urls = {"sqlite": sqlite_url}
        if "postgresql" in args.databases:
            pg_url = reports_bench._postgres_url(stack)
            if pg_url is not None:
                datagen.prepare_project(pg_url)
                csv_path = Path(tmp) / "events.csv"
                datagen.write_csv(csv_path, datagen.rows(workload, pid))
                datagen.load_postgres(pg_url, csv_path=csv_path)
                reports_bench.derive(pg_url, pid, end, sqlite_url)
                urls["postgresql"] = pg_url
        for name, url in urls.items():
            if name not in args.databases:
                continue
            size[name] = sizes(create_engine(url), end)
            rows += measure(name, url, pid, end)
            print(table([r for r in rows if r["engine"] == name], size), flush=True)
    out = ROOT / "bench" / "results" / f"overview-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "sizes": size, "workload": vars(workload)}, indent=1))
    command = " ".join(["bench/overview.py", *(argv if argv is not None else sys.argv[1:])])
    block = "\n".join(
        [
            f"- **Date:** {started}",
            f"- **Command:** `.venv/bin/python {command}`",
            f"- **Machine:** {host}",
            f"- **Workload:** bench/datagen.py, {args.events:,} events, {args.users:,} end users, 90 days ending "
            "2025-06-01; sessions by `SessionProcessor.rebuild` (copied to PostgreSQL); "
            f"raw results in `{out.relative_to(ROOT)}`",
            "",
            table(rows, size),
        ]
    )
    print(block)
    if not args.no_docs:
        update_docs(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
