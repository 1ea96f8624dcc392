"""CSV import benchmark: `usertrail import csv` of 1,000,000 rows × 10 columns, on SQLite and PostgreSQL.

    .venv/bin/python bench/csv_import.py            # 1,000,000 rows on both engines, docs updated
    .venv/bin/python bench/csv_import.py --quick    # 100,000 rows, docs left alone

The file (cached under bench/results/data/) has an id column and nine attribute columns of the four
types (3 strings, 3 numbers, 2 dates, 1 boolean), seeded, with ids in ascending order as a database
export writes them. Each engine gets a fresh database and project; the import runs as the real
command in its own process (`python -m usertrail.cli import csv … --type …`), and the benchmark
takes its wall time and its peak RSS (VmHWM from /proc, polled: the import process and the reader
process it starts for large files, summed; for PostgreSQL the server's memory is not counted). After
each run the values in `custom_attributes` (one row per end user, one slot per attribute) and the
rows of `attribute_changes` (one per user and write) are counted: rows × 9 values and one history
row per CSV row.

Then the same file is imported again over it with `--force` (skip with `--no-force`): the general
path, where every user is stored, no value changes and each row only takes new stamps; the check
is that the values and history rows are unchanged and the job reports no value changed.

Because the machine is shared, wall time depends on what else runs. The benchmark therefore also
records CPU seconds, which depend far less on the load: the import process's own (user + system,
all threads, with its reader process's, from `wait4`) and, for PostgreSQL, the server's (every process of the throwaway
cluster, from /proc), and the 1-minute load average before and after each run.

Output: a table on stdout, JSON under bench/results/, and (unless --quick or --no-docs) the results
block of the "CSV import (issue 4)" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ingest import machine_info, process_tree, wait_for_quiet

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
DATA_DIR = RESULTS_DIR / "data"
DOCS_FILE = ROOT / "docs" / "benchmarks.md"
RESULTS_START = "<!-- csv-import-results:start (written by bench/csv_import.py) -->"
RESULTS_END = "<!-- csv-import-results:end -->"
HEADER = ["user_id", "plan", "country", "team", "seats", "score", "logins", "renewal", "signup", "trial"]
TYPES = ["seats=number", "score=number", "logins=number", "renewal=date", "signup=date", "trial=boolean"]
ATTRIBUTES = len(HEADER) - 1
TARGET_ROWS_S = 50_000
TARGET_RSS_MB = 200


def make_csv(rows: int, seed: int = 20261122) -> Path:
    """The benchmark file, generated once per size (about 80 bytes per row)."""
    path = DATA_DIR / f"csv-import-{rows}.csv"
    if path.exists():
        return path
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(seed)
    plans = ("free", "starter", "pro", "VIP", "enterprise")
    countries = ("DE", "FR", "US", "JP", "BR", "IN", "GB", "ES")
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # two benchmarks started at once each write their own
    with open(tmp, "w", encoding="utf-8", newline="") as out:
        out.write(",".join(HEADER) + "\n")
        for i in range(rows):
            out.write(
                f"user-{i:08d},{rnd.choice(plans)},{rnd.choice(countries)},team-{rnd.randrange(2000)},"
                f"{rnd.randrange(1, 500)},{rnd.random() * 100:.2f},{rnd.randrange(10_000)},"
                f"2027-{rnd.randrange(1, 13):02d}-{rnd.randrange(1, 29):02d},"
                f"2025-{rnd.randrange(1, 13):02d}-{rnd.randrange(1, 29):02d},{rnd.choice(('true', 'false'))}\n"
            )
    tmp.rename(path)
    return path


def prepare(url: str) -> int:
    """Migrate a fresh database; create the project (the default UUID provider admits imports)."""
    from usertrail.store.database import create_engine, migrate
    from usertrail.store.projects import ProjectStore

    engine = create_engine(url)
    try:
        migrate(engine)
        return ProjectStore(engine).create("bench").project.id
    finally:
        engine.dispose()


def counts(url: str) -> tuple[int, int, float, int]:
    """(values stored, history rows, the latest job's own seconds from creation to finish, values it changed)."""
    import sqlalchemy as sa

    from usertrail.store.database import create_engine

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            slots = conn.execute(sa.text("SELECT slot FROM attribute_registry")).scalars().all()
            present = " + ".join(f"count({slot})" for slot in slots) or "0"
            values = conn.execute(sa.text(f"SELECT {present} FROM custom_attributes")).scalar()
            history = conn.execute(sa.text("SELECT count(*) FROM attribute_changes")).scalar()
            job = conn.execute(
                sa.text("SELECT created_at, finished_at, values_changed FROM import_jobs ORDER BY id DESC")
            ).first()
        if job is None or job.finished_at is None:  # the import process failed or was stopped
            return values, history, float("nan"), -1
        return values, history, (job.finished_at - job.created_at) / 1000, job.values_changed
    finally:
        engine.dispose()


def server_cpu_seconds(data_dir: Path | None) -> float:
    """CPU seconds used so far by a PostgreSQL cluster: the postmaster with its reaped children, and
    the children still running. 0 without a cluster (SQLite runs in the import process)."""
    if data_dir is None:
        return 0.0
    postmaster = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    ticks = 0
    for pid in process_tree(postmaster):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a backend that ended meanwhile: its time is in the postmaster's children's
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
        if pid == postmaster:
            ticks += int(fields[13]) + int(fields[14])  # cutime, cstime of the backends that ended
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    database: str
    mode: str  # "new users" (fresh database) or "--force" (the same file again over the first import)
    rows: int
    seconds: float
    job_seconds: float
    rows_per_s: float
    values_per_s: float
    peak_rss_mb: float
    values_stored: int
    history_rows: int
    check: str
    cpu_s: float = 0.0  # the import process, all threads, with its reader process
    server_cpu_s: float = 0.0  # the PostgreSQL cluster
    load_before: float = 0.0  # 1-minute load average
    load_after: float = 0.0
    reader_cpu_s: float = 0.0  # the reader process alone (part of cpu_s)

    @property
    def rows_per_cpu_s(self) -> float:
        return self.rows / max(0.001, self.cpu_s + self.server_cpu_s)


def wait_with_peak(pid: int) -> tuple[int, resource.struct_rusage, float, float]:
    """Wait for the process: (status, rusage, peak RSS in MB of it and its reader process, the reader's
    CPU seconds), polled from /proc.

    `wait4`'s ru_maxrss is not the child's own peak: Linux folds the parent's peak RSS into a child
    started with vfork (as subprocess does) when it execs. After this script had counted a large
    SQLite file through its memory map, the next import reported the script's size (the 724 MB of
    an earlier run, not reproduced alone). VmHWM belongs to the new program only; polled every
    50 ms, it can miss at most the growth of the last 50 ms. A large file is read by a second
    process (`profiles/csv_reader.py`) that the import starts: the peak reported is the sum of
    each process's own peak (VmHWM), an upper bound of what both held at once. Its CPU time is in
    the rusage (`wait4` counts the children the import process waited for); the reader's own is
    its last polled utime + stime (it can miss its last 50 ms).
    """
    peaks: dict[int, int] = {}
    reader_ticks: dict[int, int] = {}
    while True:
        for member in process_tree(pid):
            try:
                for line in Path(f"/proc/{member}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peaks[member] = max(peaks.get(member, 0), int(line.split()[1]))
                if member != pid:
                    fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
                    reader_ticks[member] = int(fields[11]) + int(fields[12])  # utime, stime
            except (OSError, IndexError, ValueError):
                pass
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return status, usage, sum(peaks.values()) / 1024, sum(reader_ticks.values()) / os.sysconf("SC_CLK_TCK")
        time.sleep(0.05)


def run_import(
    database: str,
    url: str,
    project: int,
    path: Path,
    rows: int,
    data_dir: Path,
    pg_data: Path | None = None,
    force: bool = False,
) -> Result:
    """One `usertrail import csv` process: into a fresh project, or (`force`) the same file again over it."""
    command = [sys.executable, "-m", "usertrail.cli", "import", "csv", str(path), "--id-column", "user_id",
               "--project", str(project), "--database-url", url, "--data-dir", str(data_dir)]  # fmt: skip
    for t in TYPES:
        command += ["--type", t]
    if force:
        command.append("--force")
    load_before = os.getloadavg()[0]
    server_before = server_cpu_seconds(pg_data)
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    status, usage, peak_mb, reader_cpu = wait_with_peak(process.pid)
    seconds = time.perf_counter() - started
    server_cpu = server_cpu_seconds(pg_data) - server_before
    load_after = os.getloadavg()[0]
    stderr = process.stderr.read().decode() if process.stderr else ""
    values, history, job_seconds, changed = counts(url)
    expected = rows * ATTRIBUTES
    # A re-import of the same file changes no value and adds no history row.
    ok = os.waitstatus_to_exitcode(status) == 0 and values == expected and history == rows
    ok = ok and changed == (0 if force else expected)
    check = "ok" if ok else f"FAILED (exit {os.waitstatus_to_exitcode(status)}, {values} values) {stderr[-300:]}"
    return Result(
        database,
        "--force" if force else "new users",
        rows,
        round(seconds, 1),
        round(job_seconds, 1),
        round(rows / seconds),
        round(expected / seconds),
        round(peak_mb, 1),
        values,
        history,
        check,
        round(usage.ru_utime + usage.ru_stime, 1),
        round(server_cpu, 1),
        load_before,
        load_after,
        round(reader_cpu, 1),
    )


def table(results: list[Result]) -> str:
    lines = [
        "| database | import | rows | wall s | job s | rows/s | values/s | peak RSS MB | import CPU s "
        "| of which reader CPU s | server CPU s | rows per CPU s | load avg before → after | values stored "
        "| history rows | check |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.database} | {r.mode} | {r.rows:,} | {r.seconds} | {r.job_seconds} | {r.rows_per_s:,} | "
            f"{r.values_per_s:,} | "
            f"{r.peak_rss_mb} | {r.cpu_s} | {r.reader_cpu_s} | {r.server_cpu_s} | {r.rows_per_cpu_s:,.0f} | "
            f"{r.load_before:.1f} → {r.load_after:.1f} | {r.values_stored:,} | {r.history_rows:,} | {r.check} |"
        )
    return "\n".join(lines)


def targets(results: list[Result]) -> list[str]:
    out = []
    for r in results:
        if r.mode != "new users":  # the targets are for importing new users; a re-import is shown for scale
            out.append(f"- {r.database} {r.mode}: {r.rows_per_s:,} rows/s, peak RSS {r.peak_rss_mb} MB (no target)")
            continue
        speed = "met" if r.rows_per_s >= TARGET_ROWS_S else f"**missed** ({TARGET_ROWS_S / r.rows_per_s:.1f}× short)"
        memory = "met" if r.peak_rss_mb < TARGET_RSS_MB else "**missed**"
        out.append(
            f"- {r.database}: {r.rows_per_s:,} rows/s (target ≥ {TARGET_ROWS_S:,}): {speed}; "
            f"peak RSS {r.peak_rss_mb} MB (target < {TARGET_RSS_MB}): {memory}"
        )
    return out


def docs_block(results: list[Result], info: dict, command: str, raw: Path, load: str) -> str:
    software = info.get("packages", "") + (f", {info['postgres']}" if info.get("postgres") else "")
    return "\n".join(
        [
            RESULTS_START,
            "",
            f"- **Date:** {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            f"- **Command:** `{command}`",
            f"- **Machine:** {info.get('nproc')} cores (`nproc`), {info.get('cpu_model')}, {info.get('memory')}, "
            f"{info.get('os')}",
            f"- **Software:** Python {sys.version.split()[0]}, {software}",
            f"- **Code:** {info.get('code')}",
            f"- **Workload:** {results[0].rows:,} rows × {len(HEADER)} columns (id + {ATTRIBUTES} attributes: "
            "3 string, 3 number, 2 date, 1 boolean), new end users, ids ascending; "
            "one `usertrail import csv` process per engine into a fresh database, "
            "then (`--force`) the same file again over it; "
            "SQLite WAL synchronous=FULL, PostgreSQL fsync=on; "
            f"{load}; raw results in `{raw.relative_to(ROOT)}` (git-ignored)",
            "",
            table(results),
            "",
            "Targets:",
            "",
            *targets(results),
            "",
            RESULTS_END,
        ]
    )


def update_docs(block: str) -> None:
    text = DOCS_FILE.read_text()
    start, end = text.index(RESULTS_START), text.index(RESULTS_END) + len(RESULTS_END)
    DOCS_FILE.write_text(text[:start] + block + text[end:])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="100,000 rows; the docs are left alone")
    parser.add_argument("--databases", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--quiet-wait", type=float, default=20, help="wait up to this long for idle CPUs")
    parser.add_argument(
        "--no-force", dest="force", action="store_false", help="skip the forced re-import of the same file"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rows = 100_000
        args.no_docs = True
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    path = make_csv(args.rows)
    print(f"file: {path} ({path.stat().st_size / 1e6:.0f} MB)")
    results: list[Result] = []
    loads = []
    with tempfile.TemporaryDirectory(prefix="usertrail-csv-bench-") as scratch:
        scratch_dir = Path(scratch)
        for database in args.databases:
            if database == "sqlite":
                url, pg_data, pg = f"sqlite:///{scratch_dir / 'bench.db'}", None, None
            else:
                from usertrail.testing.postgres import PostgresUnavailable, TemporaryPostgres

                try:
                    pg = TemporaryPostgres({"max_wal_size": "4GB"})
                except PostgresUnavailable as exc:
                    print(f"skipping postgresql: {exc}")
                    continue
                url, pg_data = pg.start(), pg.data
            try:
                project = prepare(url)
                for force in (False, True) if args.force else (False,):
                    _, busy = wait_for_quiet(args.quiet_wait)
                    mode = "--force" if force else "new users"
                    loads.append(f"{database} {mode}: {busy:.2f} cores busy with other work before the run")
                    results.append(run_import(database, url, project, path, args.rows, scratch_dir, pg_data, force))
                    print(table(results[-1:]), flush=True)
            finally:
                if pg is not None:
                    pg.stop()
    print(table(results))
    print("\n".join(targets(results)))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    raw = RESULTS_DIR / f"csv-import-{time.strftime('%Y%m%d-%H%M%S')}.json"
    info = machine_info()
    raw.write_text(json.dumps({"results": [asdict(r) for r in results], "machine": info, "loads": loads}, indent=2))
    command = ".venv/bin/python bench/csv_import.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    if not args.no_docs:
        update_docs(docs_block(results, info, command.strip(), raw, "; ".join(loads)))
    return 0 if all(r.check == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
