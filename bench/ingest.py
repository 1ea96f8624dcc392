"""Ingest benchmark: WalkMe batches of 50 events, over HTTP, through the real server.

    .venv/bin/python bench/ingest.py            # full run (10 s timed per cell, ~2.5 minutes)
    .venv/bin/python bench/ingest.py --quick    # smoke run (3 s timed per cell, ~1 minute)

Matrix: {sqlite, postgresql} x {1, 2 uvicorn workers} x {full pipeline, decode_only ceiling}.
Every cell gets a fresh data folder (SQLite) or a fresh database (PostgreSQL, one throwaway
cluster for the run), a fresh project and a fresh server. The load generator runs in its own
process, builds every request (complete HTTP/1.1 bytes, every event unique across the run) before
the clock starts, then replays them over keep-alive connections with raw asyncio streams, so it
costs the 2-core machine as little as possible. After a `full` cell the server is stopped and the
`events` table is counted: it must hold exactly the events that were acknowledged.

Output: a table on stdout, JSON under bench/results/, and (full runs only) the results block of
the "Ingest (issue 2)" section of docs/benchmarks.md; the prose reading there is left alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import itertools
import json
import multiprocessing
import os
import platform
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from usertrail import demo

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
DOCS_FILE = ROOT / "docs" / "benchmarks.md"
DOCS_SECTION = "## Ingest (issue 2)"
RESULTS_START = "<!-- ingest-results:start (written by bench/ingest.py; edit the reading below, not this block) -->"
RESULTS_END = "<!-- ingest-results:end -->"

EVENTS_PER_BATCH = 50
TARGET_EVENTS_PER_S = 30_000
ORIGIN = "https://shopme.example.com"

# Desktop Chrome on the three desktop systems (the server drops bot and headless agents).
USER_AGENTS = [
    f"Mozilla/5.0 ({system}) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{major}.0.0.0 Safari/537.36"
    for system in ("Windows NT 10.0; Win64; x64", "Macintosh; Intel Mac OS X 10_15_7", "X11; Linux x86_64")
    for major in (122, 123, 124, 125)
]
# The demo's pages, roles and plans, so benchmark traffic looks like the demo's.
PAGES, ROLES, PLANS = demo.PAGES[:8], demo.ROLES, demo.PLANS

# The `data` part of each kind of event a WalkMe recorder sends, as in usertrail.demo; "@@pid@@"
# is the Walk-Thru play id, shared by a play, its steps and its completion.
_WT = {"type": "wt", "oId": 124910, "oName": "Create your first report", "pId": "@@pid@@", "pInit": {"type": 3}}
EVENT_KINDS: dict[str, tuple[str, dict]] = {
    "page": ("pageChange", {}),
    "wt_play": ("play", _WT),
    "wt_complete": ("complete", _WT),
    "player_open": ("open", {"type": "player", "pInit": {"type": 1}}),
    "search": ("search", {"type": "widgetSearch", "oName": "billing"}),
    "shoutout_play": ("play", {"type": "shoutout", "oId": 5002, "oName": "Upgrade to VIP"}),
    "shoutout_click": ("click", {"type": "shoutout", "oId": 5002, "oName": "Upgrade to VIP"}),
    "launcher": ("click", {"type": "launcher", "oId": 7001, "oName": "Need help?"}),
    "survey_play": ("play", {"type": "survey", "oId": 9001, "oName": "How are we doing?"}),
    "survey_submit": ("submitted", {"type": "survey", "oId": 9001, "oName": "How are we doing?"}),
    "ping": ("sessionPing", {"type": "none"}),
}
for _step in range(1, 7):
    EVENT_KINDS[f"wt_step{_step}"] = (
        "play",
        {
            "type": "step",
            "oId": 124910 * 100 + _step,
            "oName": f"Create your first report · step {_step}",
            "pId": "@@pid@@",
            "owId": 124910,
            "owType": "wt",
        },
    )
# One batch: what a browser flushes during a busy stretch of a session (kind, page index).
_SESSION = [
    ("page", 0), ("wt_play", 0), ("wt_step1", 0), ("wt_step2", 0), ("wt_step3", 0), ("wt_step4", 0),
    ("wt_step5", 0), ("wt_step6", 0), ("wt_complete", 0), ("page", 1), ("shoutout_play", 1),
    ("shoutout_click", 1), ("page", 2), ("player_open", 2), ("search", 2), ("launcher", 2), ("page", 3),
    ("survey_play", 3), ("survey_submit", 3), ("ping", 3), ("page", 4), ("launcher", 4), ("page", 5),
    ("player_open", 5), ("ping", 5),
]  # fmt: skip
BATCH_SCRIPT = (_SESSION * 2)[:EVENTS_PER_BATCH]


# --- request building (runs in the load-generator process, before the clock starts) --------------


def _event_template(kind: str, page: int) -> bytes:
    """One event as bytes with %-placeholders: named ones per request, then `%d` for the time."""
    import msgspec

    type_, data = EVENT_KINDS[kind]
    path, title = PAGES[page]
    # Same shape as usertrail.demo._event (a real WalkMe recorder event, ~900 bytes).
    event = {
        "time": "@@time@@",
        "type": type_,
        "data": data,
        "sId": "@@sid@@",
        "wm": {
            "uId": "3210be7ad82f403298f7c4da065ec657",
            "euId": "@@euid@@",
            "euIdSource": "@@src@@",
            "permId": -1,
            "env": 0,
            "interactionGuid": "@@sid@@",
            "platform": 1,
            "userVars": {"name": "@@name@@", "role": "@@role@@", "type": "@@plan@@", "status": "active", "info": ""},
        },
        "env": {
            "browser": {"name": "Chrome", "version": "@@bver@@"},
            "os": {"name": "@@os@@"},
            "mobile": False,
            "screen": {"height": 900, "width": 1440},
            "timezone": -120,
        },
        "ctx": {
            "location": {"protocol": "https:", "hostname": "shopme.example.com", "pathname": path},
            "isIframe": False,
            "visitId": "@@visit@@",
            "title": title,
        },
        "visions": {"sId": "@@sid@@"},
        "version": {"lib": "20190306-123518-32b80d9f", "pe": "5.0.0"},
    }
    encoded = msgspec.json.encode(event)
    assert b"%" not in encoded
    # The time is the first key, so after the per-request pass it is the only (positional) field.
    encoded = encoded.replace(b'"@@time@@"', b"%%d")
    return re.sub(rb"@@(\w+)@@", lambda m: b"%(" + m.group(1) + b")s", encoded)


@dataclass(frozen=True)
class _User:
    fields: dict[bytes, bytes]
    user_agent: bytes
    ip: bytes


def _public_ips(rng: random.Random, count: int) -> list[str]:
    """Random globally routable IPv4 addresses, so the server geolocates real-looking clients."""
    import ipaddress

    found: set[str] = set()
    while len(found) < count:
        ip = ipaddress.IPv4Address(rng.getrandbits(32))
        if ip.is_global and not ip.is_multicast:
            found.add(str(ip))
    return sorted(found)


def _users(rng: random.Random, count: int) -> list[_User]:
    ips = _public_ips(rng, min(count, 5_000))
    users = []
    for i in range(count):
        ua = USER_AGENTS[i % len(USER_AGENTS)]
        identified = rng.random() < 0.7
        eu_id = f"bench-user-{i:05d}" if identified else str(uuid.UUID(int=rng.getrandbits(128)))
        fields = {
            b"euid": eu_id.encode(),
            b"src": b"Identifier" if identified else b"Cache",
            b"name": f"Bench User {i}".encode() if identified else b"",
            b"role": rng.choice(ROLES).encode(),
            b"plan": rng.choice(PLANS).encode(),
            b"bver": re.search(r"Chrome/([\d.]+)", ua).group(1).encode(),  # type: ignore[union-attr]
            b"os": b"Windows" if "Windows" in ua else b"Mac OS X" if "Mac" in ua else b"Linux",
        }
        users.append(_User(fields, ua.encode(), ips[i % len(ips)].encode()))
    return users


def build_requests(spec: dict[str, Any]) -> tuple[list[bytes], int]:
    """Every request of one cell as complete HTTP/1.1 bytes, and the size of one body.

    Events are unique across the whole run: `time` advances by 1 ms per event from a per-cell
    offset, and session, visit and Walk-Thru play ids are fresh per request.
    """
    rng = random.Random(spec["seed"])
    users = _users(random.Random(7), spec["users"])
    templates = {(k, p): _event_template(k, p) for k, p in dict.fromkeys(BATCH_SCRIPT)}
    script = list(BATCH_SCRIPT)
    head = (
        b"POST /event/tell?key=%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: %%s\r\n"
        b"X-Forwarded-For: %%s\r\nOrigin: %s\r\nContent-Type: text/plain\r\nAccept: */*\r\n"
        b"Connection: keep-alive\r\nContent-Length: %%d\r\n\r\n"
    ) % (spec["key"].encode(), spec["port"], ORIGIN.encode())
    seq = spec["first_seq"]
    base_ms = spec["base_ms"]
    requests = []
    body_size = 0
    first = spec.get("first_request", 0)  # where a run made in parts goes on in the users' order
    for r in range(first, first + spec["requests"]):
        # Spread consecutive requests over the 20,000 users (a prime stride visits all of them).
        user = users[(r * 7_919) % len(users)]
        values = dict(user.fields)
        sid = str(uuid.UUID(int=rng.getrandbits(128))).encode()
        values[b"sid"] = sid
        values[b"visit"] = b"%032x" % rng.getrandbits(128)
        values[b"pid"] = b"%d-124910-%s" % (base_ms + seq, sid)
        staged = {key: tmpl % values for key, tmpl in templates.items()}
        # Stamped now, sent seconds later: that only shifts the server's clock-skew correction.
        lines = [b'{"_static":true,"Wm-Client-Timestamp":%d}' % int(time.time() * 1000)]
        for key in script:
            lines.append(staged[key] % (base_ms + seq))
            seq += 1
        body = b"\n".join(lines)
        body_size = len(body)
        requests.append(head % (user.user_agent, user.ip, len(body)) + body)
    return requests, body_size


# --- the load generator process ------------------------------------------------------------------


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response on a keep-alive connection: its status and body."""
    head = await reader.readuntil(b"\r\n\r\n")
    match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    return int(head[9:12]), await reader.readexactly(int(match.group(1))) if match else b""


async def _drive(spec: dict[str, Any], requests: list[bytes], pipe: Connection) -> dict[str, Any]:
    """Replay `requests` over keep-alive connections; one request in flight per connection."""
    loop = asyncio.get_running_loop()
    clock = time.perf_counter
    start = clock()
    window_start = start + spec["warmup_s"]
    window_end = window_start + spec["duration_s"]
    state = {"next": 0, "exhausted_at": None}
    done_at: list[float] = []
    latency: list[float] = []
    statuses: dict[int, int] = {}
    failures: list[str] = []

    async def one_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            now = clock()
            if now >= window_end:
                return
            i = state["next"]
            if i >= len(requests):
                state["exhausted_at"] = state["exhausted_at"] or now
                return
            state["next"] = i + 1
            writer.write(requests[i])
            try:
                status, body = await read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                failures.append(repr(exc))
                return
            end = clock()
            done_at.append(end)
            latency.append(end - now)
            statuses[status] = statuses.get(status, 0) + 1
            if status != 200 and len(failures) < 5:
                failures.append(f"{status}: {body[:300]!r}")

    async def announce() -> tuple[resource.struct_rusage, resource.struct_rusage]:
        # The parent samples server CPU on these messages; our own CPU is sampled here.
        await asyncio.sleep(max(0.0, window_start - clock()))
        pipe.send(("window_start", time.time()))
        before = resource.getrusage(resource.RUSAGE_SELF)
        await asyncio.sleep(max(0.0, window_end - clock()))
        pipe.send(("window_end", time.time()))
        return before, resource.getrusage(resource.RUSAGE_SELF)

    async def connect_gradually() -> list[asyncio.StreamWriter]:
        # Uvicorn's workers share one listening socket. Connections opened all at once to an idle
        # server mostly land on whichever worker wakes first (we saw 32/0), so they are opened
        # over the first half of the warm-up, while load runs: a busy worker accepts later, the
        # other one takes the next connection, as with a steady stream of real clients.
        writers, tasks = [], []
        pause = spec["warmup_s"] / 2 / spec["connections"]
        for _ in range(spec["connections"]):
            reader, writer = await asyncio.open_connection("127.0.0.1", spec["port"], limit=1 << 20)
            writers.append(writer)
            tasks.append(loop.create_task(one_connection(reader, writer)))
            await asyncio.sleep(pause)
        await asyncio.gather(*tasks)
        return writers

    announcer = loop.create_task(announce())
    writers = await connect_gradually()
    # Even if the pool ran out early, the window is announced in full, so the parent's samples
    # and ours cover the same span; the rate below then uses the shorter span that had load.
    before, after = await announcer
    load_s = clock() - start
    for writer in writers:
        writer.close()

    end = min(window_end, state["exhausted_at"] or window_end)
    in_window = sorted(lat for t, lat in zip(done_at, latency, strict=True) if window_start <= t <= end)
    used = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {
        "window_s": end - window_start,
        "load_s": load_s,
        "requests_in_window": len(in_window),
        "latencies_ms": [x * 1000 for x in in_window],
        "requests_sent": state["next"],
        "responses": len(done_at),
        "statuses": statuses,
        "failures": failures,
        "pool_exhausted": state["exhausted_at"] is not None and state["exhausted_at"] < window_end,
        "loadgen_cpu": used / spec["duration_s"],
    }


def load_generator(spec: dict[str, Any], pipe: Connection) -> None:
    """Process entry point: build the requests, report ready, wait for "go", drive, report."""
    try:
        began = time.perf_counter()
        requests, body_size = build_requests(spec)
        pipe.send(("ready", {"build_s": time.perf_counter() - began, "body_bytes": body_size}))
        if pipe.recv() != "go":
            return
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            runner = asyncio.run
        result = runner(_drive(spec, requests, pipe))
        pipe.send(("result", result))
    except Exception as exc:  # the parent must hear about it rather than wait forever
        pipe.send(("error", repr(exc)))
        raise


# --- the server and its database -----------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_database(url: str) -> str:
    """Migrate a fresh database, create the "bench" project allowing the demo origin; the write key."""
    import msgspec

    from usertrail.project_settings import UuidSettings
    from usertrail.store.database import create_engine, migrate
    from usertrail.store.projects import ProjectStore

    engine = create_engine(url)
    try:
        migrate(engine)
        store = ProjectStore(engine)
        new = store.create("bench")
        production = store.environments(new.project.id)["production"]
        # Configured as a customer whose recorder sends identified ids would be: a UUID provider
        # that admits them (with the default WalkMe-ID provider they would be pseudonymised).
        uuid = UuidSettings(provider="variable", source="currentUser.id")
        store.save_environment(
            new.project.id, "production", msgspec.structs.replace(production, allowed_origins=[ORIGIN], uuid=uuid)
        )
        return new.write_key
    finally:
        engine.dispose()


def _count(url: str, sql: str) -> int:
    import sqlalchemy as sa

    from usertrail.store.database import create_engine

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql)).scalar_one()
    finally:
        engine.dispose()


def journal_events(url: str) -> int:
    """Events answered but still in the ingest journal (not yet indexed into `events`)."""
    from usertrail.store.database import create_engine
    from usertrail.store.events import EventStore

    engine = create_engine(url)
    try:
        return EventStore(engine).backlog().events
    finally:
        engine.dispose()


def count_events(url: str) -> int:
    """Rows in the `events` table, read after the server has stopped."""
    return _count(url, "SELECT count(*) FROM events")


def start_server(port: int, workers: int, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """`uvicorn --factory` in its own process group, answering /health within 60 s."""
    command = [
        sys.executable, "-m", "uvicorn", "usertrail.web.app:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), "--log-level", "warning",
    ]  # fmt: skip
    log = log_path.open("wb")
    server = subprocess.Popen(
        command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT
    )
    log.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                conn.close()
                # With several workers /health may have reached only one; give the others a moment.
                time.sleep(0.5 * (workers - 1))
                return server
        time.sleep(0.1)
    stop_server(server)
    raise RuntimeError(f"server did not answer /health:\n{log_path.read_text()[-3000:]}")


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM (uvicorn shuts down gracefully: the writer drains), SIGKILL after 20 s."""
    if server.poll() is not None:
        return
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


# --- CPU accounting from /proc --------------------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time consumed so far by these processes (missing ones count 0)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
    return total / _CLOCK_TICKS


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


def busy_cores(before: tuple[float, float], after: tuple[float, float]) -> float:
    """How many cores were busy on average between two `machine_busy()` samples."""
    return (after[0] - before[0]) / max(1.0, after[1] - before[1]) * (os.cpu_count() or 1)


def cpu_probe(seconds: float = 0.25) -> float:
    """Millions of empty interpreter loop iterations per second: how fast a core is right now."""
    clock = time.perf_counter
    began = clock()
    n = 0
    while clock() - began < seconds:
        for _ in range(10_000):
            pass
        n += 10_000
    return n / (clock() - began) / 1e6


def wait_for_quiet(max_wait_s: float, threshold: float = 0.3) -> tuple[float, float]:
    """Wait (up to `max_wait_s`) for a second in which the machine is nearly idle.

    The machine may be shared (tests of other work running), and on 2 cores anything else
    running costs the server directly. Returns (seconds waited, busy cores in the last second).
    """
    began = time.monotonic()
    while True:
        before = machine_busy()
        time.sleep(1.0)
        busy = busy_cores(before, machine_busy())
        waited = time.monotonic() - began
        if busy < threshold or waited >= max_wait_s:
            return waited, busy


def connections_per_worker(server_pid: int, port: int) -> list[int]:
    """Established connections on `port` held by each server process that holds any.

    Uvicorn's workers share one listening socket, so which worker accepts each keep-alive
    connection is up to the kernel; an unbalanced split caps a 2-worker run.
    """
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    inodes.add(fields[9])
    counts = []
    for pid in process_tree(server_pid):
        with contextlib.suppress(OSError):
            held = 0
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:[") and target[8:-1] in inodes:
                        held += 1
            if held:
                counts.append(held)
    return sorted(counts, reverse=True)


# --- one cell ----------------------------------------------------------------------------------------


@dataclass
class Cell:
    """The result of one (database, workers, mode) measurement."""

    database: str
    workers: int
    mode: str
    connections: int
    run: int = 0
    events_per_s: float = 0.0
    requests_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    window_s: float = 0.0
    requests_in_window: int = 0
    events_acked: int = 0
    events_stored: int | None = None
    non_200: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    pool_exhausted: bool = False
    # CPU during the timed window, in cores: the server processes (with PostgreSQL's), the load
    # generator, and everything else on the machine (a shared machine makes numbers noisy).
    server_cpu: float = 0.0
    loadgen_cpu: float = 0.0
    other_cpu: float = 0.0
    connections_per_worker: list[int] = field(default_factory=list)
    quiet_wait_s: float = 0.0
    # Speed of this (virtual) CPU around the cell, in M loop iterations/s: on a shared host it
    # drifts, and every figure above drifts with it.
    cpu_probe_mops: float = 0.0
    build_s: float = 0.0
    body_bytes: int = 0
    # Full mode: events still journaled (answered, not yet in `events`) when the load ended, and the
    # seconds the server's indexers then took to store them.
    backlog_events: int = 0
    drain_s: float = 0.0
    load_s: float = 0.0  # from the first request to the last answer, warm-up included

    @property
    def indexed_per_s(self) -> float:
        """Events stored into `events` per second, from the first request until the journal was empty."""
        return self.events_acked / (self.load_s + self.drain_s) if self.load_s else 0.0

    @property
    def verified(self) -> bool:
        """Every request answered 200, and the database holds exactly what was acknowledged."""
        if self.mode == "full":
            return self.non_200 == 0 and self.events_stored == self.events_acked
        return self.non_200 == 0 and self.events_stored == 0


def _receive(pipe: Connection, loader: multiprocessing.process.BaseProcess, server: subprocess.Popen, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pipe.poll(0.05):
            message = pipe.recv()
            if message[0] == "error":
                raise RuntimeError(f"load generator failed: {message[1]}")
            return message
        if not loader.is_alive():
            raise RuntimeError(f"load generator exited with {loader.exitcode}")
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode} during the run")
    raise RuntimeError("timed out waiting for the load generator")


def run_cell(
    database: str,
    url: str,
    workers: int,
    mode: str,
    args: argparse.Namespace,
    first_seq: int,
    base_ms: int,
    work_dir: Path,
    postmaster: int | None,
    run: int,
) -> tuple[Cell, int]:
    """Start a server on a fresh database, drive it, stop it, verify what was stored.

    Returns the cell and the number of events it built (the next cell's events start after them).
    """
    key = prepare_database(url)
    port = free_port()
    rate = args.max_rps_ceiling if mode == "decode_only" else args.max_rps_full
    spec = {
        "port": port,
        "key": key,
        "connections": args.connections,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "requests": int(rate * (args.warmup + args.duration + 0.5)),
        "users": args.users,
        "seed": first_seq,
        "first_seq": first_seq,
        "base_ms": base_ms,
    }
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    loader = context.Process(target=load_generator, args=(spec, child_end), name="ingest-loadgen", daemon=True)
    loader.start()
    env = {
        "USERTRAIL_DATA_DIR": str(work_dir),
        "USERTRAIL_DATABASE_URL": url,
        "USERTRAIL_INGEST_MODE": mode,
        "USERTRAIL_COMMIT_DELAY_MS": str(args.commit_delay_ms),
        "USERTRAIL_INDEXER": args.indexer,
        # The load generator plays a reverse proxy: clients' addresses arrive in X-Forwarded-For.
        "USERTRAIL_TRUSTED_PROXIES": "127.0.0.1/32",
    }
    if args.no_sessions:
        # Session processing normally runs in every worker, beside ingest; this isolates ingest.
        env["USERTRAIL_PROCESS_SESSIONS"] = "0"
    try:
        server = start_server(port, workers, env, work_dir / "server.log")
    except BaseException:
        loader.kill()
        raise
    cell = Cell(database, workers, mode, args.connections, run)
    try:
        _, ready = _receive(parent_end, loader, server, 300)
        cell.build_s, cell.body_bytes = ready["build_s"], ready["body_bytes"]
        cell.quiet_wait_s, busy = wait_for_quiet(args.quiet_wait)
        if busy >= 0.3:
            print(f"    (machine still busy: {busy:.2f} cores used by other processes; measuring anyway)")
        probe_before = cpu_probe()
        parent_end.send("go")
        _receive(parent_end, loader, server, 60)  # window_start
        # Read the trees now: PostgreSQL backends exist once the workers have connected.
        server_pids = process_tree(server.pid) + (process_tree(postmaster) if postmaster else [])
        cpu0, busy0 = cpu_seconds(server_pids), machine_busy()
        t0 = time.monotonic()
        cell.connections_per_worker = connections_per_worker(server.pid, port)
        _receive(parent_end, loader, server, args.warmup + args.duration + 60)  # window_end
        cpu1, busy1 = cpu_seconds(server_pids), machine_busy()
        elapsed = time.monotonic() - t0
        _, result = _receive(parent_end, loader, server, 120)
        # The second probe waits for an idle server: in full mode its indexers drain the journal after the
        # load and would slow the probe down (a full cell then looked slower than it ran).
        probe_after_load = None if mode == "full" else cpu_probe()
        if mode == "full":
            # Answered events are durable in the ingest journal; the server's indexers store them into
            # `events` in bulk, during the load and after it. The backlog left when the load ended and the
            # time to index it give the rate at which this machine stores events end to end.
            cell.backlog_events = journal_events(url)
            drained = time.monotonic()
            while journal_events(url):
                if time.monotonic() - drained > 900:
                    raise RuntimeError("the server's indexers did not empty the journal within 15 minutes")
                time.sleep(0.2)
            cell.drain_s = time.monotonic() - drained
            probe_after_load = cpu_probe()
        cell.cpu_probe_mops = (probe_before + probe_after_load) / 2
    finally:
        loader.join(timeout=30)
        if loader.is_alive():
            loader.kill()
        stop_server(server)

    lat = result["latencies_ms"]
    cell.window_s = result["window_s"]
    cell.load_s = result["load_s"]
    cell.requests_in_window = result["requests_in_window"]
    cell.requests_per_s = cell.requests_in_window / cell.window_s
    cell.events_per_s = cell.requests_per_s * EVENTS_PER_BATCH
    if lat:
        cell.p50_ms = lat[len(lat) // 2]
        cell.p99_ms = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        cell.max_ms = lat[-1]
    cell.statuses = {str(k): v for k, v in result["statuses"].items()}
    cell.non_200 = sum(v for k, v in result["statuses"].items() if k != 200) + len(
        [f for f in result["failures"] if not f[:3].isdigit()]
    )
    cell.failures = result["failures"]
    cell.events_acked = result["statuses"].get(200, 0) * EVENTS_PER_BATCH
    cell.pool_exhausted = result["pool_exhausted"]
    cell.loadgen_cpu = result["loadgen_cpu"]
    cell.server_cpu = (cpu1 - cpu0) / elapsed
    cell.other_cpu = max(0.0, busy_cores(busy0, busy1) - cell.server_cpu - cell.loadgen_cpu)
    cell.events_stored = count_events(url)
    return cell, spec["requests"] * EVENTS_PER_BATCH


# --- the run ------------------------------------------------------------------------------------------


def machine_info() -> dict[str, str]:
    """What the numbers were measured on."""
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor() or "unknown",
    )  # fmt: skip
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
    os_name = platform.platform()
    with contextlib.suppress(OSError):
        os_release = Path("/etc/os-release").read_text()
        os_name = re.search(r'PRETTY_NAME="([^"]+)"', os_release).group(1) + f", Linux {platform.release()}"  # type: ignore[union-attr]
    versions = {}
    for package in ("uvicorn", "starlette", "msgspec", "sqlalchemy", "psycopg", "uvloop", "httptools"):
        with contextlib.suppress(PackageNotFoundError):
            versions[package] = version(package)
    postgres = ""
    with contextlib.suppress(Exception):
        from usertrail.testing.postgres import find_bin_dir

        out = subprocess.run([str(find_bin_dir() / "postgres"), "--version"], capture_output=True, text=True)
        postgres = out.stdout.strip()
    # The code measured: other work may be in progress, so say whether the tree was clean.
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    dirty = subprocess.run(["git", "status", "--porcelain", "src"], capture_output=True, text=True, cwd=ROOT)
    code = commit.stdout.strip() + (" with uncommitted changes in src/" if dirty.stdout.strip() else "")
    return {
        "code": code or "unknown",
        "cpus": str(os.cpu_count()),
        "nproc": subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip(),
        "cpu_model": model,
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "os": os_name,
        "python": platform.python_version(),
        "postgres": postgres,
        "packages": ", ".join(f"{k} {v}" for k, v in versions.items()),
    }


def _fmt_int(x: float) -> str:
    return f"{x:,.0f}"


def representatives(runs: list[Cell]) -> list[Cell]:
    """Per (database, workers, mode), the run with the median events/s (upper median), in matrix order."""
    groups: dict[tuple[str, int, str], list[Cell]] = {}
    for c in runs:
        groups.setdefault((c.database, c.workers, c.mode), []).append(c)
    return [sorted(g, key=lambda c: c.events_per_s)[len(g) // 2] for g in groups.values()]


def _spread(runs: list[Cell], c: Cell) -> str:
    rates = [r.events_per_s for r in runs if (r.database, r.workers, r.mode) == (c.database, c.workers, c.mode)]
    return f"{_fmt_int(min(rates))}–{_fmt_int(max(rates))}" if len(rates) > 1 else ""


def speed_corrected_ratio(runs: list[Cell], database: str, workers: int) -> float | None:
    """Full over ceiling with each cell's rate divided by its CPU probe: the median over runs.

    This VM's core speed drifts by up to 2x within minutes, so a ceiling cell and a full cell run a
    minute apart can see different machines; each run's pair is compared at equal CPU speed.
    """
    ratios = []
    for run in sorted({c.run for c in runs}):
        pair = {c.mode: c for c in runs if (c.database, c.workers, c.run) == (database, workers, run)}
        full, ceiling = pair.get("full"), pair.get("decode_only")
        if full and ceiling and full.cpu_probe_mops and ceiling.cpu_probe_mops and ceiling.events_per_s:
            ratios.append((full.events_per_s / full.cpu_probe_mops) / (ceiling.events_per_s / ceiling.cpu_probe_mops))
    return statistics.median(ratios) if ratios else None


def results_table(runs: list[Cell]) -> str:
    """The results as a Markdown table (also readable on a terminal); with repeats, the median run."""
    cells = representatives(runs)
    repeated = len(cells) < len(runs)
    header = (
        "| database | workers | mode | events/s | "
        + ("runs: min–max | " if repeated else "")
        + "requests/s | p50 ms | p99 ms | full/ceiling | at equal CPU speed | server CPU | load gen CPU | other CPU "
        "| conns per worker | CPU probe | acked events | journaled at load end | drain s | indexed events/s "
        "| stored events | check |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    ceilings = {(c.database, c.workers): c.events_per_s for c in cells if c.mode == "decode_only"}
    for c in cells:
        ceiling = ceilings.get((c.database, c.workers))
        ratio = f"{c.events_per_s / ceiling:.0%}" if c.mode == "full" and ceiling else ""
        corrected = speed_corrected_ratio(runs, c.database, c.workers) if c.mode == "full" else None
        at_equal_speed = f"{corrected:.0%}" if corrected else ""
        mode = "full" if c.mode == "full" else "ceiling (decode_only)"
        same = [r for r in runs if (r.database, r.workers, r.mode) == (c.database, c.workers, c.mode)]
        check = "ok" if all(r.verified for r in same) else "MISMATCH"
        if c.pool_exhausted:
            check += " (pool ran out: short window)"
        lines.append(
            f"| {c.database} | {c.workers} | {mode} | {_fmt_int(c.events_per_s)} | "
            + (f"{_spread(runs, c)} | " if repeated else "")
            + f"{_fmt_int(c.requests_per_s)} "
            f"| {c.p50_ms:.1f} | {c.p99_ms:.1f} | {ratio} | {at_equal_speed} "
            f"| {c.server_cpu:.2f} | {c.loadgen_cpu:.2f} "
            f"| {c.other_cpu:.2f} | {'/'.join(map(str, c.connections_per_worker))} | {c.cpu_probe_mops:.0f} "
            f"| {_fmt_int(c.events_acked)} "
            + (
                f"| {_fmt_int(c.backlog_events)} | {c.drain_s:.1f} | {_fmt_int(c.indexed_per_s)} "
                if c.mode == "full"
                else "| | | "
            )
            + f"| {_fmt_int(c.events_stored or 0)} | {check} |"
        )
    return "\n".join(lines)


def targets_summary(runs: list[Cell]) -> list[str]:
    """One line per target of issue 2: met or missed, with the (median) figures."""
    cells = representatives(runs)
    lines = []
    ceilings = {(c.database, c.workers): c.events_per_s for c in cells if c.mode == "decode_only"}
    for c in cells:
        if c.mode != "full":
            continue
        ceiling = ceilings.get((c.database, c.workers))
        if c.workers == 2:
            met = c.events_per_s >= TARGET_EVENTS_PER_S and all(
                r.verified for r in runs if (r.database, r.workers, r.mode) == (c.database, c.workers, c.mode)
            )
            lines.append(
                f"- {c.database}, 2 workers: {_fmt_int(c.events_per_s)} events/s durable "
                f"(target ≥ {_fmt_int(TARGET_EVENTS_PER_S)}): **{'met' if met else 'missed'}**; "
                f"indexed into `events` end to end at {_fmt_int(c.indexed_per_s)} events/s "
                f"({'≥' if c.indexed_per_s >= TARGET_EVENTS_PER_S else 'below'} the target)"
            )
        if ceiling:
            ratio = c.events_per_s / ceiling
            corrected = speed_corrected_ratio(runs, c.database, c.workers) or ratio
            lines.append(
                f"- {c.database}, {c.workers} worker{'s' if c.workers > 1 else ''}: full pipeline at {corrected:.0%} "
                f"of the ceiling at equal CPU speed ({ratio:.0%} of the median ceiling, {_fmt_int(ceiling)} "
                f"events/s, as measured) (target ≥ 50%): **{'met' if corrected >= 0.5 else 'missed'}**"
            )
    return lines


TABLE_LEGEND = [
    "Columns: *events/s* and *requests/s* count requests answered 200 within the timed window. *p50/p99* is "
    "per-request latency at the load generator; this is a closed loop, so p50 ≈ connections / requests/s. "
    "*full/ceiling* divides full by decode_only for the same database and workers; *at equal CPU speed* "
    "divides each cell's rate by its CPU probe first, run by run (the median over runs), since ceiling and full "
    "cells run a minute apart can meet different CPU speeds on this VM. *server CPU* is cores used "
    "by the uvicorn processes plus PostgreSQL's during the window; *other CPU* is everything else on the "
    "machine. *conns per worker* counts connections accepted per worker process at the start of the window "
    "(the rest are still in the accept queue). *CPU probe* is M empty-loop iterations/s on one core around the "
    "cell: this VM's speed drifts (30–55 seen), and throughput drifts with it. *acked events* is what the "
    "server answered 200 over the whole cell, warm-up included: durable in the ingest journal, from which the "
    "server's indexers store them into `events` (docs/collection.md#durability-and-indexing). *journaled at load "
    "end* is what the journal still held when the load stopped; *drain s* how long the indexers then took to "
    "empty it; *indexed events/s* divides the acked events by the time from the first request to the empty "
    "journal: the rate at which this machine stores events end to end. *stored events* is the `events` rows "
    "counted after the server stopped. *check* is ok when they are equal (zero stored for the ceiling) and no "
    "request failed.",
]


def docs_block(
    info: dict[str, str], cells: list[Cell], args: argparse.Namespace, command: str, started: str, json_name: str
) -> str:
    """The generated part of the docs section: machine, date, command, table, targets."""
    cell = cells[0]
    repeats = f", each cell run {args.repeat} times (the table shows the median run)" if args.repeat > 1 else ""
    return "\n".join(
        [
            RESULTS_START,
            "",
            f"- **Date:** {started}",
            f"- **Command:** `{command}`",
            f"- **Machine:** {info['nproc']} cores (`nproc`), {info['cpu_model']}, {info['memory']} RAM, {info['os']}",
            f"- **Software:** Python {info['python']}, {info['packages']}, {info['postgres']}",
            f"- **Code:** {info['code']}",
            f"- **Load:** {cell.connections} keep-alive connections from one load-generator process on the same "
            f"machine, batches of {EVENTS_PER_BATCH} WalkMe events (~{cell.body_bytes / 1024:.0f} KiB per request), "
            f"{args.duration:g} s timed window after {args.warmup:g} s of warm-up{repeats}; durable commits "
            f"(SQLite WAL with synchronous=FULL, PostgreSQL fsync=on); "
            + ("session processing off; " if args.no_sessions else "session processing on (server default); ")
            + ("indexer in a process of its own; " if args.indexer == "process" else "an indexer thread per worker; ")
            + f"raw results in `bench/results/{json_name}` (git-ignored)",
            "",
            results_table(cells),
            "",
            *TABLE_LEGEND,
            "",
            "Targets:",
            "",
            *targets_summary(cells),
            "",
            RESULTS_END,
        ]
    )


def update_docs(block: str) -> None:
    """Replace the generated block in the Ingest section, creating the file or section if needed."""
    text = DOCS_FILE.read_text() if DOCS_FILE.exists() else "# Benchmarks\n"
    if RESULTS_START in text and RESULTS_END in text:
        before, rest = text.split(RESULTS_START, 1)
        after = rest.split(RESULTS_END, 1)[1]
        text = before + block + after
    elif DOCS_SECTION in text:
        head, tail = text.split(DOCS_SECTION, 1)
        text = head + DOCS_SECTION + "\n\n" + block + "\n" + tail
    else:
        text = text.rstrip("\n") + f"\n\n{DOCS_SECTION}\n\n{block}\n"
    DOCS_FILE.parent.mkdir(parents=True, exist_ok=True)
    DOCS_FILE.write_text(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; the defaults are the published configuration."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short run: 3 s per cell, docs untouched")
    p.add_argument("--duration", type=float, help="timed seconds per cell (default 10, --quick 3)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before the timed window")
    p.add_argument("--connections", type=int, default=32, help="concurrent keep-alive connections")
    p.add_argument("--users", type=int, default=20_000, help="distinct end users (euId)")
    p.add_argument("--databases", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    p.add_argument("--modes", default="decode_only,full", help="comma-separated: decode_only, full")
    p.add_argument("--no-sessions", action="store_true", help="run the server without its session-processing loop")
    p.add_argument("--repeat", type=int, default=1, help="run the matrix N times; tables show the median run")
    p.add_argument("--commit-delay-ms", type=float, default=0.0, help="USERTRAIL_COMMIT_DELAY_MS for the server")
    p.add_argument(
        "--max-rps-full", type=float, default=2_800, help="requests/s the pre-built pool covers in full mode"
    )
    p.add_argument(
        "--max-rps-ceiling", type=float, default=4_500, help="requests/s the pre-built pool covers in decode_only"
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=20.0,
        help="seconds to wait, before each cell, for other processes to leave the CPUs idle",
    )
    p.add_argument("--indexer", choices=("process", "thread"), default="process", help="the server's USERTRAIL_INDEXER")
    p.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    p.add_argument("--from-json", type=Path, help="re-render the docs block from a results JSON instead of running")
    p.add_argument("--update-docs", action="store_true", help="update docs/benchmarks.md even with --quick")
    args = p.parse_args(argv)
    if args.duration is None:
        args.duration = 3.0 if args.quick else 10.0
    return args


def render_saved(path: Path) -> int:
    """Rewrite the docs block from a saved run (after a change to the block's layout)."""
    saved = json.loads(path.read_text())
    names = {f for f in Cell.__dataclass_fields__}
    cells = [Cell(**{k: v for k, v in c.items() if k in names}) for c in saved["cells"]]
    args = parse_args(shlex.split(saved["command"])[2:])
    update_docs(docs_block(saved["machine"], cells, args, saved["command"], saved["date"], path.name))
    print(results_table(cells))
    print(f"updated {DOCS_FILE.relative_to(ROOT)} from {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the matrix, print the table, write JSON and (full runs) the docs; 1 if a check failed."""
    args = parse_args(argv)
    if args.from_json:
        return render_saved(args.from_json)
    command = (
        ".venv/bin/python bench/ingest.py" + (" " + shlex.join(argv if argv is not None else sys.argv[1:])).rstrip()
    )
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    info = machine_info()
    print(f"machine: {info['nproc']} cores, {info['cpu_model']}, {info['memory']}, {info['os']}")
    databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    worker_counts = [int(w) for w in args.workers.split(",")]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    base_ms = int(time.time() * 1000) - 12 * 3_600_000  # event times: the last 12 hours
    seq = 0
    total = len(databases) * len(worker_counts) * len(modes) * args.repeat
    cells: list[Cell] = []
    scratch = Path(tempfile.mkdtemp(prefix="usertrail-bench-"))
    try:
        for database in databases:
            with contextlib.ExitStack() as stack:
                postmaster: int | None = None
                admin = None
                if database == "postgresql":
                    from usertrail.testing.postgres import PostgresUnavailable, TemporaryPostgres

                    try:
                        pg = TemporaryPostgres()
                    except PostgresUnavailable as exc:
                        print(f"skipping postgresql: {exc}")
                        continue
                    cluster_url = pg.start()
                    stack.callback(pg.stop)
                    import sqlalchemy as sa

                    admin = sa.create_engine(cluster_url, isolation_level="AUTOCOMMIT")
                    stack.callback(admin.dispose)
                    postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
                for run, workers, mode in itertools.product(range(args.repeat), worker_counts, modes):
                    n = len(cells)
                    work_dir = scratch / f"cell{n}"
                    work_dir.mkdir()
                    if database == "sqlite":
                        url = f"sqlite:///{work_dir / 'usertrail.db'}"
                    else:
                        assert admin is not None
                        with admin.connect() as conn:
                            conn.exec_driver_sql(f"CREATE DATABASE bench_cell{n}")
                            conn.exec_driver_sql("CHECKPOINT")
                        url = cluster_url.rsplit("/", 1)[0] + f"/bench_cell{n}"
                    print(f"[{n + 1}/{total}] {database}, {workers} worker(s), {mode} ...", flush=True)
                    cell, built = run_cell(database, url, workers, mode, args, seq, base_ms, work_dir, postmaster, run)
                    seq += built
                    cells.append(cell)
                    stored = "-" if cell.events_stored is None else _fmt_int(cell.events_stored)
                    print(
                        f"    {_fmt_int(cell.events_per_s)} events/s, p50 {cell.p50_ms:.1f} ms, "
                        f"p99 {cell.p99_ms:.1f} ms; CPU cores: server {cell.server_cpu:.2f}, "
                        f"others {cell.other_cpu:.2f}; probe {cell.cpu_probe_mops:.0f}; "
                        f"conns {'/'.join(map(str, cell.connections_per_worker))}; "
                        f"acked {_fmt_int(cell.events_acked)}, stored {stored}"
                        + (
                            f" (journal at load end {_fmt_int(cell.backlog_events)}, drained in {cell.drain_s:.1f} s, "
                            f"indexed {_fmt_int(cell.indexed_per_s)} events/s)"
                            if mode == "full"
                            else ""
                        )
                        + ": "
                        f"{'ok' if cell.verified else 'MISMATCH'}"
                        + (f"; failures: {cell.failures}" if cell.failures else ""),
                        flush=True,
                    )
                    shutil.rmtree(work_dir, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print()
    print(results_table(cells))
    print()
    print("\n".join(targets_summary(cells)))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    json_name = f"ingest-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if args.quick else ''}.json"
    payload = {
        "benchmark": "ingest",
        "date": started,
        "command": command,
        "machine": info,
        "settings": {k: v for k, v in vars(args).items()},
        "cells": [{**asdict(c), "verified": c.verified} for c in cells],
    }
    (RESULTS_DIR / json_name).write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nJSON: {RESULTS_DIR / json_name}")
    if not args.no_docs and (not args.quick or args.update_docs):
        update_docs(docs_block(info, cells, args, command, started, json_name))
        print(f"updated {DOCS_FILE.relative_to(ROOT)}")
    return 0 if all(c.verified for c in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
