"""SCIM provisioning benchmark: what an IdP's sync costs, through the real server, on SQLite and PostgreSQL.

    .venv/bin/python bench/scim.py                         # 2,000 users, both engines
    .venv/bin/python bench/scim.py --users 500 --databases sqlite

Per engine: a fresh database and project, the real server (`uvicorn --factory`, 1 worker, its own
process group), a SCIM token from the admin API. Then, timed from this process over keep-alive
connections (httpx):

1. create `--users` users (Okta-shaped, 9 mapped attributes each) from 4 connections: creates/s;
2. one connection, one request at a time (latency, no queueing): `userName eq` lookups (what
   Okta and Entra send before every write), PATCH `active=false` (a deprovisioning), GET by id,
   an unfiltered page of 100, and a filter no index answers (`title co "…"`, a full scan);
3. checks: every create answered 201 and `scim_users` holds exactly the users created.

Output: a table on stdout and JSON under bench/results/. docs/benchmarks.md ("SCIM provisioning")
holds the published run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from ingest import free_port, machine_info, stop_server
from update_api import prepare

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
TITLES = ("Engineer", "Designer", "Manager", "Analyst", "Support")


def user(i: int) -> dict:
    return {
        "schemas": [USER_SCHEMA, ENTERPRISE],
        "userName": f"user{i:06d}@example.com",
        "externalId": f"00u{i:06d}",
        "name": {"givenName": f"Given{i}", "familyName": f"Family{i}"},
        "displayName": f"Given{i} Family{i}",
        "emails": [{"value": f"user{i:06d}@example.com", "type": "work", "primary": True}],
        "title": TITLES[i % len(TITLES)],
        "active": True,
        ENTERPRISE: {"department": f"Dept {i % 20}", "costCenter": f"CC-{i % 50}"},
    }


def start(url: str, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "usertrail.web.app:create_app", "--factory", "--host", "127.0.0.1",
        "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    env = {**os.environ, "USERTRAIL_DATABASE_URL": url, "USERTRAIL_PROCESS_SESSIONS": "0"}
    with log_path.open("wb") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return server, base
        time.sleep(0.1)
    stop_server(server)
    raise RuntimeError(f"server did not start:\n{log_path.read_text()[-3000:]}")


def timed(client: httpx.Client, samples: int, request) -> dict:
    """Run `request(client, i)` `samples` times in a row; latency percentiles in ms."""
    times = []
    for i in range(samples):
        began = time.perf_counter()
        response = request(client, i)
        times.append((time.perf_counter() - began) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
    times.sort()
    return {
        "samples": samples,
        "p50_ms": round(statistics.median(times), 1),
        "p95_ms": round(times[int(0.95 * (samples - 1))], 1),
    }


def run(database: str, url: str, users: int, work: Path) -> dict:
    project_id, admin_token = prepare(url)
    server, base = start(url, work / f"server-{database}.log")
    try:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin_token}"}) as admin:
            admin.patch(f"/api/projects/{project_id}/environments/production", json={"uuid": {"provider": "idp"}})
            token = admin.post(f"/api/projects/{project_id}/integrations/scim/token").json()["token"]
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/scim+json"}
        scim_base = f"{base}/scim/v2/{project_id}"
        bodies = [json.dumps(user(i)).encode() for i in range(users)]
        clients = [httpx.Client(base_url=scim_base, headers=headers, timeout=60) for _ in range(4)]

        def create(i: int) -> tuple[int, str]:
            response = clients[i % 4].post("/Users", content=bodies[i])
            return response.status_code, response.json().get("id", "")

        began = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            created = list(pool.map(create, range(users)))
        elapsed = time.perf_counter() - began
        for c in clients:
            c.close()
        ids = [scim_id for status, scim_id in created if status == 201]
        result = {
            "database": database,
            "users": users,
            "creates_per_s": round(users / elapsed, 1),
            "created": len(ids),
        }
        step = max(1, users // 200)
        with httpx.Client(base_url=scim_base, headers=headers, timeout=60) as idp:
            result["lookup_userName_eq"] = timed(
                idp,
                200,
                lambda c, i: c.get(
                    "/Users", params={"filter": f'userName eq "user{(i * step) % users:06d}@example.com"'}
                ),
            )
            deactivate = json.dumps({
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "replace", "value": {"active": False}}],
            })  # fmt: skip
            result["patch_active_false"] = timed(idp, 200, lambda c, i: c.patch(f"/Users/{ids[i]}", content=deactivate))
            result["get_by_id"] = timed(idp, 200, lambda c, i: c.get(f"/Users/{ids[-1 - i]}"))
            result["page_of_100"] = timed(
                idp, 50, lambda c, i: c.get("/Users", params={"startIndex": 1 + (i * 97) % users, "count": 100})
            )
            result["scan_filter"] = timed(
                idp, 10, lambda c, i: c.get("/Users", params={"filter": f'title co "{TITLES[i % 5][:4]}"', "count": 10})
            )
    finally:
        stop_server(server)
    import sqlalchemy as sa

    from usertrail.store.database import create_engine

    engine = create_engine(url)
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT count(*) FROM scim_users")).scalar_one()
    engine.dispose()
    result["check"] = "ok" if stored == len(ids) == users else f"stored {stored}, acknowledged {len(ids)} of {users}"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args(argv)
    results = []
    work = Path(tempfile.mkdtemp(prefix="usertrail-scim-bench-"))
    for database in args.databases.split(","):
        if database == "sqlite":
            results.append(run(database, f"sqlite:///{work / 'usertrail.db'}", args.users, work))
            continue
        from usertrail.testing.postgres import TemporaryPostgres

        pg = TemporaryPostgres()
        try:
            results.append(run(database, pg.start(), args.users, work))
        finally:
            pg.stop()
    header = "| database | users | creates/s | userName eq p50/p95 | PATCH active p50/p95 | GET p50/p95 | page of 100 p50/p95 | scan filter p50/p95 | check |"  # noqa: E501
    print(header)
    print("|" + "---|" * 9)
    for r in results:
        cells = [
            f"{r[k]['p50_ms']} / {r[k]['p95_ms']} ms"
            for k in ("lookup_userName_eq", "patch_active_false", "get_by_id", "page_of_100", "scan_filter")
        ]
        print(
            f"| {r['database']} | {r['users']:,} | {r['creates_per_s']:,} | " + " | ".join(cells) + f" | {r['check']} |"
        )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"scim-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"machine": machine_info(), "results": results}, indent=2))
    print(f"raw results: {out.relative_to(ROOT)}")
    return 0 if all(r["check"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
