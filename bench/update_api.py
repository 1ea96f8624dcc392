"""End User Update API benchmark: records/s with 100-record update calls over HTTP, on SQLite.

    .venv/bin/python bench/update_api.py              # 1 and 2 workers, 20 s timed each, docs updated
    .venv/bin/python bench/update_api.py --quick      # 3 s each, docs left alone

A fresh SQLite database and project per cell; one API client with four mapped fields (string,
number, date, boolean, one of them nested) and `properties.ID` as the id path; a token from the
real token endpoint. The server runs as `uvicorn --factory` in its own process group with the
per-client rate limit lifted (`USERTRAIL_BENCH_RATE_LIMIT`), because one client is allowed only
50 calls per 10 s = 500 records/s, which would measure the limit, not the server. The load
generator (this process, httpx over keep-alive connections) builds every body before the clock
starts; values are random, so most writes change a value and write a history row. After a cell
the server is stopped and the rows of `custom_attributes` and `attribute_changes` are counted.

Output: a table on stdout, JSON under bench/results/, and (unless --quick or --no-docs) the
results block of the "End User Update API (issue 4)" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from ingest import free_port, machine_info, stop_server, wait_for_quiet

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
DOCS_FILE = ROOT / "docs" / "benchmarks.md"
DOCS_SECTION = "## End User Update API (issue 4)"
RESULTS_START = "<!-- update-api-results:start (written by bench/update_api.py) -->"
RESULTS_END = "<!-- update-api-results:end -->"
RECORDS_PER_CALL = 100
PLANS = ("free", "starter", "pro", "VIP", "enterprise")
FIELDS = [
    {"payload": "plan", "name": "Plan", "type": "string"},
    {"payload": "properties.seats", "name": "Seats", "type": "number"},
    {"payload": "renewal", "name": "Renewal", "type": "date"},
    {"payload": "trial", "name": "Trial", "type": "boolean"},
]


def bench_app():
    """The uvicorn factory: the real app, with the per-client rate limit set from the environment."""
    from usertrail.web.app import create_app

    app = create_app()
    app.state.update_api.rate_limit = int(os.environ.get("USERTRAIL_BENCH_RATE_LIMIT", "1000000000"))
    return app


def prepare(url: str) -> tuple[int, str]:
    """Migrate a fresh database and create the project; (project id, admin token)."""
    from usertrail.store.database import create_engine, migrate
    from usertrail.store.projects import ProjectStore

    engine = create_engine(url)
    try:
        migrate(engine)
        new = ProjectStore(engine).create("bench")
        return new.project.id, new.admin_token
    finally:
        engine.dispose()


def count_rows(url: str) -> dict[str, int]:
    import sqlalchemy as sa

    from usertrail.store.database import create_engine

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
                for t in ("custom_attributes", "attribute_changes", "integration_requests")
            }
    finally:
        engine.dispose()


def start_server(port: int, workers: int, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "uvicorn", "update_api:bench_app", "--factory", "--app-dir", str(ROOT / "bench"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), "--log-level", "warning",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                time.sleep(0.5 * (workers - 1))
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop_server(server)
    raise RuntimeError(f"server did not answer /health:\n{log_path.read_text()[-3000:]}")


def bodies(count: int, users: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        data = [
            {
                "properties": {"ID": f"user-{rng.randrange(users)}", "seats": rng.randrange(1, 500)},
                "plan": rng.choice(PLANS),
                "renewal": f"2027-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}",
                "trial": rng.random() < 0.3,
                "unmapped": "ignored",
            }
            for _ in range(RECORDS_PER_CALL)
        ]
        out.append(json.dumps({"data": data}).encode())
    return out


@dataclass
class Cell:
    workers: int
    connections: int
    duration_s: float
    calls: int
    records_per_s: float
    calls_per_s: float
    p50_ms: float
    p99_ms: float
    failures: int
    record_errors: int
    acked_records: int
    rows: dict
    other_cpu_before: float

    @property
    def check(self) -> str:
        return "ok" if not self.failures and not self.record_errors else "FAILED"


async def _drive(base: str, token: str, payloads: list[bytes], connections: int, warmup: float, duration: float):
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    latencies: list[float] = []
    stats = {"calls": 0, "failures": 0, "errors": 0, "acked": 0, "sent_total": 0}
    index = 0
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=60) as http:
        began = time.perf_counter()
        window = (began + warmup, began + warmup + duration)

        async def worker() -> None:
            nonlocal index
            while time.perf_counter() < window[1]:
                body = payloads[index % len(payloads)]
                index += 1
                start = time.perf_counter()
                response = await http.post("/public/v1/user/data", content=body)
                end = time.perf_counter()
                stats["sent_total"] += 1
                ok = response.status_code == 202
                if ok:
                    stats["acked"] += RECORDS_PER_CALL - response.json()["error_count"]
                if window[0] <= end <= window[1]:  # completed in the timed window
                    stats["calls"] += 1
                    latencies.append((end - start) * 1000)
                    if not ok:
                        stats["failures"] += 1
                    elif response.json()["error_count"]:
                        stats["errors"] += response.json()["error_count"]

        await asyncio.gather(*(worker() for _ in range(connections)))
    return stats, latencies


def run_cell(workers: int, connections: int, duration: float, users: int, quiet_wait: float) -> Cell:
    with tempfile.TemporaryDirectory(prefix="ut-bench-update-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'usertrail.db'}"
        project_id, admin_token = prepare(url)
        port = free_port()
        env = {"USERTRAIL_DATABASE_URL": url, "USERTRAIL_DATA_DIR": tmp, "USERTRAIL_PROCESS_SESSIONS": "0"}
        _, busy = wait_for_quiet(quiet_wait)
        server = start_server(port, workers, env, Path(tmp) / "server.log")
        try:
            base = f"http://127.0.0.1:{port}"
            admin = {"Authorization": f"Bearer {admin_token}"}
            created = httpx.post(
                f"{base}/api/projects/{project_id}/integrations/api-clients",
                json={"name": "bench", "user_id_property": "properties.ID", "fields": FIELDS},
                headers=admin,
            )
            created.raise_for_status()
            client = created.json()
            token = httpx.post(
                f"{base}/accounts/connect/token",
                data={"grant_type": "client_credentials"},
                auth=(client["client_id"], client["client_secret"]),
            ).json()["access_token"]
            payloads = bodies(400, users, seed=workers)
            stats, latencies = asyncio.run(_drive(base, token, payloads, connections, 1.0, duration))
        finally:
            stop_server(server)
        rows = count_rows(url)
    latencies.sort()
    return Cell(
        workers=workers,
        connections=connections,
        duration_s=duration,
        calls=stats["calls"],
        records_per_s=stats["calls"] * RECORDS_PER_CALL / duration,
        calls_per_s=stats["calls"] / duration,
        p50_ms=statistics.median(latencies) if latencies else 0.0,
        p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0,
        failures=stats["failures"],
        record_errors=stats["errors"],
        acked_records=stats["acked"],
        rows={**rows, "requests_sent": stats["sent_total"]},
        other_cpu_before=busy,
    )


def table(cells: list[Cell]) -> str:
    lines = [
        "| workers | connections | records/s | calls/s | p50 ms | p99 ms | calls timed | requests stored | check |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        stored = f"{c.rows['integration_requests']:,} of {c.rows['requests_sent']:,}"
        lines.append(
            f"| {c.workers} | {c.connections} | {c.records_per_s:,.0f} | {c.calls_per_s:,.1f} | {c.p50_ms:.1f} | "
            f"{c.p99_ms:.1f} | {c.calls:,} | {stored} | {c.check} |"
        )
    return "\n".join(lines)


def docs_block(cells: list[Cell], info: dict[str, str], command: str, args: argparse.Namespace, raw: Path) -> str:
    return "\n".join(
        [
            RESULTS_START,
            "",
            f"- **Date:** {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            f"- **Command:** `{command}`",
            f"- **Machine:** {info['nproc']} cores (`nproc`), {info['cpu_model']}, {info['memory']} RAM, {info['os']}",
            f"- **Software:** Python {info['python']}, {info['packages']}",
            f"- **Code:** {info['code']}",
            f"- **Load:** {args.connections} keep-alive connections from one httpx process on the same machine; "
            f"{RECORDS_PER_CALL} records per call (4 mapped fields, one nested, plus one ignored field), "
            f"{args.users:,} end users, random values; calls completed in {args.duration:g} s after 1 s of "
            "warm-up; SQLite WAL with synchronous=FULL; rate limit lifted (under the real limit one client "
            "may send 500 records/s); "
            f"raw results in `{raw.relative_to(ROOT)}` (git-ignored)",
            "",
            table(cells),
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
            "Measures the update call (`POST /public/v1/user/data`) through the real server: 100-record\n"
            "calls, each written synchronously through `AttributeStore.write` before the 202. The block\n"
            "below is written by `bench/update_api.py`."
        )
        text = text.rstrip("\n") + f"\n\n{DOCS_SECTION}\n\n{intro}\n\n{block}\n"
    DOCS_FILE.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--quiet-wait", type=float, default=20.0)
    parser.add_argument("--quick", action="store_true", help="3 s per cell; docs left alone")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = 3.0
    cells = []
    for workers in args.workers:
        cell = run_cell(workers, args.connections, args.duration, args.users, args.quiet_wait)
        print(f"workers={workers}: {cell.records_per_s:,.0f} records/s, p50 {cell.p50_ms:.1f} ms, {cell.check}")
        cells.append(cell)
    print(table(cells))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    raw = RESULTS_DIR / f"update-api-{time.strftime('%Y%m%d-%H%M%S')}.json"
    info = machine_info()
    raw.write_text(json.dumps({"machine": info, "args": vars(args), "cells": [asdict(c) for c in cells]}, indent=2))
    if not args.quick and not args.no_docs:
        command = ".venv/bin/python bench/update_api.py" + (" " + shlex.join(argv or sys.argv[1:])).rstrip()
        update_docs(docs_block(cells, info, command, args, raw))
    return 0 if all(c.check == "ok" for c in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
