"""Access costs: argon2id hashing, playback activity-log appends under concurrent writers, chain verification.

    .venv/bin/python bench/access.py                      # SQLite and PostgreSQL
    .venv/bin/python bench/access.py --databases sqlite --writers 1,4 --appends 2000

Appends go through `activity_log.append` in their own write transaction each (as a playback view
would), from several threads with their own connections; the chain is verified afterwards and the
run fails (exit 1) if it is not intact or an append was lost. Results are printed and written as
JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import argon2
import sqlalchemy as sa

from usertrail.access import activity_log
from usertrail.access.activity_log import RequestFacts
from usertrail.access.principal import Principal
from usertrail.store.database import create_engine, migrate, write_transaction
from usertrail.store.projects import ProjectStore
from usertrail.testing.postgres import TemporaryPostgres

PRINCIPAL = Principal(1, "account", "analyst", frozenset(), "1", "bench@example.com")
FACTS = RequestFacts("81.2.69.0", "Mozilla/5.0 (X11; Linux x86_64) bench")


def argon2_cost(rounds: int) -> dict:
    hasher = argon2.PasswordHasher()
    hashes, verifies = [], []
    stored = hasher.hash("correct horse battery staple")
    for _ in range(rounds):
        started = time.perf_counter()
        hasher.hash("correct horse battery staple")
        hashes.append(time.perf_counter() - started)
        started = time.perf_counter()
        hasher.verify(stored, "correct horse battery staple")
        verifies.append(time.perf_counter() - started)
    return {
        "params": f"t={hasher.time_cost}, m={hasher.memory_cost // 1024} MiB, p={hasher.parallelism}",
        "hash_ms_median": round(statistics.median(hashes) * 1000, 1),
        "verify_ms_median": round(statistics.median(verifies) * 1000, 1),
    }


def appends(url: str, writers: int, total: int) -> dict:
    engine = create_engine(url)
    migrate(engine)
    project_id = ProjectStore(engine).create(f"bench {writers}").project.id
    each = total // writers
    barrier = threading.Barrier(writers + 1)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            barrier.wait()
            for i in range(each):
                with write_transaction(engine) as conn:
                    activity_log.append(conn, project_id, PRINCIPAL, "view", f"rec-{n}-{i}", FACTS)
        except BaseException as exc:  # reported below, and fails the run
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    started = time.perf_counter()
    result = activity_log.verify(engine, project_id)
    verify_s = time.perf_counter() - started
    engine.dispose()
    return {
        "writers": writers,
        "appends": writers * each,
        "appends_per_s": round(writers * each / elapsed),
        "verify_entries_per_s": round(result.entries / verify_s),
        "chain_ok": result.ok and result.entries == writers * each and not errors,
        "errors": [repr(e) for e in errors[:3]],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--writers", default="1,4")
    parser.add_argument("--appends", type=int, default=2000, help="appends per cell, shared by the writers")
    parser.add_argument("--argon2-rounds", type=int, default=10)
    args = parser.parse_args()
    results: dict = {"argon2id": argon2_cost(args.argon2_rounds), "activity_log": []}
    print(f"argon2id ({results['argon2id']['params']}): hash {results['argon2id']['hash_ms_median']} ms, "
          f"verify {results['argon2id']['verify_ms_median']} ms (median)")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        postgres = TemporaryPostgres() if "postgresql" in args.databases else None
        pg_url = postgres.__enter__() if postgres else None
        try:
            for database in args.databases.split(","):
                for writers in (int(w) for w in args.writers.split(",")):
                    if database == "sqlite":
                        url = f"sqlite:///{Path(tmp) / f'bench-{writers}.db'}"
                    else:
                        name = f"bench_access_{writers}"
                        admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
                        with admin.connect() as conn:
                            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
                            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
                        admin.dispose()
                        url = pg_url.rsplit("/", 1)[0] + "/" + name
                    cell = {"database": database, **appends(url, writers, args.appends)}
                    results["activity_log"].append(cell)
                    print(f"{database:10} {writers} writer(s): {cell['appends_per_s']:6} appends/s, "
                          f"verify {cell['verify_entries_per_s']} entries/s, chain ok: {cell['chain_ok']}")  # fmt: skip
        finally:
            if postgres:
                postgres.__exit__(None, None, None)
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"access-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(results, indent=2))
    return 0 if all(c["chain_ok"] for c in results["activity_log"]) else 1


if __name__ == "__main__":
    sys.exit(main())
