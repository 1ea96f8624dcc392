"""The `usertrail` command: as a real process (the entry point, exit codes, `serve --demo`), and in the
test process for the longer command sequences (tests/cli_runner.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from cli_runner import Ran, run_cli
from usertrail.testing.postgres import free_port

from conftest import http_client


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
        with http_client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}) as c:
            # Answered means journaled; the server's indexer process stores the events a moment later.
            deadline = time.monotonic() + 30
            while (stats := c.get("/api/projects/1/stats").json())["ingest_backlog"]["requests"]:
                assert time.monotonic() < deadline, stats
                time.sleep(0.05)
            assert stats["events"] > 100
            rows = c.get("/api/projects/1/users/u:user-00000/events").json()["events"]
        types = {r["type"] for r in rows}
        assert "pageChange" in types and rows[0]["country"]
        # The first admin account signs in with the printed one-time password and must replace it.
        with http_client(base_url=f"http://127.0.0.1:{port}") as browser:
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


def _on(database_url: str, tmp_path: Path) -> dict[str, str | None]:
    """The environment that points the command at the test's database."""
    return {"USERTRAIL_DATA_DIR": str(tmp_path), "USERTRAIL_DATABASE_URL": database_url}


def test_purge_security_log_keeps_the_given_days(database_url: str, tmp_path: Path):
    from usertrail.store.database import create_engine, write_transaction
    from usertrail.store.projects import ProjectStore
    from usertrail.store.schema import security_log

    engine = create_engine(database_url)
    pid = ProjectStore(engine).create("p").project.id
    now = int(time.time() * 1000)
    with write_transaction(engine) as conn:
        conn.execute(
            security_log.insert(),
            [
                {"project_id": pid, "id": f"e{days}", "ts": now - days * 86_400_000 + 60_000, "ip": "81.2.69.160",
                 "user_agent": "x", "path": "/event/tell", "events": 1, "status": 200}
                for days in (1, 6, 8)
            ],
        )  # fmt: skip

    def left() -> list[str]:
        with engine.connect() as conn:
            return sorted(conn.execute(sa.select(security_log.c.id)).scalars())

    default = {**_on(database_url, tmp_path), "USERTRAIL_SECURITY_LOG_RETENTION_DAYS": None}
    assert "removed 1 security-log entries" in run_cli("purge-security-log", env=default).stdout
    assert left() == ["e1", "e6"]  # the default keeps 7 days
    in_env = {**_on(database_url, tmp_path), "USERTRAIL_SECURITY_LOG_RETENTION_DAYS": "3"}  # the server's setting
    ran = run_cli("purge-security-log", env=in_env, check=True)
    assert "removed 1 " in ran.stdout and left() == ["e1"]
    assert run_cli("purge-security-log", "--days", "-1", env=_on(database_url, tmp_path)).returncode == 2
    assert "removed 1 " in run_cli("purge-security-log", "--days", "0", env=_on(database_url, tmp_path)).stdout
    assert left() == []
    engine.dispose()


def test_serve_refuses_an_unusable_geoip_db(tmp_path: Path):
    bad = tmp_path / "GeoLite2-City.mmdb"
    bad.write_text("not a database")
    ran = run_cli("serve", "--data-dir", str(tmp_path / "data"), env={"USERTRAIL_GEOIP_DB": str(bad),
                  "USERTRAIL_DATABASE_URL": None})  # fmt: skip
    assert ran.returncode == 2
    assert "USERTRAIL_GEOIP_DB: cannot open" in ran.stderr and str(bad) in ran.stderr.replace("\n", "")
    assert not (tmp_path / "data").exists()  # refused before anything was created


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("USERTRAIL_INDEXER", "fork", "USERTRAIL_INDEXER='fork': expected one of process, thread"),
        ("USERTRAIL_INDEXER_NICE", "low", "invalid literal for int() with base 10: 'low'"),
    ],
)
def test_serve_refuses_a_setting_that_does_not_parse(tmp_path: Path, variable: str, value: str, reason: str):
    ran = run_cli("serve", "--data-dir", str(tmp_path / "data"), env={variable: value})
    assert ran.returncode == 2
    assert f"bad setting: {reason}" in ran.stderr.replace("\n", "")
    assert not (tmp_path / "data").exists()


def test_demo_then_sessions_process_then_rebuild(make_server, tmp_path: Path):
    """`usertrail demo` fills a running server through HTTP; `sessions process` closes the sessions and
    makes the End User Objects; `rebuild` makes the same again from the events alone."""
    from usertrail.store.database import write_transaction

    live = make_server(process_sessions=False)
    env = _on(live.settings.database_url, tmp_path)
    ran = run_cli("demo", "--url", live.base_url, "--key", live.project.write_key, "--users", "6", "--weeks", "1",
                  env=env, check=True)  # fmt: skip
    found = re.search(r"demo: (\d+) events from 6 users in (\d+) requests", ran.stdout)
    assert found and "failed" not in ran.stdout, ran.stdout
    live.index()  # what the server answered is journaled; its indexer may still be storing the last requests
    assert live.scalar("SELECT count(*) FROM events") == int(found.group(1))
    kinds = {tuple(r) for r in live.rows("SELECT DISTINCT type, app_type FROM events WHERE source = 'walkme'")}
    assert {("play", "wt"), ("complete", "wt"), ("open", "player"), ("play", "shoutout")} <= kinds, kinds
    assert {("click", "shoutout"), ("close", "shoutout")} & kinds, kinds
    assert live.scalar("SELECT count(*) FROM events WHERE source = 'native' AND type = 'identify'") > 0
    unreachable = run_cli("demo", "--url", f"http://127.0.0.1:{free_port()}", "--key", "wk_x", "--users", "1",
                          env=env)  # fmt: skip
    assert unreachable.returncode == 2 and "cannot reach" in unreachable.stderr

    assert live.scalar("SELECT count(*) FROM sessions") == 0
    processed = run_cli("sessions", "process", env=env, check=True).stdout
    closed = re.search(r"processed (\d+) users: (\d+) sessions closed, (\d+) End User Objects updated", processed)
    assert closed, processed
    # Every demo session ended over an hour ago: all are closed, and every user with a non-empty one has an object.
    assert live.scalar("SELECT count(*) FROM sessions WHERE status = 'open'") == 0
    assert int(closed.group(2)) == live.scalar("SELECT count(*) FROM sessions") > 0
    users_with_data = live.scalar("SELECT count(DISTINCT user_key) FROM sessions WHERE NOT is_empty")
    assert int(closed.group(3)) == live.scalar("SELECT count(*) FROM end_users") == users_with_data > 0
    before = derived(live)
    with write_transaction(live.engine) as conn:
        for table in ("sessions", "end_users", "identity_links"):
            conn.execute(sa.text(f"DELETE FROM {table}"))
    assert live.scalar("SELECT count(*) FROM end_users") == 0
    rebuilt = run_cli("rebuild", env=env, check=True).stdout
    pid, sessions_closed, profiles = live.project.project.id, closed.group(2), closed.group(3)
    counts = rf"project {pid}: \d+ end users, {sessions_closed} closed sessions, {profiles} End User Objects"
    assert re.search(counts, rebuilt), rebuilt
    assert derived(live) == before


def derived(live) -> dict:
    """Sessions and End User Objects, without the processing times (which differ by design)."""
    sessions = live.rows("SELECT * FROM sessions ORDER BY user_key, start_ts")
    users = live.rows("SELECT * FROM end_users ORDER BY user_key")
    return {
        "sessions": [{k: v for k, v in r._mapping.items() if k != "closed_at"} for r in sessions],
        "users": [{k: v for k, v in r._mapping.items() if k != "updated_at"} for r in users],
    }
