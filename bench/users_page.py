"""Users pages benchmark (issue 7): the user list and a user's page with 200,000 end users, on SQLite and PostgreSQL.

    .venv/bin/python bench/users_page.py                      # 200,000 users, both engines
    .venv/bin/python bench/users_page.py --users 20000 --engines sqlite --runs 5

Data: bench/segments.py's generator (all 11 standard attributes, analytics properties, 20 custom attributes
of mixed types per user), loaded the same way (SQLite executemany, PostgreSQL COPY + VACUUM ANALYZE), on the
schema of the Alembic migrations.

Measured, per engine:
- the store (`UserStore.list`, as the page and `/api/projects/{id}/users` call it): first page and a later
  page (keyset cursor) sorted by a standard, an analytics and a custom attribute, a search and a rule filter;
  wall and CPU time of this process (SQLite runs in it, so its CPU time is the query's cost without the
  machine's other load); the query plans (EXPLAIN) of the sorted pages;
- the real server (uvicorn, one process): server time of `GET /app/projects/1/users` (a few views) and of a
  user's page, over HTTP with a signed-in account;
- Chromium (Debian's, through Playwright): time to interactive of those pages (navigation start to the page's
  ready marker, after its script ran).
The machine is shared (2 cores): the load average before and after each engine is printed with the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote, urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/segments.py and bench/datagen.py

import datagen
import segments

PASSWORD = "bench-password-1"
VIEWS = {
    "Last seen ↓ (default)": {},
    "Total sessions ↑": {"sort": "Total sessions", "order": "asc"},
    "Country ↓": {"sort": "Country", "order": "desc"},
    "role ↑ (analytics)": {"sort": "role", "order": "asc"},
    "Plan ↑ (custom text)": {"sort": "Plan", "order": "asc", "column": ["Plan", "MRR"]},
    "MRR ↓ (custom number)": {"sort": "MRR", "order": "desc", "column": ["Plan", "MRR"]},
    "search q=Berlin": {"q": "Berlin"},
    "rules Plan is VIP": {"rules": '{"rules": [{"attribute": "Plan", "operator": "is", "value": "VIP"}]}'},
}


def timed(call, runs: int) -> tuple[float, float, object]:
    """(p50 wall ms, p50 CPU ms of this process, last result) over `runs` calls after one warm-up."""
    result = call()
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        result = call()
        walls.append((time.perf_counter() - wall) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    return statistics.median(walls), statistics.median(cpus), result


def store_timings(url: str, runs: int) -> list[tuple[str, float, float]]:
    from usertrail.segments.membership import catalog_of
    from usertrail.segments.model import parse
    from usertrail.segments.sql import Compiler
    from usertrail.store.database import create_engine
    from usertrail.store.users import UserStore

    engine = create_engine(url)
    store = UserStore(engine)
    with engine.connect() as conn:
        catalog = catalog_of(conn, 1)
    out = []
    for label, view in VIEWS.items():
        conditions = []
        if "rules" in view:
            tree = parse(json.loads(view["rules"]), catalog, "rules")
            conditions = [Compiler(1, segments.NOW, engine.dialect.name).condition(tree)]

        def page(after=None, view=view, conditions=conditions):
            return store.list(
                1, view.get("sort", "Last seen"), view.get("order", "desc") == "desc", 50, 0, [], conditions,
                view.get("q"), catalog=catalog, columns=view.get("column", ()), after=after,
            )  # fmt: skip

        wall, cpu, first = timed(page, runs)
        out.append((f"{label}: first page ({first.total:,} users)", wall, cpu))
        if first.next is not None:
            wall, cpu, _ = timed(lambda first=first, page=page: page(first.next), runs)
            out.append((f"{label}: next page", wall, cpu))
    deep_wall, deep_cpu, _ = timed(lambda: store.list(1, "Last seen", True, 50, 150_000, []), max(1, runs // 2))
    out.append(("Last seen ↓: offset 150,000 (the API's `offset`; the page uses the cursor)", deep_wall, deep_cpu))
    with engine.connect() as conn:
        for label in ("Total sessions ↑", "MRR ↓ (custom number)"):
            view = VIEWS[label]
            sql = _first_page_sql(store, catalog, view)
            prefix = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
            compiled = sql.compile(engine, compile_kwargs={"literal_binds": True})
            plan = conn.exec_driver_sql(prefix + str(compiled)).all()
            print(f"    plan, {label}:")
            for row in plan:
                print("      " + str(row[-1]))
    engine.dispose()
    return out


def _first_page_sql(store, catalog, view):
    """The first pass's SELECT of a view, captured from the store as it runs it."""
    import sqlalchemy as sa

    captured = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if context.compiled is not None and isinstance(context.compiled.statement, sa.Select):
            captured.append(context.compiled.statement)

    sa.event.listen(store.engine, "before_cursor_execute", capture)
    try:
        store.list(1, view.get("sort"), view.get("order") == "desc", 50, 0, [], catalog=catalog,
                   columns=view.get("column", ()), count=False)  # fmt: skip
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", capture)
    return captured[0]


def serve(url: str, data_dir: Path):
    import uvicorn

    from usertrail.config import Settings
    from usertrail.testing.postgres import free_port
    from usertrail.web.app import create_app

    app = create_app(Settings(data_dir=data_dir, database_url=url))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread, app


def page_timings(url: str, runs: int, data_dir: Path) -> list[tuple[str, float, float]]:
    import httpx

    from usertrail.access.permissions import ADMIN
    from usertrail.project_settings import UuidSettings

    server, thread, app = serve(url, data_dir)
    base = f"http://127.0.0.1:{server.config.port}"
    try:
        projects = app.state.collector.projects
        production = projects.environments(1)["production"]
        production.uuid = UuidSettings(provider="variable", source="currentUser.id")
        projects.save_environment(1, "production", production)
        account = app.state.accounts.create("bench@example.com", None, PASSWORD)
        app.state.accounts.set_role(account.id, 1, ADMIN)
        pages = {label: "/app/projects/1/users?" + urlencode(view, doseq=True) for label, view in VIEWS.items()}
        pages["a user's page"] = f"/app/projects/1/users/{quote('user-0000042', safe='')}"
        out = []
        with httpx.Client(base_url=base, timeout=60) as client:
            client.post("/api/auth/login", json={"email": "bench@example.com", "password": PASSWORD}).raise_for_status()
            for label, path in pages.items():
                wall, _, answer = timed(lambda path=path: client.get(path), runs)
                assert answer.status_code == 200, (path, answer.status_code)
                out.append((f"server: {label}", wall, 0.0))
        out += browser_timings(base, pages, runs)
        return out
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def browser_timings(base: str, pages: dict[str, str], runs: int) -> list[tuple[str, float, float]]:
    from playwright.sync_api import sync_playwright

    out = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        context = browser.new_context()
        context.request.post(f"{base}/api/auth/login", data={"email": "bench@example.com", "password": PASSWORD})
        page = context.new_page()
        for label, path in pages.items():
            ready = "#user-segments[data-loaded]" if "/users/" in path else "#users"

            def load(path=path, ready=ready):
                began = time.perf_counter()
                page.goto(base + path)
                page.wait_for_selector(ready, state="attached")
                page.wait_for_load_state("load")
                return (time.perf_counter() - began) * 1000

            samples = [load() for _ in range(runs + 1)][1:]
            out.append((f"chromium, interactive: {label}", statistics.median(samples), 0.0))
        browser.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=200_000)
    p.add_argument("--engines", default="sqlite,postgresql")
    p.add_argument("--runs", type=int, default=7)
    args = p.parse_args(argv)
    for engine_name in args.engines.split(","):
        with tempfile.TemporaryDirectory(prefix="users-page-") as scratch, contextlib.ExitStack() as stack:
            if engine_name == "sqlite":
                url = f"sqlite:///{scratch}/users.db"
            else:
                from usertrail.testing.postgres import TemporaryPostgres

                pg = TemporaryPostgres(segments.PG_SETTINGS)
                url = pg.start()
                stack.callback(pg.stop)
            project_id = datagen.prepare_project(url, "bench")
            segments.register(url, project_id)
            print(f"{engine_name}: loading {args.users:,} end users ...", flush=True)
            began = time.perf_counter()
            if engine_name == "sqlite":
                segments.load_sqlite(url.removeprefix("sqlite:///"), args.users, segments.SEED, project_id)
            else:
                paths, _ = segments.data_files(args.users, segments.SEED, regenerate=False)
                segments.load_postgres(url, paths)
            print(f"    loaded in {time.perf_counter() - began:.0f} s; load average {segments.loadavg()}", flush=True)
            rows = store_timings(url, args.runs) + page_timings(url, args.runs, Path(scratch))
            print(f"  {engine_name}, {args.users:,} end users, p50 of {args.runs} (load average {segments.loadavg()}):")
            for label, wall, cpu in rows:
                print(f"    {wall:8.1f} ms" + (f"  (CPU {cpu:6.1f} ms)" if cpu else "") + f"  {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
