"""The `usertrail` command: as a real process (the entry point, exit codes, `serve --demo`), and in the
test process for the longer command sequences (tests/cli_runner.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cli_runner import Ran, run_cli
from usertrail.testing.postgres import free_port


def real_process(*args: str, data_dir: Path) -> subprocess.CompletedProcess:
    """`python -m usertrail.cli ARGS…` as its own process."""
    env = {**os.environ, "USERTRAIL_DATA_DIR": str(data_dir), "COLUMNS": "200"}
    env.pop("USERTRAIL_DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "usertrail.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def run(*args: str, data_dir: Path, check: bool = True, stdin: str = "") -> Ran:
    """The command in the test process, on the SQLite file under `data_dir`."""
    env = {"USERTRAIL_DATA_DIR": str(data_dir), "USERTRAIL_DATABASE_URL": None}
    return run_cli(*args, env=env, stdin=stdin, check=check)


def test_projects_and_keys(tmp_path: Path):
    created = real_process("projects", "create", "Shop", data_dir=tmp_path)
    assert created.returncode == 0, created.stderr
    write_key = re.search(r"wk_[\w-]+", created.stdout).group(0)
    assert re.search(r"adm_[\w-]+", created.stdout) and "<script" in created.stdout
    listing = run("projects", "list", data_dir=tmp_path).stdout
    assert "Shop" in listing and write_key in listing and "production, test" in listing
    rotated = run("keys", "rotate", "1", "--kind", "write", "--grace-seconds", "0", data_dir=tmp_path).stdout
    assert "wk_" in rotated and write_key not in run("projects", "list", data_dir=tmp_path).stdout
    missing = real_process("keys", "rotate", "99", data_dir=tmp_path)
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
        one_time = re.search(r"one-time password : (\S+)", output).group(1)
        assert (tmp_path / "usertrail-data" / "usertrail.db").exists()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}) as c:
            assert c.get("/api/projects/1/stats").json()["events"] > 100
            rows = c.get("/api/projects/1/users/u:user-00000/events").json()["events"]
        types = {r["type"] for r in rows}
        assert "pageChange" in types and rows[0]["country"]
        # The first admin account signs in with the printed one-time password and must replace it.
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as browser:
            signed = browser.post(
                "/api/auth/login", json={"email": "admin@localhost.localdomain", "password": one_time}
            )
            assert signed.status_code == 200 and signed.json()["projects"][0]["role"] == "admin"
            assert signed.json()["account"]["password_change_required"] is True
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_accounts_commands(tmp_path: Path):
    run("projects", "create", "Shop", data_dir=tmp_path)
    created = run("accounts", "create", "Ann@Example.com", "--project", "1", "--role", "analyst", data_dir=tmp_path)
    assert "ann@example.com: role analyst on project 1" in created.stdout
    one_time = re.search(r"one-time password: (\S+)", created.stdout).group(1)
    typed = run(
        "accounts", "create", "bo@example.com", "--project", "1", "--role", "admin", "--password-stdin",
        data_dir=tmp_path, stdin="a long enough password\n",
    )  # fmt: skip
    assert "one-time" not in typed.stdout
    short = run(
        "accounts", "create", "cy@example.com", "--project", "1", "--password-stdin", data_dir=tmp_path,
        stdin="short\n", check=False,
    )  # fmt: skip
    assert short.returncode == 2 and "at least" in short.stderr
    assert (
        run("accounts", "create", "ann@example.com", "--project", "1", data_dir=tmp_path, check=False).returncode == 2
    )
    assert "no project 7" in run("accounts", "create", "x@example.com", "--project", "7", data_dir=tmp_path,
                                 check=False).stderr  # fmt: skip
    assert run("accounts", "create", "d@example.com", "--project", "1", "--role", "owner", data_dir=tmp_path,
               check=False).returncode == 2  # fmt: skip
    run("accounts", "set-role", "ann@example.com", "--project", "1", "--role", "viewer", data_dir=tmp_path)
    run("accounts", "disable", "bo@example.com", data_dir=tmp_path)
    listing = run("accounts", "list", data_dir=tmp_path).stdout
    assert re.search(r"ann@example\.com .*1:viewer .*active", listing)
    assert re.search(r"bo@example\.com .*1:admin .*disabled", listing)
    reset = run("accounts", "reset-password", "ann@example.com", data_dir=tmp_path).stdout
    new_one = re.search(r"one-time password for ann@example.com: (\S+)", reset).group(1)
    assert new_one != one_time
    assert run("accounts", "disable", "nobody@example.com", data_dir=tmp_path, check=False).returncode == 2
    run("accounts", "set-role", "ann@example.com", "--project", "1", "--role", "none", data_dir=tmp_path)
    assert re.search(r"ann@example\.com .* - ", run("accounts", "list", data_dir=tmp_path).stdout)
    # The stored password works (checked through the store: the CLI has no sign-in of its own).
    from usertrail.access.accounts import AccountStore
    from usertrail.store.database import create_engine

    engine = create_engine(f"sqlite:///{tmp_path / 'usertrail.db'}")
    store = AccountStore(engine)
    ann = store.by_email("ann@example.com")
    assert store.check_password(ann.id, new_one) and not store.check_password(ann.id, one_time)
    assert ann.password_change_required
    assert store.check_password(store.by_email("bo@example.com").id, "a long enough password")
    engine.dispose()
