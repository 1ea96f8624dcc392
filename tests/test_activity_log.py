"""The playback activity log on both engines: appends, list/filter/CSV export over HTTP, chain verification
(tampering by raw SQL is found), concurrent appends, and properties of the canonical encoding."""

from __future__ import annotations

import csv
import io
import shutil
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.requests import Request

from cli_runner import Ran, run_cli
from usertrail.access import activity_log
from usertrail.access.activity_log import GENESIS, Entry, RequestFacts, canonical, decode_canonical, entry_hash
from usertrail.access.principal import Principal
from usertrail.config import Settings
from usertrail.store.database import write_transaction
from usertrail.store.projects import ProjectStore

from conftest import LiveServer

ANN = Principal(1, "account", "admin", frozenset(), "7", "ann@example.com")
TOKEN = Principal(1, "token", "admin", frozenset(), "adm_abcdefgh")
FACTS = RequestFacts("81.2.69.0", "Mozilla/5.0 test")
T0 = 1_800_000_000_000


def append(engine: sa.Engine, project_id: int, principal: Principal, action: str, recording: str, ts: int):
    with write_transaction(engine) as conn:
        return activity_log.append(conn, project_id, principal, action, recording, FACTS, ts=ts)


def test_append_takes_masked_ip_and_user_agent_from_the_request(engine):
    project_id = ProjectStore(engine).create("p").project.id
    app = type("App", (), {})()
    app.state = type("State", (), {"settings": Settings()})()
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(b"user-agent", b"Firefox/125.0")],
        "client": ("203.0.113.77", 5555),
        "app": app,
    }
    with write_transaction(engine) as conn:
        entry = activity_log.append(conn, project_id, ANN, "view", "rec-1", Request(scope))
    assert (entry.seq, entry.ip_masked, entry.user_agent) == (1, "203.0.113.0", "Firefox/125.0")
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT * FROM activity_log")).one()
    assert "203.0.113.77" not in repr(tuple(stored)) and stored.prev_hash == GENESIS
    with pytest.raises(ValueError):
        append(engine, project_id, ANN, "edit", "rec-1", T0)


def fill(live: LiveServer) -> int:
    pid = live.project.project.id
    append(live.engine, pid, ANN, "view", "rec-1", T0)
    append(live.engine, pid, TOKEN, "export", "rec-1", T0 + 60_000)
    append(live.engine, pid, ANN, "delete", "rec-2", T0 + 86_400_000)
    return pid


def test_list_filter_and_export_over_http(live):
    pid = fill(live)
    other = live.projects.create("other")
    append(live.engine, other.project.id, ANN, "view", "rec-9", T0)
    with live.admin() as admin:

        def seqs(query: str = "") -> list[int]:
            response = admin.get(f"/api/projects/{pid}/activity-log{query}")
            assert response.status_code == 200, response.text
            return [e["seq"] for e in response.json()["entries"]]

        assert seqs() == [3, 2, 1]  # newest first, this project only
        assert seqs("?actor=ann@example.com") == [3, 1]
        assert seqs("?actor=7") == [3, 1]
        assert seqs("?actor=adm_abcdefgh") == [2]
        assert seqs("?action=export") == [2]
        assert seqs("?recording=rec-1") == [2, 1]
        assert seqs(f"?since={T0 + 1}") == [3, 2]
        assert seqs("?since=2027-01-15T08:01:00Z&until=2027-01-16") == [2]
        assert seqs("?limit=2") == [3, 2] and seqs("?limit=2&before=2") == [1]
        first = admin.get(f"/api/projects/{pid}/activity-log?limit=1").json()
        assert first["next_before"] == 3
        entry = first["entries"][0]
        assert entry["actor_email"] == "ann@example.com" and entry["ip_masked"] == "81.2.69.0"
        assert len(entry["hash"]) == 64 and entry["prev_hash"] != GENESIS
        bad = admin.get(f"/api/projects/{pid}/activity-log?action=edit")
        assert bad.status_code == 400 and bad.json()["path"] == "action"
        bad_date = admin.get(f"/api/projects/{pid}/activity-log?since=yesterday")
        assert bad_date.status_code == 400 and bad_date.json()["path"] == "since"
        exported = admin.get(f"/api/projects/{pid}/activity-log.csv?recording=rec-1")
        assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
        assert "attachment" in exported.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(exported.text)))
        assert [(r["seq"], r["action"], r["actor_id"]) for r in rows] == [
            ("1", "view", "7"),
            ("2", "export", "adm_abcdefgh"),
        ]
        assert rows[0]["time_utc"] == "2027-01-15T08:00:00.000Z"
        assert admin.get(f"/api/projects/{pid}/activity-log/verify").json() == {
            "project_id": pid,
            "ok": True,
            "entries": 3,
            "first_broken_seq": None,
            "reason": None,
        }


def test_csv_export_defuses_formulas(live):
    pid = live.project.project.id
    with write_transaction(live.engine) as conn:
        activity_log.append(conn, pid, ANN, "view", "rec-1", RequestFacts("81.2.69.0", '=HYPERLINK("x")'), ts=T0)
    with live.admin() as admin:
        rows = list(csv.DictReader(io.StringIO(admin.get(f"/api/projects/{pid}/activity-log.csv").text)))
    assert rows[0]["user_agent"] == '\'=HYPERLINK("x")'


def test_verify_finds_an_edited_and_a_deleted_entry(live, tmp_path: Path):
    pid = fill(live)
    append(live.engine, pid, ANN, "view", "rec-3", T0 + 2 * 86_400_000)
    assert activity_log.verify(live.engine, pid).ok
    with live.engine.begin() as conn:  # someone with database access edits who did it
        conn.execute(sa.text("UPDATE activity_log SET actor_email = 'bob@example.com' WHERE seq = 2"))
    result = activity_log.verify(live.engine, pid)
    assert (result.ok, result.first_broken_seq, result.entries) == (False, 2, 1)
    assert "changed" in result.reason
    with live.admin() as admin:
        assert admin.get(f"/api/projects/{pid}/activity-log/verify").json()["first_broken_seq"] == 2
    with live.engine.begin() as conn:  # …and then recomputes that entry's hash: the next link breaks
        row = conn.execute(sa.text("SELECT * FROM activity_log WHERE seq = 2")).one()
        forged = entry_hash(Entry(**{k: getattr(row, k) for k in activity_log.ENTRY_FIELDS}), row.prev_hash)
        conn.execute(sa.text("UPDATE activity_log SET hash = :h WHERE seq = 2"), {"h": forged})
    assert activity_log.verify(live.engine, pid).first_broken_seq == 3
    with live.engine.begin() as conn:  # deleting an entry leaves a gap
        conn.execute(sa.text("DELETE FROM activity_log WHERE seq IN (2, 3)"))
    result = activity_log.verify(live.engine, pid)
    assert (result.first_broken_seq, result.entries) == (2, 1) and "found 4" in result.reason
    with live.engine.begin() as conn:  # so does deleting the first one
        conn.execute(sa.text("DELETE FROM activity_log WHERE seq = 1"))
    assert activity_log.verify(live.engine, pid).first_broken_seq == 1


def test_cli_verify(tmp_path: Path):
    data_dir = tmp_path / "data"
    url = f"sqlite:///{(data_dir / 'usertrail.db').resolve()}"
    from usertrail.store.database import create_engine, migrate

    engine = create_engine(url)
    migrate(engine)
    pid = ProjectStore(engine).create("p").project.id
    for i in range(3):
        append(engine, pid, ANN, "view", f"rec-{i}", T0 + i)
    env = {"USERTRAIL_DATA_DIR": str(data_dir), "USERTRAIL_DATABASE_URL": None}

    def verify_cli() -> Ran:
        return run_cli("activity-log", "verify", env=env)

    good = verify_cli()
    assert good.returncode == 0 and "3 entries, chain intact" in good.stdout
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE activity_log SET recording_id = 'rec-x' WHERE seq = 2"))
    broken = verify_cli()
    assert broken.returncode == 1 and "broken at entry 2" in broken.stdout
    engine.dispose()


def test_concurrent_appends_keep_one_chain(engine):
    """Writers on separate connections and threads append to one project: no fork, no gap."""
    pid = ProjectStore(engine).create("p").project.id
    writers, each = 6, 15
    errors: list[BaseException] = []
    start = threading.Barrier(writers)

    def work(n: int) -> None:
        try:
            start.wait()
            for i in range(each):
                append(engine, pid, ANN, "view", f"rec-{n}-{i}", T0 + i)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    result = activity_log.verify(engine, pid)
    assert result.ok and result.entries == writers * each


# --- properties of the canonical encoding and the chain ---------------------------------------

texts = st.text(max_size=40)
entries = st.builds(
    Entry,
    project_id=st.integers(1, 2**31 - 1),
    seq=st.integers(1, 2**53),
    ts=st.integers(0, 2**53),
    actor_kind=st.sampled_from(["account", "token"]),
    actor_id=texts,
    actor_email=st.none() | texts,
    action=st.sampled_from(activity_log.ACTIONS),
    recording_id=texts,
    ip_masked=texts,
    user_agent=texts,
)


@given(entries)
def test_canonical_encoding_round_trips(entry: Entry):
    assert decode_canonical(canonical(entry)) == entry


@given(entries, entries)
def test_different_entries_encode_differently(a: Entry, b: Entry):
    assert (canonical(a) == canonical(b)) == (a == b)


@given(entries, st.sampled_from(activity_log.ENTRY_FIELDS), st.data())
def test_changing_any_field_changes_the_hash(entry: Entry, field: str, data):
    value = getattr(entry, field)
    if isinstance(value, int):
        changed = data.draw(st.integers(0, 2**53).filter(lambda v: v != value))
    else:
        changed = data.draw(texts.filter(lambda v: v != value))
    altered = Entry(**{**entry.__dict__, field: changed})
    assert entry_hash(altered, GENESIS) != entry_hash(entry, GENESIS)
    assert entry_hash(entry, GENESIS) != entry_hash(entry, "f" * 64)  # the link to the previous entry counts


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(activity_log.ACTIONS), texts), min_size=1, max_size=8), st.data())
def test_any_single_edit_breaks_the_chain_at_that_entry(tmp_path_factory, sqlite_template, actions, data):
    from usertrail.store.database import create_engine

    path = tmp_path_factory.mktemp("chain") / "db.sqlite"
    shutil.copyfile(sqlite_template, path)  # a migrated database, as `database_url` makes them
    engine = create_engine(f"sqlite:///{path}")
    pid = ProjectStore(engine).create("p").project.id
    for i, (action, recording) in enumerate(actions):
        append(engine, pid, ANN, action, recording, T0 + i)
    assert activity_log.verify(engine, pid).entries == len(actions)
    seq = data.draw(st.integers(1, len(actions)))
    column = data.draw(st.sampled_from(["ts", "actor_id", "action", "recording_id", "ip_masked", "prev_hash"]))
    with engine.begin() as conn:
        if column == "ts":
            conn.execute(sa.text("UPDATE activity_log SET ts = ts + 1 WHERE seq = :s"), {"s": seq})
        else:
            conn.execute(sa.text(f"UPDATE activity_log SET {column} = {column} || 'x' WHERE seq = :s"), {"s": seq})
    assert activity_log.verify(engine, pid).first_broken_seq == seq
    engine.dispose()
