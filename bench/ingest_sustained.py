"""Sustained ingest: a steady offered rate of WalkMe batches for a minute, and whether storage keeps up.

    .venv/bin/python bench/ingest_sustained.py                         # 20,000 and 30,000 events/s, both engines
    .venv/bin/python bench/ingest_sustained.py --databases sqlite --rates 25000 --duration 30

`bench/ingest.py` measures how fast the server answers a burst (each connection sends its next request as
soon as the last is answered) and then how long its indexers take to store what the burst left in the
ingest journal. This script asks the question a steadily loaded server meets: at an offered rate held for
`--duration` seconds, is every event answered durably *and* stored into `events`, with its indexes, the
reports' rollup and the session loop's marks, at the rate it arrives? The load is paced, not a closed
loop: request i is due at start + i / rate, on the first of `--connections` keep-alive connections free
then, and its latency counts from when it was due, so a server that falls behind shows it in p99 rather
than in a politely slower client.

The server runs with `USERTRAIL_INDEX_DELAY_S` from `--index-delay-s` (0 by default): a server that defers
indexing during a burst (the default 30 s) only moves the same work later under a load that never stops,
and a minute's window would show the deferral instead of the capacity. Every second the script samples the
journal's backlog; events stored so far are the acknowledged ones less the backlog. *Kept up* means the
backlog at the end of the window is under two seconds of the offered load. Afterwards the journal is
drained, the server stopped and the `events` rows counted: they must equal what was acknowledged.

Output: a table on stdout, JSON under bench/results/, and (unless `--no-docs`) the generated block of
"Ingest held for a minute" in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ingest.py, run as a script

import ingest

RESULTS_START = "<!-- ingest-sustained:start (written by bench/ingest_sustained.py; edit the reading below) -->"
RESULTS_END = "<!-- ingest-sustained:end -->"
DOCS_SECTION = "### Ingest held for a minute (issue 2)"
KEPT_UP_S = 2.0  # backlog allowed at the end of the window, in seconds of offered load


async def _paced(spec: dict[str, Any], requests: list[bytes], pipe: Connection, acked) -> dict[str, Any]:
    """Send request i at start + i / rate over the first free connection; latency counts from that time."""
    clock = time.perf_counter
    rps = spec["rate"] / ingest.EVENTS_PER_BATCH
    start = clock() + 0.2
    window_start = start + spec["warmup_s"]
    window_end = window_start + spec["duration_s"]
    state = {"next": 0}
    late: list[float] = []  # in-window requests: seconds from due to answer
    statuses: dict[int, int] = {}
    failures: list[str] = []

    async def one_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            i = state["next"]
            due = start + i / rps
            if due >= window_end or i >= len(requests):
                return
            state["next"] = i + 1
            wait = due - clock()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(requests[i])
            try:
                status, body = await ingest.read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                failures.append(repr(exc))
                return
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                acked.value += ingest.EVENTS_PER_BATCH
            elif len(failures) < 5:
                failures.append(f"{status}: {body[:300]!r}")
            if due >= window_start:
                late.append(clock() - due)

    connections = [await asyncio.open_connection("127.0.0.1", spec["port"], limit=1 << 20)]
    for _ in range(spec["connections"] - 1):
        connections.append(await asyncio.open_connection("127.0.0.1", spec["port"], limit=1 << 20))
    pipe.send(("started", time.time() + (start - clock())))
    await asyncio.gather(*(one_connection(r, w) for r, w in connections))
    ended = clock()
    for _, writer in connections:
        writer.close()
    late.sort()
    return {
        "requests_sent": state["next"],
        "statuses": statuses,
        "failures": failures,
        "latencies_ms": [x * 1000 for x in late],
        "behind_s": max(0.0, ended - window_end),  # how long after the window the last answer came
        "load_s": ended - start,
    }


def load_generator(spec: dict[str, Any], pipe: Connection, acked) -> None:
    """Process entry point: build every request, report ready, wait for "go", pace them, report."""
    try:
        requests, body_size = ingest.build_requests(spec)
        pipe.send(("ready", body_size))
        if pipe.recv() != "go":
            return
        import uvloop

        pipe.send(("result", uvloop.run(_paced(spec, requests, pipe, acked))))
    except Exception as exc:  # the parent must hear about it rather than wait forever
        pipe.send(("error", repr(exc)))
        raise


@dataclass
class Run:
    """One offered rate on one engine."""

    database: str
    workers: int
    offered: int
    duration_s: float
    acked_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    behind_s: float = 0.0
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (s into window, acked, journaled)
    backlog_max: int = 0
    backlog_end: int = 0
    stored_per_s: float = 0.0  # into `events` during the window's second half
    drain_s: float = 0.0
    events_acked: int = 0
    events_stored: int = 0
    non_200: int = 0
    failures: list[str] = field(default_factory=list)
    server_cpu: float = 0.0
    other_cpu: float = 0.0
    cpu_probe_mops: float = 0.0

    @property
    def kept_up(self) -> bool:
        return self.verified and self.backlog_end <= KEPT_UP_S * self.offered and self.behind_s < KEPT_UP_S

    @property
    def verified(self) -> bool:
        return self.non_200 == 0 and self.events_stored == self.events_acked


def run_one(
    database: str, url: str, offered: int, args: argparse.Namespace, seq: int, base_ms: int, work_dir: Path, pg_pid
) -> tuple[Run, int]:
    """A fresh database and server, `offered` events/s for the window, then drain, stop and count."""
    key = ingest.prepare_database(url)
    port = ingest.free_port()
    requests = int(offered / ingest.EVENTS_PER_BATCH * (args.warmup + args.duration)) + 1
    spec = {
        "port": port, "key": key, "connections": args.connections, "warmup_s": args.warmup,
        "duration_s": args.duration, "rate": offered, "requests": requests, "users": args.users,
        "seed": seq, "first_seq": seq, "base_ms": base_ms,
    }  # fmt: skip
    context = multiprocessing.get_context("spawn")
    acked = context.Value("q", 0, lock=False)  # written by the loader only; read here
    parent_end, child_end = context.Pipe()
    loader = context.Process(target=load_generator, args=(spec, child_end, acked), daemon=True)
    loader.start()
    env = {
        "USERTRAIL_DATA_DIR": str(work_dir),
        "USERTRAIL_DATABASE_URL": url,
        "USERTRAIL_INDEXER": args.indexer,
        "USERTRAIL_INDEX_DELAY_S": str(args.index_delay_s),
        "USERTRAIL_TRUSTED_PROXIES": "127.0.0.1/32",
    }
    if args.no_sessions:
        env["USERTRAIL_PROCESS_SESSIONS"] = "0"
    server = ingest.start_server(port, args.workers, env, work_dir / "server.log")
    run = Run(database, args.workers, offered, args.duration)
    try:
        ingest._receive(parent_end, loader, server, 600)
        ingest.wait_for_quiet(args.quiet_wait)
        probe = ingest.cpu_probe()
        parent_end.send("go")
        _, started = ingest._receive(parent_end, loader, server, 120)
        window_start = started + args.warmup
        time.sleep(max(0.0, window_start - time.time()))
        pids = ingest.process_tree(server.pid) + (ingest.process_tree(pg_pid) if pg_pid else [])
        cpu0, busy0, t0 = ingest.cpu_seconds(pids), ingest.machine_busy(), time.monotonic()
        while (now := time.time()) < window_start + args.duration:
            time.sleep(min(1.0, window_start + args.duration - now))
            run.samples.append((round(time.time() - window_start, 2), acked.value, ingest.journal_events(url)))
        elapsed = time.monotonic() - t0
        cpu1, busy1 = ingest.cpu_seconds(pids), ingest.machine_busy()
        _, result = ingest._receive(parent_end, loader, server, 600)
        drained = time.monotonic()
        while ingest.journal_events(url):
            if time.monotonic() - drained > 900:
                raise RuntimeError("the server's indexers did not empty the journal within 15 minutes")
            time.sleep(0.2)
        run.drain_s = time.monotonic() - drained
        run.cpu_probe_mops = (probe + ingest.cpu_probe()) / 2
    finally:
        loader.join(timeout=30)
        if loader.is_alive():
            loader.kill()
        ingest.stop_server(server)
    lat = result["latencies_ms"]
    if lat:
        run.p50_ms, run.p99_ms, run.max_ms = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))], lat[-1]
    run.behind_s = result["behind_s"]
    run.events_acked = result["statuses"].get(200, 0) * ingest.EVENTS_PER_BATCH
    run.non_200 = sum(v for k, v in result["statuses"].items() if k != 200) + sum(
        1 for f in result["failures"] if not f[:3].isdigit()
    )
    run.failures = result["failures"]
    in_window = [s for s in run.samples if s[0] <= args.duration + 0.5]
    run.acked_per_s = (in_window[-1][1] - run.samples[0][1]) / max(0.001, in_window[-1][0] - run.samples[0][0])
    run.backlog_max = max(s[2] for s in run.samples)
    run.backlog_end = run.samples[-1][2]
    half = [s for s in run.samples if s[0] >= args.duration / 2]
    if len(half) >= 2:
        (t_a, acked_a, journal_a), (t_b, acked_b, journal_b) = half[0], half[-1]
        run.stored_per_s = ((acked_b - journal_b) - (acked_a - journal_a)) / (t_b - t_a)
    run.server_cpu = (cpu1 - cpu0) / elapsed
    run.other_cpu = max(0.0, ingest.busy_cores(busy0, busy1) - run.server_cpu)
    run.events_stored = ingest.count_events(url)
    return run, requests * ingest.EVENTS_PER_BATCH


def table(runs: list[Run]) -> str:
    f = ingest._fmt_int
    lines = [
        "| database | workers | offered events/s | acked events/s | p50 ms | p99 ms | stored into `events`, events/s "
        "(second half) | journal backlog: max / at end (events) | drain s | server CPU | other CPU | CPU probe "
        "| acked = stored | kept up |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r.database} | {r.workers} | {f(r.offered)} | {f(r.acked_per_s)} | {r.p50_ms:.1f} | {r.p99_ms:.1f} "
            f"| {f(r.stored_per_s)} | {f(r.backlog_max)} / {f(r.backlog_end)} | {r.drain_s:.1f} "
            f"| {r.server_cpu:.2f} | {r.other_cpu:.2f} | {r.cpu_probe_mops:.0f} "
            f"| {'ok' if r.verified else 'MISMATCH'} ({f(r.events_stored)}) | {'**yes**' if r.kept_up else 'no'} |"
        )
    return "\n".join(lines)


def _indexer(args: argparse.Namespace) -> str:
    if args.indexer == "process":
        return "a process of its own (`USERTRAIL_INDEXER=process`)"
    return f"a thread in each worker (`USERTRAIL_INDEXER=thread`, `USERTRAIL_INDEX_DELAY_S={args.index_delay_s:g}`)"


def docs_block(info: dict[str, str], runs: list[Run], args: argparse.Namespace, command: str, started: str) -> str:
    return "\n".join(
        [
            RESULTS_START,
            "",
            f"- **Date:** {started}",
            f"- **Command:** `{command}`",
            f"- **Machine:** {info['nproc']} cores (`nproc`), {info['cpu_model']}, {info['memory']} RAM, {info['os']}",
            f"- **Code:** {info['code']}",
            f"- **Load:** paced at the offered rate over {args.connections} keep-alive connections, batches of "
            f"{ingest.EVENTS_PER_BATCH} WalkMe events, {args.duration:g} s window after {args.warmup:g} s of warm-up; "
            f"{args.workers} worker(s); indexer: {_indexer(args)}; session processing "
            + ("off" if args.no_sessions else "on")
            + "; durable commits (SQLite synchronous=FULL, PostgreSQL fsync=on)",
            "",
            table(runs),
            "",
            "*acked* counts answers with 200 during the window; latencies count from when each request was due, "
            "so queueing behind a slow server is included. *stored into `events`* is the rate at which the "
            "acknowledged events left the journal during the second half of the window (the indexers' pace "
            "while collection runs beside them). *kept up*: every answer 200, the stored rows equal the "
            f"acknowledged events, and at the end of the window the journal held less than {KEPT_UP_S:g} s of the "
            "offered load.",
            "",
            RESULTS_END,
        ]
    )


def update_docs(block: str) -> None:
    text = ingest.DOCS_FILE.read_text()
    if RESULTS_START in text and RESULTS_END in text:
        before, rest = text.split(RESULTS_START, 1)
        text = before + block + rest.split(RESULTS_END, 1)[1]
    else:  # first run: a new subsection right after the burst benchmark's generated block
        head, tail = text.split(ingest.RESULTS_END, 1)
        text = head + ingest.RESULTS_END + f"\n\n{DOCS_SECTION}\n\n{block}\n" + tail
    ingest.DOCS_FILE.write_text(text)


def main(argv: list[str] | None = None) -> int:
    """Run every rate on every engine; 1 if a check failed (kept up or not is a result, not a failure)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--databases", default="sqlite,postgresql")
    p.add_argument("--rates", default="20000,30000", help="offered events/s, comma-separated")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of the measured window")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--indexer", choices=("process", "thread"), default="process", help="the server's USERTRAIL_INDEXER")
    p.add_argument(
        "--index-delay-s", type=float, default=0.0, help="the server's USERTRAIL_INDEX_DELAY_S (thread indexer)"
    )
    p.add_argument("--no-sessions", action="store_true", help="run the server without its session loop")
    p.add_argument("--quiet-wait", type=float, default=20.0)
    p.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    args = p.parse_args(argv)
    command = ".venv/bin/python bench/ingest_sustained.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    info = ingest.machine_info()
    base_ms = int(time.time() * 1000) - 12 * 3_600_000
    seq, runs = 0, []
    scratch = Path(tempfile.mkdtemp(prefix="usertrail-sustained-"))
    try:
        for database in [d.strip() for d in args.databases.split(",") if d.strip()]:
            with contextlib.ExitStack() as stack:
                pg_pid, cluster_url = None, ""
                if database == "postgresql":
                    import sqlalchemy as sa

                    from usertrail.testing.postgres import TemporaryPostgres

                    pg = TemporaryPostgres()
                    cluster_url = pg.start()
                    stack.callback(pg.stop)
                    admin = sa.create_engine(cluster_url, isolation_level="AUTOCOMMIT")
                    stack.callback(admin.dispose)
                    pg_pid = int((pg.data / "postmaster.pid").read_text().split()[0])
                for offered in [int(r) for r in args.rates.split(",")]:
                    work_dir = scratch / f"run{len(runs)}"
                    work_dir.mkdir()
                    if database == "sqlite":
                        url = f"sqlite:///{work_dir / 'usertrail.db'}"
                    else:
                        with admin.connect() as conn:
                            conn.exec_driver_sql(f"CREATE DATABASE sustained{len(runs)}")
                        url = cluster_url.rsplit("/", 1)[0] + f"/sustained{len(runs)}"
                    print(f"{database}: {offered:,} events/s for {args.duration:g} s ...", flush=True)
                    run, built = run_one(database, url, offered, args, seq, base_ms, work_dir, pg_pid)
                    seq += built
                    runs.append(run)
                    print(table([run]).splitlines()[-1], flush=True)
                    shutil.rmtree(work_dir, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("\n" + table(runs))
    ingest.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    name = f"sustained-{time.strftime('%Y%m%d-%H%M%S')}.json"
    payload = {"benchmark": "ingest_sustained", "date": started, "command": command, "machine": info,
               "settings": vars(args), "runs": [{**asdict(r), "kept_up": r.kept_up} for r in runs]}  # fmt: skip
    (ingest.RESULTS_DIR / name).write_text(json.dumps(payload, indent=2) + "\n")
    print(f"JSON: {ingest.RESULTS_DIR / name}")
    if not args.no_docs:
        update_docs(docs_block(info, runs, args, command, started))
        print(f"updated {ingest.DOCS_FILE.relative_to(ingest.ROOT)}")
    return 0 if all(r.verified for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
