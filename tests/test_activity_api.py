"""The admin audit log's API on both engines: filters (actor, action, target, dates), keyset paging, the CSV
export, and who may read it."""

from __future__ import annotations

import csv
import io
import time

from conftest import LiveServer
from replay_helpers import PASSWORD, add_account


def _audit_entries(live: LiveServer) -> None:
    """Five entries through the real routes: four role changes and one removal, by the admin token."""
    pid = live.project.project.id
    with live.admin() as admin:
        for email, role in [("a@example.com", "viewer"), ("b@example.com", "analyst"), ("c@example.com", "viewer")]:
            assert admin.put(f"/api/projects/{pid}/members/{email}", json={"role": role}).status_code == 201
        assert admin.put(f"/api/projects/{pid}/members/a@example.com", json={"role": "analyst"}).status_code == 200
        assert admin.delete(f"/api/projects/{pid}/members/c@example.com").status_code == 200


def test_audit_log_filters_pages_and_exports(live: LiveServer):
    pid = live.project.project.id
    before = int(time.time() * 1000)
    _audit_entries(live)
    with live.admin() as admin:
        base = f"/api/projects/{pid}/audit-log"
        every = admin.get(base).json()
        assert len(every["entries"]) == 5
        assert every["entries"][0]["action"] == "account.role_removed"  # newest first
        key_id = every["entries"][0]["actor"]  # the admin token's key id
        assert {e["actor"] for e in every["entries"]} == {key_id} and key_id.startswith("adm")

        by_target = admin.get(base, params={"target": "a@example.com"}).json()["entries"]
        assert [e["details"]["role"] for e in by_target] == ["analyst", "viewer"]
        assert len(admin.get(base, params={"action": "account.role_set"}).json()["entries"]) == 4
        assert admin.get(base, params={"actor": "someone-else"}).json() == {"entries": [], "next_before": None}
        assert len(admin.get(base, params={"actor": key_id, "action": "account.role_removed"}).json()["entries"]) == 1
        assert len(admin.get(base, params={"since": before, "until": before + 3_600_000}).json()["entries"]) == 5
        assert admin.get(base, params={"since": "2999-01-01"}).json()["entries"] == []
        assert len(admin.get(base, params={"until": "2999-01-01T00:00:00Z"}).json()["entries"]) == 5
        bad = admin.get(base, params={"since": "yesterday"})
        assert bad.status_code == 400 and bad.json()["path"] == "since"
        assert admin.get(base, params={"limit": "0"}).json()["path"] == "limit"

        first = admin.get(base, params={"limit": 2}).json()
        second = admin.get(base, params={"limit": 2, "before": first["next_before"]}).json()
        third = admin.get(base, params={"limit": 2, "before": second["next_before"]}).json()
        paged = [e["id"] for page in (first, second, third) for e in page["entries"]]
        assert paged == [e["id"] for e in every["entries"]]

        exported = admin.get(base + ".csv", params={"action": "account.role_set"})
        assert exported.status_code == 200
        assert exported.headers["content-type"].startswith("text/csv")
        assert "attachment" in exported.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(exported.text)))
        assert list(rows[0]) == ["id", "time_utc", "actor", "action", "target", "details"]
        assert [r["target"] for r in rows] == ["a@example.com", "b@example.com", "c@example.com", "a@example.com"]
        assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)  # oldest first
        assert rows[0]["details"] == '{"role":"viewer"}' and rows[0]["time_utc"].endswith("Z")
        assert len(list(csv.DictReader(io.StringIO(admin.get(base + ".csv").text)))) == 5
        assert admin.get(base + ".csv", params={"until": "bad"}).status_code == 400


def test_audit_log_csv_never_holds_a_formula(live: LiveServer):
    pid = live.project.project.id
    with live.admin() as admin:
        assert admin.put(f"/api/projects/{pid}/members/=cmd@example.com", json={"role": "viewer"}).status_code == 201
        rows = list(csv.DictReader(io.StringIO(admin.get(f"/api/projects/{pid}/audit-log.csv").text)))
    assert rows[0]["target"] == "'=cmd@example.com"


def test_only_audit_view_reads_the_audit_log(live: LiveServer):
    pid = live.project.project.id
    add_account(live, "ann@example.com", "analyst")
    with live.client() as client:
        login = client.post("/api/auth/login", json={"email": "ann@example.com", "password": PASSWORD})
        assert login.status_code == 200
        for path in ("/audit-log", "/audit-log.csv"):
            answer = client.get(f"/api/projects/{pid}{path}")
            assert answer.status_code == 403 and answer.json()["permission"] == "audit.view", path
    with live.client() as anonymous:
        assert anonymous.get(f"/api/projects/{pid}/audit-log.csv").status_code == 401
