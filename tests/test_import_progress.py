"""An import's progress as the API shows it while the import runs, and the attribute registry's
record of who writes a name and when, through the real HTTP server on both engines."""

from __future__ import annotations

import itertools
from pathlib import Path

from test_update_api import create_client, get_token, update
from test_users_api import api, enable_uuid
from usertrail.integrations.csv_import import FileScan, mapping_from_options

from conftest import LiveServer
from samples import now_ms

DAY = 86_400_000


def test_a_job_shows_growing_progress_after_every_chunk(live: LiveServer, tmp_path: Path):
    enable_uuid(live)
    pid = live.project.project.id
    importer = live.app.state.csv_importer
    importer.chunk_rows = 100
    # Rows of ~200 bytes: a chunk spans more than the reader's 8 KiB read-ahead, so the bytes read
    # (which the progress is computed from) move with every chunk.
    path = tmp_path / "users.csv"
    path.write_text("user_id,note\n" + "".join(f"user-{i:03d},{'n' * 190}{i}\n" for i in range(450)))
    sha, size = FileScan.of_file(path)
    spec = mapping_from_options("user_id", [], [], [])
    job = importer.create_job(pid, path, spec, file_name="users.csv", sha256=sha, size=size)
    seen: list[dict] = []

    def poll(_progress) -> None:
        """Called after each chunk commits: what does a client polling the job see now?"""
        response = api(live, f"/imports/{job.id}")
        assert response.status_code == 200, response.text
        seen.append(response.json())

    finished = importer.run(job, path, on_progress=poll)
    assert finished["status"] == "done" and finished["rows"] == 450 and finished["progress"] == 1.0
    assert [s["status"] for s in seen] == ["running"] * 5
    assert [s["rows"] for s in seen] == [100, 200, 300, 400, 450]
    assert [s["rows_applied"] for s in seen] == [100, 200, 300, 400, 450]
    progress = [s["progress"] for s in seen]
    assert 0 < progress[0] < 0.5 and progress[-1] == 1.0
    assert all(a < b for a, b in itertools.pairwise(progress)), progress
    assert api(live, f"/imports/{job.id}").json()["status"] == "done"


def test_the_registry_lists_every_writer_of_a_name(live: LiveServer, tmp_path: Path):
    enable_uuid(live)
    pid = live.project.project.id
    importer = live.app.state.csv_importer
    created_at = now_ms() - DAY
    importer.clock = lambda: created_at  # the CSV import registers the name a day ago
    path = tmp_path / "plans.csv"
    path.write_text("user_id,Plan\nlena,VIP\n")
    sha, size = FileScan.of_file(path)
    job = importer.create_job(pid, path, mapping_from_options("user_id", [], [], []), file_name="p.csv", sha256=sha,
                              size=size)  # fmt: skip
    assert importer.run(job, path)["status"] == "done"

    def plan() -> dict:
        registry = api(live, "/attributes").json()["attributes"]
        return next(a for a in registry if a["name"] == "Plan")

    first = plan()
    assert (first["integrations"], first["created_at"], first["updated_at"]) == (["csv"], created_at, created_at)

    client = create_client(live, name="crm", fields=[{"payload": "plan", "name": "Plan", "type": "string"}],
                           id_path="id")  # fmt: skip
    assert update(live, get_token(live, client), {"data": [{"id": "max", "plan": "Free"}]}).status_code == 202
    second = plan()
    assert second["integrations"] == ["crm", "csv"]
    assert second["created_at"] == created_at and second["updated_at"] > created_at

    with live.admin() as admin:
        assert admin.patch(f"/api/projects/{pid}/users/u:lena/attributes", json={"Plan": "Pro"}).status_code == 200
    third = plan()
    assert third["integrations"] == ["admin_api", "crm", "csv"]
    assert third["created_at"] == created_at and third["updated_at"] >= second["updated_at"]
