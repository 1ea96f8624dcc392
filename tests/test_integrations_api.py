"""The CSV preview route of the upload page's mapping step, on both engines, through the real server:
delimiter, header, sample, suggested types (the registry's first), cut files, refusals and permissions."""

from __future__ import annotations

from usertrail.integrations.csv_import import SAMPLE_BYTES
from usertrail.project_settings import UuidSettings

from conftest import LiveServer
from replay_helpers import PASSWORD, add_account


def _preview(live: LiveServer, body: bytes, complete: str | None = "true", **params):
    query = {**({"complete": complete} if complete is not None else {}), **params}
    with live.admin() as admin:
        return admin.post(
            f"/api/projects/{live.project.project.id}/imports/csv/preview",
            content=body,
            params=query,
            headers={"Content-Type": "text/csv"},
        )


def test_preview_reads_the_header_and_suggests_types(live: LiveServer):
    pid = live.project.project.id
    production = live.projects.environments(pid)["production"]
    production.uuid = UuidSettings(provider="variable", source="currentUser.id")
    live.projects.save_environment(pid, "production", production)
    with live.admin() as admin:
        # "Seats" registered as a string: the preview suggests the registered type, not the sampled one.
        written = admin.patch(f"/api/projects/{pid}/users/u:x/attributes", json={"Seats": "twelve"})
        assert written.status_code == 200, written.text
    body = "\ufeffuser_id;plan;Seats;renewal;trial;zip\nu1;VIP;3;2027-01-31;yes;007\nu2;free;12;2027-02-01;no;123\n"
    answer = _preview(live, body.encode())
    assert answer.status_code == 200, answer.text
    preview = answer.json()
    assert preview["delimiter"] == "semicolon" and preview["bom"] is True
    assert preview["header"] == ["user_id", "plan", "Seats", "renewal", "trial", "zip"]
    assert preview["sample"] == [
        ["u1", "VIP", "3", "2027-01-31", "yes", "007"],
        ["u2", "free", "12", "2027-02-01", "no", "123"],
    ]
    assert preview["rows_sampled"] == 2 and preview["cap"] == 100
    types = {c["column"]: c["suggested_type"] for c in preview["columns"]}
    assert types == {
        "user_id": "string",
        "plan": "string",
        "Seats": "string",
        "renewal": "date",
        "trial": "boolean",
        "zip": "string",  # a leading zero keeps it text
    }
    seats = next(c for c in preview["columns"] if c["column"] == "Seats")
    assert seats["registered_type"] == "string"
    assert next(c for c in preview["columns"] if c["column"] == "plan")["registered_type"] is None
    assert preview["count"] == len(preview["registered"])


def test_a_cut_preview_drops_its_last_row(live: LiveServer):
    rows = "".join(f"u{i},{i}\n" for i in range(5000))
    head = ("id,score\n" + rows).encode()[:SAMPLE_BYTES]
    answer = _preview(live, head, complete="false")
    assert answer.status_code == 200, answer.text
    preview = answer.json()
    assert preview["delimiter"] == "comma"
    last = preview["rows_sampled"]
    assert 0 < last <= 1000
    assert {c["column"]: c["suggested_type"] for c in preview["columns"]} == {"id": "string", "score": "number"}
    # Without `complete`, the head is taken as the whole file: the same file cut mid-row is still readable.
    assert _preview(live, b"id,score\nu1,1\nu2,", complete=None).status_code == 200


def test_preview_refusals(live: LiveServer):
    one_column = _preview(live, b"only\nu1\n")
    assert one_column.status_code == 400 and one_column.json()["error"] == "invalid_csv"
    assert "two columns" in one_column.json()["reason"] and one_column.json()["path"] == "$"
    empty = _preview(live, b"   \n")
    assert empty.status_code == 400 and "empty" in empty.json()["reason"]
    latin1 = _preview(live, "id,name\nu1,J\xf6rg\n".encode("latin-1"))
    assert latin1.status_code == 400 and latin1.json()["line"] == 2
    too_big = _preview(live, b"id,x\n" + b"u,1\n" * (SAMPLE_BYTES // 4 + 1))
    assert too_big.status_code == 413 and too_big.json()["error"] == "too_large"
    unknown = _preview(live, b"id,x\nu,1\n", dry_run="true")
    assert unknown.status_code == 400 and unknown.json()["path"] == "dry_run"
    bad_flag = _preview(live, b"id,x\nu,1\n", complete="perhaps")
    assert bad_flag.status_code == 400 and bad_flag.json()["path"] == "complete"


def test_preview_needs_integrations_manage(live: LiveServer):
    pid = live.project.project.id
    add_account(live, "ann@example.com", "analyst")
    with live.client() as client:
        login = client.post("/api/auth/login", json={"email": "ann@example.com", "password": PASSWORD})
        csrf = login.json()["csrf_token"]
        answer = client.post(
            f"/api/projects/{pid}/imports/csv/preview",
            content=b"id,x\nu,1\n",
            headers={"Content-Type": "text/csv", "X-CSRF-Token": csrf},
        )
        assert answer.status_code == 403 and answer.json()["permission"] == "integrations.manage"
