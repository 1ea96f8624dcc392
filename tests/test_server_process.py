"""A server process of its own (a uvicorn worker: `create_app()` without arguments) tunes garbage
collection for serving once started; an app built inside another program (as the tests do) leaves the
program's collector alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

_PROBE = textwrap.dedent(
    """
    import gc, json, sys
    from starlette.testclient import TestClient
    from usertrail.config import Settings
    from usertrail.web.app import create_app

    app = create_app() if sys.argv[1] == "server" else create_app(Settings.from_env())
    before = gc.get_threshold()
    with TestClient(app) as client:  # runs the lifespan, as uvicorn does
        assert client.get("/health").status_code == 200
        print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count()}))
    """
)


def _probe(kind: str, data_dir: Path) -> dict:
    env = {**os.environ, "USERTRAIL_DATA_DIR": str(data_dir), "USERTRAIL_PROCESS_SESSIONS": "0"}
    env.pop("USERTRAIL_DATABASE_URL", None)
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, kind], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_server_process_freezes_start_up_objects_and_collects_young_objects_rarely(tmp_path):
    seen = _probe("server", tmp_path)
    assert seen["before"][0] == 700  # Python's default, until the server has started
    assert seen["after"][0] == 50_000
    assert seen["frozen"] > 10_000  # the loaded modules, app and stores


def test_an_app_built_inside_another_program_leaves_its_collector_alone(tmp_path):
    seen = _probe("embedded", tmp_path)
    assert seen["after"] == seen["before"]
    assert seen["frozen"] == 0
