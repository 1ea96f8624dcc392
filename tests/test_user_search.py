"""The user list's search words and analytics-property sort (store/user_index.py) on both engines: word-prefix
search through the real HTTP API, the lookup rows following session closes, erasure and the full rebuild, and
migration 0025 filling them from existing end users."""

from __future__ import annotations

import ipaddress
from urllib.parse import quote, urlencode

import pytest
import sqlalchemy as sa

from test_attributes import _alembic
from test_users_api import api, enable_uuid, send, user_events
from usertrail.store import user_index
from usertrail.store.database import create_engine, migrate
from usertrail.store.schema import user_properties, user_words

from conftest import LiveServer
from samples import now_ms

MIN = 60_000

# key -> analytics properties of its one session
USERS = {
    "jane.doe@example.com": {"role": "Admin", "info": "Berlin Ops"},
    "jan@example.com": {"role": "viewer", "info": "München"},
    "bert": {"role": "editor", "type": 12},
    "zoe": {},
}


@pytest.fixture
def live(make_server) -> LiveServer:
    server = make_server(process_sessions=False, trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),))
    enable_uuid(server)
    start = now_ms() - 24 * 60 * MIN
    for i, (key, properties) in enumerate(USERS.items()):
        send(server, user_events(key, start + i * MIN, 3, wm_userVars=properties))
    server.app.state.sessions.run(now_ms())
    return server


def found(live: LiveServer, q: str, **params) -> list[str]:
    answer = api(live, "/users?" + urlencode({"q": q, "sort": "First seen", "order": "asc", **params}))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    keys = [u["user_key"].removeprefix("u:") for u in body["users"]]
    assert body["total"] == len(keys)
    return keys


def test_search_matches_word_prefixes_in_any_case(live: LiveServer):
    assert found(live, "ber") == ["jane.doe@example.com", "bert"]  # Berlin (a property), bert (the key)
    assert found(live, "BERLIN") == ["jane.doe@example.com"]
    assert found(live, "erlin") == []  # inside a word: not a match (documented)
    assert found(live, "münch") == ["jan@example.com"]
    assert found(live, "MÜNCHEN") == ["jan@example.com"]  # case folded beyond ASCII
    assert found(live, "jan") == ["jane.doe@example.com", "jan@example.com"]
    assert found(live, "jane.doe@exa") == ["jane.doe@example.com"]  # every word must match one of the user's
    assert found(live, "jan viewer") == ["jan@example.com"]
    assert found(live, "12") == ["bert"]  # a number property's text
    assert found(live, "u:") == list(USERS)  # identified keys all start with the word "u"
    assert found(live, " -- ") == list(USERS)  # no words: nothing filtered
    assert found(live, "info") == []  # property names are not searched, only values
    # 100% and _ are plain characters here, not LIKE wildcards.
    assert found(live, "%") == list(USERS) and found(live, "j_n") == []


def test_sort_by_an_analytics_property_follows_new_sessions_and_erasure(live: LiveServer):
    def by_role(order: str) -> list[str]:
        answer = api(live, f"/users?sort=role&order={order}&column=role")
        assert answer.status_code == 200, answer.text
        return [(u["user_key"].removeprefix("u:"), u["columns"]["role"]) for u in answer.json()["users"]]

    assert by_role("asc") == [
        ("jane.doe@example.com", "Admin"),
        ("bert", "editor"),
        ("jan@example.com", "viewer"),
        ("zoe", None),  # without the property: last in both orders
    ]
    # A later session changes zoe's role: the lookup rows follow when it closes.
    send(live, user_events("zoe", now_ms() - 60 * MIN, 3, wm_userVars={"role": "Auditor"}))
    live.app.state.sessions.run(now_ms())
    assert [k for k, _ in by_role("desc")] == ["jan@example.com", "bert", "zoe", "jane.doe@example.com"]
    assert found(live, "auditor") == ["zoe"]
    assert api(live, f"/users/{quote('u:jan@example.com', safe='')}", method="DELETE").status_code == 200
    assert found(live, "jan") == ["jane.doe@example.com"]
    engine = live.app.state.collector.events.engine
    with engine.connect() as conn:
        for table in (user_words, user_properties):
            left = conn.execute(sa.select(sa.func.count()).where(table.c.user_key == "u:jan@example.com")).scalar()
            assert left == 0, table.name


def test_the_full_rebuild_writes_the_same_rows_as_the_session_closes(live: LiveServer):
    engine = live.app.state.collector.events.engine

    def rows() -> tuple[set, set]:
        with engine.connect() as conn:
            return (set(conn.execute(sa.select(user_words)).all()), set(conn.execute(sa.select(user_properties)).all()))

    incremental = rows()
    assert ("u:bert", "type", "12") in {r[1:] for r in incremental[1]}
    live.app.state.sessions.rebuild(live.project.project.id, now_ms())
    assert rows() == incremental


def test_words_and_property_text():
    assert user_index.words("Jane.Doe@Example.com Jane") == ["jane", "doe", "example", "com"]
    assert user_index.words("Straße São-Paulo") == ["strasse", "são", "paulo"]
    assert user_index.words("x" * 100) == ["x" * user_index.MAX_WORD]
    assert user_index.property_text("a") == "a" and user_index.property_text(None) is None
    assert user_index.property_text(1.5) == "1.5" and user_index.property_text(True) == "true"
    assert user_index.property_text({"a": [1]}) == '{"a":[1]}'


def test_migration_0025_indexes_existing_end_users(empty_database_url):
    engine = create_engine(empty_database_url)
    try:
        _alembic(engine, "upgrade", "0023")
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO projects (id, name, created_at) VALUES (7, 'p', 0)"))
            conn.execute(
                sa.text(
                    "INSERT INTO end_users (project_id, user_key, first_seen, last_seen, total_sessions,"
                    " avg_session_duration_ms, total_session_duration_ms, city, browser_name, analytics_properties,"
                    " updated_at) VALUES (7, 'u:lena', 1, 2, 1, 0, 0, 'Tel Aviv', 'Firefox', :p, 2)"
                ),
                {"p": '{"role": "Owner", "n": null}'},
            )
        migrate(engine)
        with engine.connect() as conn:
            words = {r.word for r in conn.execute(sa.select(user_words).where(user_words.c.project_id == 7))}
            props = conn.execute(sa.select(user_properties.c.name, user_properties.c.value)).all()
        assert words == {"u", "lena", "tel", "aviv", "firefox", "owner"}
        assert props == [("role", "Owner")]
        _alembic(engine, "downgrade", "0023")
        with engine.connect() as conn:
            assert "user_words" not in sa.inspect(conn).get_table_names()
    finally:
        engine.dispose()


# Query plans are engine-specific; PostgreSQL runs the same queries in the tests above.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sqlite_reads_the_list_views_in_index_order(live: LiveServer):
    """The first page of a sort by an analytics property, and a search's page and total, start from their
    indexes on SQLite (no temporary B-tree sorting the project's users). Custom attributes have no index
    per slot: 200 of them made every attribute write several times dearer (docs/benchmarks.md)."""
    engine = live.app.state.collector.events.engine
    with live.admin() as admin:
        pid = live.project.project.id
        assert admin.patch(f"/api/projects/{pid}/users/u:zoe/attributes", json={"Plan": "VIP"}).status_code == 200
    plans: list[str] = []

    def explain(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT") and "end_users" in statement:
            rows = cursor.connection.execute("EXPLAIN QUERY PLAN " + statement, parameters).fetchall()
            plans.append(" | ".join(r[-1] for r in rows))

    sa.event.listen(engine, "before_cursor_execute", explain)
    try:
        for query in ("sort=role&order=asc", "sort=Plan&order=desc", "q=berlin"):
            assert api(live, f"/users?{query}").status_code == 200
    finally:
        sa.event.remove(engine, "before_cursor_execute", explain)
    joined = "\n".join(plans)
    assert "ix_user_properties_project_id_name_value_user_key" in joined, joined
    assert "ix_user_words_project_id_word_user_key" in joined, joined
    ordered = [p for p in plans if "ix_user_properties" in p]
    assert ordered and not any("TEMP B-TREE" in p for p in ordered), joined
