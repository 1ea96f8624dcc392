"""Column-wise segment counts (segments/columns.py) on SQLite and PostgreSQL.

- Random users and random rule trees (every operator and attribute kind the columns hold, unset
  values, nesting): the column-wise count equals the SQL Compiler's count and the in-process
  evaluator's, before and after writes through the attribute store and an erasure.
- Freshness: after each writer of End User Objects and custom attributes (session close, Update
  API, CSV import, the bulk writes imports and SCIM use, erasure, retention, the full rebuild), the
  count equals the SQL count at once, in two independent counters (as two server processes).
- A transaction that wrote its rows first but commits last is still seen (PostgreSQL).
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_csv_import import run_import
from test_segments_api import post, session
from test_segments_rules import CATALOG, NOW, _attribute_rules, _store, users
from test_update_api import create_client, get_token, update
from test_users_api import api, enable_uuid, send
from usertrail.integrations import IntegrationLog, csv_import
from usertrail.integrations.csv_import import CsvImporter
from usertrail.segments.columns import ColumnStore
from usertrail.segments.evaluate import load_facts, matches
from usertrail.segments.membership import catalog_of
from usertrail.segments.model import parse
from usertrail.segments.sql import Compiler
from usertrail.store import changes
from usertrail.store.attributes import AttributeStore
from usertrail.store.database import write_transaction
from usertrail.store.retention import delete_inactive_users
from usertrail.store.schema import attribute_registry, end_users, user_changes
from usertrail.store.users import UserStore

from conftest import LiveServer
from samples import now_ms

DAY = 86_400_000
HOUR = 3_600_000
MB = 1 << 20

columnar_rules = _attribute_rules().filter(lambda rule: rule["operator"] not in ("changed_to", "was"))
columnar_trees = st.recursive(
    columnar_rules,
    lambda children: st.fixed_dictionaries(
        {"match": st.sampled_from(["all", "any"]), "rules": st.lists(children, min_size=1, max_size=4)}
    ),
    max_leaves=10,
).map(lambda node: node if "rules" in node else {"match": "all", "rules": [node]})
writes = st.fixed_dictionaries(
    {},
    optional={
        "Plan": st.none() | st.sampled_from(["VIP", "Free", "Ünï", "b%"]),
        "Seats": st.none() | st.sampled_from([0, 2.5, 10]),
        "Trial": st.none() | st.booleans(),
        "Renewal": st.none() | st.sampled_from(["2026-11-01", "2026-12-24"]),
    },
)
_projects = itertools.count(10_000)  # apart from test_segments_rules' projects, in case both share a database


def _register(conn: sa.Connection, project_id: int) -> None:
    """The catalogue's attributes in the registry, with its slots, so the attribute store writes there."""
    conn.execute(
        attribute_registry.insert(),
        [
            {"project_id": project_id, "name": name, "type": type_, "integrations": "[]", "created_at": NOW,
             "updated_at": NOW, "slot": CATALOG.slots[name]}
            for name, type_ in CATALOG.custom.items()
        ],
    )  # fmt: skip


def test_column_counts_equal_sql_and_in_process(engine):
    dialect = engine.dialect.name
    counter = ColumnStore(engine, 64 * MB)
    attributes, users_store = AttributeStore(engine), UserStore(engine)

    @settings(
        max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", "60")),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    )
    @given(
        people=users(),
        rules=columnar_trees,
        shift=st.integers(min_value=-5 * HOUR, max_value=5 * HOUR),
        who=st.integers(0, 5),
        values=writes,
        erase=st.integers(0, 5),
    )
    def agree(people, rules, shift, who, values, erase):
        now = NOW + shift
        parsed = parse(rules, CATALOG)
        project_id = next(_projects)
        with engine.begin() as conn:
            _register(conn, project_id)
            _store(conn, project_id, people)

        def expected() -> int:
            with engine.connect() as conn:
                in_sql = conn.execute(Compiler(project_id, now, dialect).count(parsed)).scalar_one()
                keys = conn.execute(
                    sa.select(end_users.c.user_key).where(end_users.c.project_id == project_id)
                ).scalars()
                in_process = sum(matches(parsed, load_facts(conn, project_id, k, [parsed], now), now) for k in keys)
            assert in_sql == in_process, rules
            return in_sql

        assert counter.count(project_id, parsed, now) == expected(), rules
        assert counter.last["action"] == "build"
        attributes.write(project_id, "test", [(people[who % len(people)]["key"], values)])
        assert counter.count(project_id, parsed, now) == expected(), (rules, values)
        users_store.delete(project_id, people[erase % len(people)]["key"])
        assert counter.count(project_id, parsed, now) == expected(), rules
        assert counter.last["action"] == "refresh"

    agree()


def test_rules_the_columns_cannot_answer_are_left_to_sql(engine):
    counter = ColumnStore(engine, 64 * MB)
    for rule in (
        {"attribute": "Plan", "operator": "changed_to", "value": "VIP", "days": 7},
        {"attribute": "Plan", "operator": "was", "value": "VIP"},
        {"behaviour": {"event": "play"}, "operator": "did", "days": 7},
    ):
        tree = parse({"match": "any", "rules": [{"attribute": "Country", "operator": "is_set"}, rule]}, CATALOG)
        assert counter.count(1, tree, NOW) is None
    # An analytics property that holds a number somewhere: the engines compare it differently.
    project_id = next(_projects)
    with engine.begin() as conn:
        _store(conn, project_id, [_person("u:1", role="admin")])
        conn.execute(
            end_users.update().where(end_users.c.project_id == project_id).values(analytics_properties='{"role": 5}')
        )
    tree = parse({"rules": [{"attribute": "role", "operator": "is", "value": "5"}]}, CATALOG)
    assert counter.count(project_id, tree, NOW) is None
    assert ColumnStore(engine, 0).count(project_id, tree, NOW) is None  # a budget of 0 turns it off


def _person(key: str, **values) -> dict:
    base = {
        "key": key, "has_object": True, "first_seen": NOW - 3 * DAY, "last_seen": NOW - DAY, "total_sessions": 1,
        "avg": 0.0, "between": None, "country": None, "city": None, "role": None, "plan": None, "seats": None,
        "renewal": None, "trial": None, "history": [], "anon": False, "events": [],
    }  # fmt: skip
    return base | values


def test_memory_is_bounded_per_process(engine):
    """Over the budget, the least recently used project goes; a project that alone exceeds it is counted in SQL."""
    first, second = next(_projects), next(_projects)
    with engine.begin() as conn:
        _store(conn, first, [_person(f"u:{i}", plan="VIP") for i in range(300)])
        _store(conn, second, [_person(f"u:{i}", plan="VIP") for i in range(300)])
    tree = parse({"rules": [{"attribute": "Plan", "operator": "is", "value": "VIP"}]}, CATALOG)
    counter = ColumnStore(engine, 64 * MB)
    assert counter.count(first, tree, NOW) == counter.count(second, tree, NOW) == 300
    one = counter.memory() // 2
    counter.max_bytes = one + one // 2
    assert counter.count(first, tree, NOW) == 300
    assert counter.memory() <= counter.max_bytes and counter.last["action"] == "none"
    assert counter.count(second, tree, NOW) == 300 and counter.last["action"] == "build"  # it had been dropped
    assert ColumnStore(engine, one // 2).count(first, tree, NOW) is None


def test_in_the_server_a_load_runs_in_the_background_and_counts_go_to_sql_meanwhile(engine):
    project_id = next(_projects)
    with engine.begin() as conn:
        _register(conn, project_id)
        _store(conn, project_id, [_person(f"u:{i}", plan="VIP" if i % 2 else None) for i in range(40)])
    tree = parse({"rules": [{"attribute": "Plan", "operator": "is", "value": "VIP"}]}, CATALOG)
    counter = ColumnStore(engine, 64 * MB, background=True)
    assert counter.count(project_id, tree, NOW) is None and counter.last["action"] == "loading"
    counter.wait()
    assert counter.count(project_id, tree, NOW) == 20 and counter.last["action"] == "none"
    # A few changed users are read again within the count; a column not loaded yet goes to the background.
    AttributeStore(engine).write(project_id, "crm", [("u:0", {"Plan": "VIP"})])
    assert counter.count(project_id, tree, NOW) == 21 and counter.last["action"] == "refresh"
    trial = parse({"rules": [{"attribute": "Trial", "operator": "is_true"}]}, CATALOG)
    assert counter.count(project_id, trial, NOW) is None and counter.last["action"] == "loading"
    with counter._lock:  # a load in progress: the count does not wait for it
        assert counter.count(project_id, tree, NOW) is None
    counter.wait()
    assert counter.count(project_id, trial, NOW) == 0 and counter.last["action"] == "none"


def test_a_project_over_the_budget_is_not_loaded_again_at_every_count(engine):
    project_id = next(_projects)
    with engine.begin() as conn:
        _register(conn, project_id)
        _store(conn, project_id, [_person(f"u:{i}", plan="VIP") for i in range(50)])
    tree = parse({"rules": [{"attribute": "Plan", "operator": "is", "value": "VIP"}]}, CATALOG)
    counter = ColumnStore(engine, 64)
    assert counter.count(project_id, tree, NOW) is None and counter.last["action"] == "build"
    counter.last.clear()
    assert counter.count(project_id, tree, NOW) is None and counter.last == {}


def test_a_stale_copy_past_the_pruned_log_reads_the_project_again(engine):
    project_id = next(_projects)
    with engine.begin() as conn:
        _register(conn, project_id)
        _store(conn, project_id, [_person(f"u:{i}") for i in range(5)])
    tree = parse({"rules": [{"attribute": "Plan", "operator": "is", "value": "VIP"}]}, CATALOG)
    counter = ColumnStore(engine, 64 * MB)
    attributes = AttributeStore(engine)
    assert counter.count(project_id, tree, NOW) == 0
    attributes.write(project_id, "crm", [("u:1", {"Plan": "VIP"})])
    with write_transaction(engine) as conn:
        assert changes.prune(conn) == 0  # the first prune only marks where the next one may cut
    assert counter.count(project_id, tree, NOW) == 1 and counter.last == counter.last | {"action": "refresh"}
    attributes.write(project_id, "crm", [("u:2", {"Plan": "VIP"})])
    with write_transaction(engine) as conn:
        assert changes.prune(conn) == 1
    with write_transaction(engine) as conn:
        assert changes.prune(conn) == 1
    assert counter.count(project_id, tree, NOW) == 2 and counter.last["action"] == "build"


def _sql_count(engine: sa.Engine, project_id: int, rules: dict, now: int) -> int:
    with engine.connect() as conn:
        tree = parse(rules, catalog_of(conn, project_id))
        return conn.execute(Compiler(project_id, now, engine.dialect.name).count(tree)).scalar_one()


def test_counts_follow_every_writer_at_once(make_server, tmp_path: Path):
    """Each writer path changes who matches; the API's count (column-wise), a second counter (another
    process's) and the SQL count agree right after, without waiting for anything."""
    live: LiveServer = make_server(process_sessions=False)
    enable_uuid(live)
    pid = live.project.project.id
    now = now_ms()
    for name in ("ana", "bo", "cy", "dee"):
        send(live, session(name, now - 3 * DAY))
    live.app.state.sessions.run(now_ms())  # session closes: End User Objects written
    client = create_client(live)
    token = get_token(live, client)
    assert update(live, token, {"data": [{"properties": {"ID": "dee"}, "plan": "Free"}]}).status_code == 202
    rules = {
        "match": "any",
        "rules": [
            {"attribute": "Total sessions", "operator": "gte", "value": 2},
            {"attribute": "Plan", "operator": "is", "value": "VIP"},
        ],
    }
    other = ColumnStore(live.engine, 64 * MB)  # another server process, with a copy of its own

    def count() -> int:
        columns = live.app.state.segment_columns
        loads = columns.loads
        columns.last.clear()
        response = post(live, "/segments/preview", {"rules": rules, "sample": 0})
        assert response.status_code == 200, response.text
        if columns.loads > loads:  # answered in SQL while the columns load: ask again once they are loaded
            columns.wait()
            columns.last.clear()
            again = post(live, "/segments/preview", {"rules": rules, "sample": 0})
            assert again.json()["count"] == response.json()["count"]
        served = columns.last.get("action")
        with live.engine.connect() as conn:
            tree = parse(rules, catalog_of(conn, pid))
        moment = now_ms()
        assert response.json()["count"] == other.count(pid, tree, moment) == _sql_count(live.engine, pid, rules, moment)
        assert served in ("refresh", "none")  # answered by the columns, not SQL
        return response.json()["count"]

    assert count() == 0
    send(live, session("ana", now - 2 * HOUR))  # a second session for ana closes
    live.app.state.sessions.run(now_ms())
    assert count() == 1
    assert update(live, token, {"data": [{"properties": {"ID": "bo"}, "plan": "VIP"}]}).status_code == 202
    assert count() == 2
    csv = tmp_path / "plans.csv"
    csv.write_text("user_id,Plan\ncy,VIP\nbo,Free\n")
    run_import(live.app.state.csv_importer, pid, csv, "user_id", [], [], [])
    assert count() == 2  # cy in, bo out
    with write_transaction(live.engine) as conn:  # S3, Salesforce and SCIM write through these in their transactions
        live.app.state.attributes.write_columns(conn, pid, "s3", ["u:dee"], [("Plan", "string", ["VIP"])])
    assert count() == 3
    with write_transaction(live.engine) as conn:
        live.app.state.attributes.write(pid, "scim", [("u:dee", {"Plan": None})], conn=conn)
    assert count() == 2
    assert api(live, "/users/u:cy", "DELETE").status_code == 200  # erasure
    assert count() == 1
    live.app.state.sessions.rebuild(pid, now_ms())  # every End User Object rewritten in one transaction
    assert count() == 1
    assert delete_inactive_users(live.engine, pid, 1, now + 10 * DAY)  # retention: everyone is inactive by then
    assert count() == 0


def test_an_import_past_the_threshold_records_the_whole_project(engine, tmp_path: Path, monkeypatch):
    """A large import logs its first users one by one, then (past `WHOLE_PROJECT_KEYS` users) one bump
    per chunk for the whole project; a copy made before it reads the whole project again and agrees."""
    monkeypatch.setattr(csv_import, "WHOLE_PROJECT_KEYS", 4)
    project_id = next(_projects)
    with engine.begin() as conn:
        _register(conn, project_id)
        _store(conn, project_id, [_person(f"u:{i}") for i in range(10)])
    tree = parse({"rules": [{"attribute": "Plan", "operator": "is", "value": "VIP"}]}, CATALOG)
    counter = ColumnStore(engine, 64 * MB)
    assert counter.count(project_id, tree, NOW) == 0
    with engine.connect() as conn:
        before = changes.read_state(conn, project_id)
    path = tmp_path / "plans.csv"
    path.write_text("user_id,Plan\n" + "".join(f"{i},{'VIP' if i % 3 else 'Free'}\n" for i in range(10)))
    importer = CsvImporter(engine, AttributeStore(engine), IntegrationLog(engine), chunk_rows=3)
    assert run_import(importer, project_id, path)["status"] == "done"
    with engine.connect() as conn:
        after = changes.read_state(conn, project_id)
        logged = conn.execute(
            sa.select(user_changes.c.user_key).where(
                user_changes.c.project_id == project_id, user_changes.c.version > before.version
            )
        ).scalars()
        assert sorted(logged) == ["u:0", "u:1", "u:2"]  # the first chunk: 3 users, not past 4 yet
    assert after.version == before.version + 4 and after.rebuilt_version == after.version  # 4 chunks
    rules = {"rules": [{"attribute": "Plan", "operator": "is", "value": "VIP"}]}
    assert counter.count(project_id, tree, NOW) == _sql_count(engine, project_id, rules, NOW) == 6
    assert counter.last["action"] == "build"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_transaction_that_commits_last_is_seen_even_if_it_wrote_first(engine):
    """The full rebuild writes its rows, then commits minutes later: its changes are numbered at the
    commit, so a counter that already saw a later-written, earlier-committed change still catches it."""
    project_id = next(_projects)
    with engine.begin() as conn:
        _register(conn, project_id)
        _store(conn, project_id, [_person("u:1"), _person("u:2")])
    tree = parse({"rules": [{"attribute": "Country", "operator": "is", "value": "FR"}]}, CATALOG)
    counter = ColumnStore(engine, 64 * MB)
    assert counter.count(project_id, tree, NOW) == 0
    slow = engine.connect()
    slow.begin()
    slow.execute(end_users.update().where(end_users.c.user_key == "u:1").values(country="FR"))
    with write_transaction(engine) as conn:  # another writer, later, commits first
        conn.execute(end_users.update().where(end_users.c.user_key == "u:2").values(country="FR"))
        changes.note_users_changed(conn, project_id, ["u:2"])
    assert counter.count(project_id, tree, NOW) == 1
    changes.note_users_changed(slow, project_id, ["u:1"])
    slow.commit()
    slow.close()
    assert counter.count(project_id, tree, NOW) == 2


WRITES = re.compile(
    r"(end_users|custom_attributes)\.(insert|update|delete)\(|(insert_rows|update_rows|insert_columns)\(\s*conn,\s*"
    r"(end_users|custom_attributes)\b|(INSERT INTO|UPDATE|DELETE FROM) (end_users|custom_attributes)\b"
)


def test_every_module_that_writes_the_counted_tables_records_its_changes():
    """A new writer of `end_users` / `custom_attributes` must call store/changes.py (or counts go stale)."""
    root = Path(__file__).resolve().parent.parent / "src" / "usertrail"
    writers = {
        path.relative_to(root).as_posix()
        for path in root.rglob("*.py")
        if "migrations" not in path.parts and WRITES.search(path.read_text())
    }
    assert writers == {"sessions/processor.py", "store/users.py", "store/attributes.py"}
    for module in writers:
        assert re.search(r"note_(users|project)_changed\(", (root / module).read_text()), module
