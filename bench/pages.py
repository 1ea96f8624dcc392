"""Admin page load benchmark (issue 7): server time and time to interactive in Chromium.

    .venv/bin/python bench/pages.py                 # demo data and the 200,000-user benchmark data
    .venv/bin/python bench/pages.py --datasets demo # demo data only (about two minutes)
    .venv/bin/python bench/pages.py --prepare-only  # build and cache the 200,000-user database

Each page is measured on the real server (`uvicorn usertrail.web.app:create_app --factory`, one worker)
signed in as an admin: *server ms* is the median time for the page's HTML (request sent to last byte,
httpx, keep-alive), and *interactive ms* the median time in Debian's Chromium from navigation start to
the moment the page is interactive: its ready marker is in the DOM, the load event is over and the last
request the page's scripts made (its data) has answered. Each is the median of `--repeat` runs after one
warm-up. Target: every page interactive in under 1 s with 200,000 users.

Datasets: *demo* is what `usertrail serve --demo` sends (300 end users over 4 weeks, through HTTP), with
sessions closed; *200k* is bench/datagen.py's workload (5,000,000 events from 200,000 end users over 90
days, WalkMe content events included), loaded into SQLite and turned into sessions and End User Objects
by `SessionProcessor.rebuild`, the product's own code. The generated events carry no analytics properties
and no integration writes, so the cached database is then enriched once: bench/segments.py's 20 custom
attributes (Plan, MRR, …, with their history) and analytics properties (role/type/status) are given to the
end users in key order, and two saved segments are created and filled. That database is built once and
cached in bench/results/data/ (about 40 minutes on this 2-core machine); each run works on a copy, which
`setup` migrates to the code's head first (so a run also times the migrations the cache lacks).

The 200k event data ends on 2025-06-01, so the report and overview pages are opened with the 30 days that
end there (`from=2025-05-02&to=2025-05-31`), their default span; with the default dates (the last 30 days
before today) they would read no events at all.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/datagen.py and bench/ingest.py, run as a script

import httpx
import sqlalchemy as sa

import datagen
import ingest
import segments as segment_bench
from usertrail import demo
from usertrail.access.accounts import AccountStore, UnknownAccount
from usertrail.sessions.processor import SessionProcessor
from usertrail.store.database import create_engine, migrate

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "bench" / "results" / "data"


def cached_database(workload: datagen.Workload = datagen.FULL) -> Path:
    """The migrated, loaded and rebuilt SQLite file of `workload`, built on first use."""
    path = DATA_DIR / f"pages-{workload.events}-{workload.users}-{workload.seed}.db"
    if path.exists():
        return path
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    for leftover in DATA_DIR.glob(partial.name + "*"):
        leftover.unlink()
    url = f"sqlite:///{partial}"
    project_id = datagen.prepare_project(url)
    began = time.perf_counter()
    count = datagen.load_sqlite(url, datagen.rows(workload, project_id=project_id))
    print(f"loaded {count:,} events in {time.perf_counter() - began:.0f} s", flush=True)
    began = time.perf_counter()
    engine = create_engine(url, durable=False)
    SessionProcessor(engine).rebuild(project_id, workload.end_ms)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    print(f"rebuilt sessions and End User Objects in {time.perf_counter() - began:.0f} s", flush=True)
    enrich(url, project_id)
    shutil.move(partial, path)
    return path


# The saved segments of the 200k data (their member lists are filled by the product's refresh).
SAVED_SEGMENTS = {
    "VIP customers": {"rules": [{"attribute": "Plan", "operator": "is", "value": "VIP"}]},
    "Berlin, active": {
        "rules": [
            {"attribute": "City", "operator": "is", "value": "Berlin"},
            {"attribute": "Total sessions", "operator": "gt", "value": 2},
        ]
    },
}


def enrich(url: str, project_id: int) -> bool:
    """Give the end users of `url` custom attributes and analytics properties (bench/segments.py's generator,
    in key order) and create the saved segments; False if it was done before."""
    from dataclasses import replace

    from usertrail.segments.membership import refresh_all
    from usertrail.store.schema import attribute_registry
    from usertrail.store.segments import SegmentStore

    engine = create_engine(url, durable=False)
    try:
        with engine.connect() as conn:
            registered = conn.execute(
                sa.select(sa.func.count()).where(attribute_registry.c.project_id == project_id)
            ).scalar_one()
            keys = (
                conn.execute(
                    sa.text("SELECT user_key FROM end_users WHERE project_id = :p ORDER BY user_key"), {"p": project_id}
                )
                .scalars()
                .all()
            )
        if registered:
            return False
        began = time.perf_counter()
        segment_bench.register(url, project_id)
        tables = segment_bench.TABLES
        insert = {t: f"INSERT INTO {t} ({', '.join(c)}) VALUES ({', '.join('?' * len(c))})" for t, c in tables.items()}
        with engine.begin() as conn:
            properties, attributes, history = [], [], []
            for key, user in zip(keys, segment_bench.generate(len(keys)), strict=True):
                _, row, changes = segment_bench.table_rows(replace(user, key=key), project_id)
                if user.analytics is not None:
                    properties.append((msgspec_json(user.analytics), project_id, key))
                attributes.append(row)
                history.extend(changes)
            conn.exec_driver_sql(
                "UPDATE end_users SET analytics_properties = ? WHERE project_id = ? AND user_key = ?", properties
            )
            conn.exec_driver_sql(insert["custom_attributes"], attributes)
            conn.exec_driver_sql(insert["attribute_changes"], history)
        store = SegmentStore(engine)
        for name, rules in SAVED_SEGMENTS.items():
            store.create(project_id, {"name": name, "rules": rules}, segment_bench.NOW)
        refresh_all(engine, segment_bench.NOW, [project_id])
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        print(f"enriched {len(keys):,} end users in {time.perf_counter() - began:.0f} s", flush=True)
        return True
    finally:
        engine.dispose()


def msgspec_json(value: object) -> str:
    import msgspec

    return msgspec.json.encode(value).decode()


EMAIL = "bench@example.com"
PASSWORD = "bench password 2026"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip
CHROME_UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"


@dataclass(frozen=True)
class PageSpec:
    """A page to time: its path under /app/projects/{pid}/ ({user} is a busy end user's key, URL-quoted;
    {range} the dataset's date range as query parameters) and the selector present once it shows its data.
    With `click`, the step timed is a click on that element of the loaded page until `ready` is present:
    interactive ms is then click to answer shown, server ms the time of `api` (the request the click makes).
    Pages that name bench/segments.py's custom attributes run on the 200k data only (the demo has none)."""

    name: str
    path: str
    ready: str
    click: str | None = None
    api: str | None = None
    datasets: tuple[str, ...] = ("demo", "200k")


ONLY_200K = ("200k",)
RULES_VIP = quote('{"rules": [{"attribute": "Plan", "operator": "is", "value": "VIP"}]}', safe="")
PAGES = [
    PageSpec("user list", "users", "#users tbody tr"),
    PageSpec("user list, sort by role (analytics)", "users?sort=role&order=asc", "#users tbody tr"),
    PageSpec(
        "user list, sort by Plan (custom)",
        "users?sort=Plan&order=asc&column=Plan&column=MRR",
        "#users tbody tr",
        datasets=ONLY_200K,
    ),
    PageSpec(
        "user list, sort by MRR (custom)",
        "users?sort=MRR&order=desc&column=Plan&column=MRR",
        "#users tbody tr",
        datasets=ONLY_200K,
    ),
    PageSpec("user list, search Berlin", "users?q=Berlin", "#users tbody tr"),
    PageSpec("user list, rules Plan is VIP", f"users?rules={RULES_VIP}", "#users tbody tr", datasets=ONLY_200K),
    PageSpec("user page", "users/{user}", "#user-segments[data-loaded]"),
    PageSpec("engagement report", "reports?{range}", "#items"),
    PageSpec(
        "report: Walk-Thru funnel",
        "reports?{range}",
        "#funnel-steps tbody tr",
        click=".funnel-open[data-app-type='wt']",
        api="/api/projects/{pid}/reports/items/wt/{object}/funnel?{range}",
    ),
    PageSpec("overview", "overview?{range}", "#top-pages"),
    PageSpec("segments", "segments", "#segments"),
    PageSpec("recordings", "recordings", "#recordings"),
]
# The 30 days at the end of each dataset (the pages' default span); demo data ends now.
RANGES = {"demo": "", "200k": "from=2025-05-02&to=2025-05-31"}

# The page's moment of interactivity, in ms from navigation start: the load event, or the last answer
# to a request its scripts made after it, whichever is later.
INTERACTIVE_JS = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const ends = performance.getEntriesByType('resource').map(r => r.responseEnd);
  return Math.max(nav.loadEventEnd, ...ends);
}"""


def setup(url: str) -> tuple[int, str]:
    """Migrate, make the admin account of the first project; (project id, a busy end user's key)."""
    engine = create_engine(url)
    try:
        migrate(engine)
        with engine.begin() as conn:
            pid = conn.execute(sa.text("SELECT min(id) FROM projects")).scalar_one()
            user = conn.execute(
                sa.text("SELECT user_key FROM end_users WHERE project_id = :p ORDER BY total_sessions DESC LIMIT 1"),
                {"p": pid},
            ).scalar_one()
        accounts = AccountStore(engine)
        try:
            account = accounts.by_email(EMAIL)
        except UnknownAccount:
            account = accounts.create(EMAIL, None, PASSWORD)
        accounts.set_role(account.id, pid, "admin")
        return pid, user
    finally:
        engine.dispose()


def demo_database(workdir: Path) -> Path:
    """A database filled like `usertrail serve --demo`: the demo's traffic through HTTP, sessions closed."""
    path = workdir / "demo.db"
    url = f"sqlite:///{path}"
    write_key = ingest.prepare_database(url)
    port = ingest.free_port()
    env = {
        "USERTRAIL_DATABASE_URL": url,
        "USERTRAIL_DATA_DIR": str(workdir),
        "USERTRAIL_TRUSTED_PROXIES": "127.0.0.1/32",
    }
    server = ingest.start_server(port, 1, env, workdir / "demo-server.log")
    try:
        totals = demo.send(f"http://127.0.0.1:{port}", write_key)
    finally:
        ingest.stop_server(server)
    if totals["failed_requests"]:
        raise RuntimeError(f"demo traffic failed: {totals}")
    engine = create_engine(url)
    SessionProcessor(engine).run(now=int(time.time() * 1000), max_rounds=100_000)
    engine.dispose()
    return path


@dataclass
class Timing:
    dataset: str
    page: str
    server_ms: float
    interactive_ms: float
    html_bytes: int


def measure(dataset: str, db: Path, workdir: Path, repeat: int) -> list[Timing]:
    """Serve `db` and time every page: HTML from httpx, interactivity in Chromium."""
    from playwright.sync_api import sync_playwright

    url = f"sqlite:///{db}"
    span = RANGES[dataset]
    began = time.perf_counter()
    pid, user = setup(url)
    print(f"{dataset:>5}  setup (migrations the copy lacked, account) {time.perf_counter() - began:.1f} s", flush=True)
    port = ingest.free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "USERTRAIL_DATABASE_URL": url,
        "USERTRAIL_DATA_DIR": str(workdir),
        "USERTRAIL_PROCESS_SESSIONS": "0",
        # The 200k data is from 2025: the daily retention job, which runs at start-up, would otherwise
        # delete every one of its end users while the pages are being timed.
        "USERTRAIL_USER_RETENTION_DAYS": "36500",
    }
    users_before = _end_users(url)
    server = ingest.start_server(port, 1, env, workdir / f"{dataset}-server.log")
    settled = _wait_until_idle(server.pid)
    print(f"{dataset:>5}  start-up maintenance (segments, retention) done in {settled:.1f} s", flush=True)
    timings = []
    try:
        with httpx.Client(base_url=base, timeout=120, headers={"User-Agent": CHROME_UA}) as client:
            answer = client.post("/api/auth/login", json={"email": EMAIL, "password": PASSWORD})
            answer.raise_for_status()
            cookies = [{"name": k, "value": v, "url": base} for k, v in client.cookies.items()]
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
                context = browser.new_context(user_agent=CHROME_UA, viewport={"width": 1400, "height": 900})
                context.add_cookies(cookies)
                page = context.new_page()
                for spec in (s for s in PAGES if dataset in s.datasets):
                    path = f"/app/projects/{pid}/" + spec.path.format(user=quote(user, safe=""), range=span)
                    server_ms, interactive_ms, size = [], [], 0
                    for attempt in range(repeat + 1):
                        if spec.click:
                            page.goto(base + path, wait_until="load")
                            button = page.locator(spec.click).first
                            api = spec.api.format(pid=pid, object=quote(button.get_attribute("data-object-id")),
                                                  range=span)  # fmt: skip
                            began = time.perf_counter()
                            response = client.get(api)
                            elapsed = (time.perf_counter() - began) * 1000
                            clicked = time.perf_counter()
                            button.click()
                            page.wait_for_selector(spec.ready, state="attached", timeout=120_000)
                            shown = (time.perf_counter() - clicked) * 1000
                        else:
                            began = time.perf_counter()
                            response = client.get(path)
                            elapsed = (time.perf_counter() - began) * 1000
                            page.goto(base + path, wait_until="load")
                            page.wait_for_selector(spec.ready, state="attached", timeout=120_000)
                            page.wait_for_load_state("networkidle")
                            shown = page.evaluate(INTERACTIVE_JS)
                        if response.status_code != 200:
                            raise RuntimeError(f"{path}: HTTP {response.status_code} {response.text[:300]}")
                        size = len(response.content)
                        if attempt:  # the first of each is a warm-up
                            server_ms.append(elapsed)
                            interactive_ms.append(shown)
                    timing = Timing(
                        dataset, spec.name, statistics.median(server_ms), statistics.median(interactive_ms), size
                    )
                    print(f"{dataset:>5}  {spec.name:<38} server {timing.server_ms:8.1f} ms   "
                          f"interactive {timing.interactive_ms:8.1f} ms", flush=True)  # fmt: skip
                    timings.append(timing)
                browser.close()
    finally:
        ingest.stop_server(server)
    if _end_users(url) != users_before:
        raise RuntimeError(f"{dataset}: the end users changed during the run ({users_before} before): not comparable")
    return timings


def _end_users(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT count(*) FROM end_users")).scalar_one()
    finally:
        engine.dispose()


def _wait_until_idle(pid: int, quiet_s: float = 2.0, limit_s: float = 600.0) -> float:
    """Wait until the server has used under 5% of a core for `quiet_s`: its start-up maintenance (the hourly
    segment refresh and the daily retention job) must not share the cores with the pages being timed."""
    ticks = os.sysconf("SC_CLK_TCK")

    def cpu_s() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime

    began = time.monotonic()
    last = cpu_s()
    while time.monotonic() - began < limit_s:
        time.sleep(quiet_s)
        now = cpu_s()
        if now - last < 0.05 * quiet_s:
            return time.monotonic() - began
        last = now
    raise RuntimeError(f"the server was still busy after {limit_s:.0f} s")


def table(timings: list[Timing]) -> str:
    lines = [
        "| data | page | server ms (median) | interactive ms (median) | KiB | target < 1 s |",
        "|---|---|---|---|---|---|",
    ]
    for t in timings:
        ok = "met" if t.interactive_ms < 1000 else "**missed**"
        lines.append(
            f"| {t.dataset} | {t.page} | {t.server_ms:,.0f} | {t.interactive_ms:,.0f} "
            f"| {t.html_bytes / 1024:,.0f} | {ok} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--prepare-only", action="store_true", help="build the cached 200,000-user database and stop")
    p.add_argument("--datasets", default="demo,200k", help="comma-separated: demo, 200k")
    p.add_argument("--repeat", type=int, default=5, help="timed loads per page (after one warm-up)")
    args = p.parse_args(argv)
    if args.prepare_only:
        print(cached_database())
        return 0
    info = ingest.machine_info()
    load_before = os.getloadavg()
    timings: list[Timing] = []
    with tempfile.TemporaryDirectory(prefix="usertrail-pages-") as tmp:
        workdir = Path(tmp)
        for dataset in args.datasets.split(","):
            if dataset == "demo":
                db = demo_database(workdir)
            elif dataset == "200k":
                db = workdir / "200k.db"
                shutil.copyfile(cached_database(), db)
            else:
                p.error(f"unknown dataset {dataset!r}")
            timings.extend(measure(dataset, db, workdir, args.repeat))
    load_after = os.getloadavg()
    print()
    print(f"- **Date:** {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"- **Command:** `.venv/bin/python bench/pages.py {' '.join(argv if argv is not None else sys.argv[1:])}`")
    print(f"- **Machine:** {info['nproc']} cores, {info['cpu_model']}, {info['memory']} RAM, {info['os']}")
    print(f"- **Code:** {info['code']}")
    print(f"- **Load average:** {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print()
    print(table(timings))
    out = ROOT / "bench" / "results" / f"pages-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([t.__dict__ for t in timings], indent=2))
    return 0 if all(t.interactive_ms < 1000 for t in timings) else 1


if __name__ == "__main__":
    sys.exit(main())
