"""The `usertrail` command, run as a real process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from usertrail.testing.postgres import free_port


def run(*args: str, data_dir: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "USERTRAIL_DATA_DIR": str(data_dir), "COLUMNS": "200"}
    env.pop("USERTRAIL_DATABASE_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "usertrail.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )
    if check:
        assert result.returncode == 0, result.stderr + result.stdout
    return result


def test_projects_and_keys(tmp_path: Path):
    created = run("projects", "create", "Shop", data_dir=tmp_path).stdout
    write_key = re.search(r"wk_[\w-]+", created).group(0)
    assert re.search(r"adm_[\w-]+", created) and "<script" in created
    listing = run("projects", "list", data_dir=tmp_path).stdout
    assert "Shop" in listing and write_key in listing and "production, test" in listing
    rotated = run("keys", "rotate", "1", "--kind", "write", "--grace-seconds", "0", data_dir=tmp_path).stdout
    assert "wk_" in rotated and write_key not in run("projects", "list", data_dir=tmp_path).stdout
    missing = run("keys", "rotate", "99", data_dir=tmp_path, check=False)
    assert missing.returncode == 2 and "no project 99" in missing.stderr
    bad_kind = run("keys", "rotate", "1", "--kind", "root", data_dir=tmp_path, check=False)
    assert bad_kind.returncode == 2 and "--kind" in bad_kind.stderr


@pytest.mark.slow
def test_serve_with_demo_traffic(tmp_path: Path):
    """`usertrail serve --demo` creates a project, prints its keys and fills it through HTTP."""
    port = free_port()
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("USERTRAIL_DATABASE_URL", None)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "usertrail.cli",
            "serve",
            "--port",
            str(port),
            "--demo",
            "--demo-users",
            "25",
            "--demo-weeks",
            "2",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output = ""
        deadline = time.monotonic() + 120
        while "demo:" not in output and time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line:
                break
            output += line
        assert "demo:" in output, output
        assert "failed" not in output.split("demo:")[1], output
        token = re.search(r"adm_[\w-]+", output).group(0)
        assert (tmp_path / "usertrail-data" / "usertrail.db").exists()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}) as c:
            assert c.get("/api/projects/1/stats").json()["events"] > 100
            rows = c.get("/api/projects/1/users/u:user-00000/events").json()["events"]
        types = {r["type"] for r in rows}
        assert "pageChange" in types and rows[0]["country"]
    finally:
        server.terminate()
        server.wait(timeout=30)
