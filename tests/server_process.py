"""A usertrail server as its own processes (uvicorn's supervisor and workers, as in production), and the
processes under it, read from /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

from usertrail.config import Settings
from usertrail.store.events import EventStore

from conftest import SSL_CONTEXT


def start(database_url: str, data_dir: Path, port: int, workers: int = 2) -> subprocess.Popen:
    """uvicorn with `workers` workers in a process group of its own, once /health answers."""
    env = {**os.environ, **Settings(data_dir=data_dir, database_url=database_url).to_env()}
    command = [
        sys.executable, "-m", "uvicorn", "usertrail.web.app:create_app", "--factory", "--host", "127.0.0.1",
        "--port", str(port), "--workers", str(workers), "--log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5, verify=SSL_CONTEXT).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"server did not start: {process.stderr.read().decode()[-2000:]}")


def wait_until_indexed(engine: sa.Engine, timeout_s: float = 60) -> None:
    """Until the server's indexer has emptied the ingest journal."""
    deadline = time.monotonic() + timeout_s
    while True:
        if not EventStore(engine).backlog().requests:
            return
        assert time.monotonic() < deadline, "the server's indexer did not empty the ingest journal"
        time.sleep(0.05)


def children(pid: int) -> list[int]:
    """The live (not zombie) processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # it exited meanwhile
            continue
        state, parent = fields[0], int(fields[1])
        if parent == pid and state != "Z":
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie left for a reaper does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
