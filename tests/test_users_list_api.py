"""The user list through the real HTTP API on both engines: sorting by standard, analytics and custom attributes
(users without a value last, in both orders), chosen columns, keyset and offset paging, the errors, the CSV
export with the same filters and its permission, and a user's recordings."""

from __future__ import annotations

import csv
import io
import ipaddress
from urllib.parse import quote, urlencode

import pytest

from test_users_api import api, enable_uuid, send, user_events

from conftest import LiveServer
from replay_helpers import PASSWORD, add_account
from samples import now_ms

MIN = 60_000

# key -> (sessions, analytics role or None, custom attributes)
USERS = {
    "ann": (3, "admin", {"Plan": "Pro", "Seats": 9}),
    "bob": (1, "viewer", {"Plan": "Free", "Seats": 100}),
    "cid": (2, None, {"Plan": "Free", "Seats": 10}),
    "dee": (1, "editor", {"Plan": "VIP"}),
    "eve": (2, "viewer", {}),
    "fay": (1, None, {"Seats": 10}),
}


@pytest.fixture
def live(make_server) -> LiveServer:
    server = make_server(process_sessions=False, trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),))
    enable_uuid(server)
    start = now_ms() - 24 * 60 * MIN
    for i, (key, (count, role, custom)) in enumerate(USERS.items()):
        user_vars = {"role": role} if role else {}
        for s in range(count):
            send(server, user_events(key, start + i * MIN + s * 90 * MIN, 3, wm_userVars=user_vars))
        if custom:
            with server.admin() as admin:
                answer = admin.patch(f"/api/projects/{server.project.project.id}/users/u:{key}/attributes", json=custom)
            assert answer.status_code == 200, answer.text
    server.app.state.sessions.run(now_ms())
    return server


def listing(live: LiveServer, **params) -> dict:
    query = urlencode(
        [(k, v) for k, values in params.items() for v in (values if isinstance(values, list) else [values])]
    )
    response = api(live, f"/users?{query}")
    assert response.status_code == 200, response.text
    return response.json()


def keys(live: LiveServer, **params) -> list[str]:
    return [u["user_key"].removeprefix("u:") for u in listing(live, **params)["users"]]


def test_sorting_by_any_attribute_puts_users_without_a_value_last(live: LiveServer):
    assert keys(live, sort="Total sessions", order="desc") == ["ann", "eve", "cid", "fay", "dee", "bob"]
    assert keys(live, sort="Total sessions", order="asc") == ["bob", "dee", "fay", "cid", "eve", "ann"]
    # Numbers sort as numbers (9 < 10 < 100), not as text; ties by key in the same direction.
    assert keys(live, sort="Seats", order="asc") == ["ann", "cid", "fay", "bob", "dee", "eve"]
    assert keys(live, sort="Seats", order="desc") == ["bob", "fay", "cid", "ann", "eve", "dee"]
    assert keys(live, sort="Plan", order="asc") == ["bob", "cid", "ann", "dee", "eve", "fay"]
    assert keys(live, sort="role", order="desc") == ["eve", "bob", "dee", "ann", "fay", "cid"]
    assert keys(live, sort="First seen", order="asc") == list(USERS)


def test_columns_and_paging(live: LiveServer):
    page = listing(live, sort="Seats", order="desc", column=["Seats", "Plan", "role", "Total sessions"])
    assert page["total"] == 6 and page["next"] is None
    first = page["users"][0]
    assert first["columns"] == {"Seats": 100, "Plan": "Free", "role": "viewer", "Total sessions": 1}
    assert page["users"][-1]["columns"] == {"Seats": None, "Plan": "VIP", "role": "editor", "Total sessions": 1}
    whole = [u["user_key"] for u in page["users"]]
    for sort in ("Seats", "Plan", "role", "Total sessions", "Country"):
        for order in ("asc", "desc"):
            expected = [u["user_key"] for u in listing(live, sort=sort, order=order)["users"]]
            walked, after = [], None
            while True:
                params = {"sort": sort, "order": order, "limit": 2, **({"after": after} if after else {})}
                chunk = listing(live, **params)
                walked += [u["user_key"] for u in chunk["users"]]
                after = chunk["next"]
                if after is None:
                    break
            assert walked == expected, (sort, order)
            for offset in range(7):
                chunk = listing(live, sort=sort, order=order, limit=2, offset=offset)
                assert [u["user_key"] for u in chunk["users"]] == expected[offset : offset + 2], (sort, order, offset)
    assert len(whole) == 6
    # Filters, rules and search combine with any sort.
    assert keys(live, sort="Seats", order="asc", q="viewer") == ["bob", "eve"]
    rules = '{"rules": [{"attribute": "Plan", "operator": "is", "value": "Free"}]}'
    assert keys(live, sort="Seats", order="desc", rules=rules) == ["bob", "cid"]


@pytest.mark.parametrize(
    ("query", "path", "words"),
    [
        ("sort=plan", "sort", "did you mean 'Plan'"),
        ("column=Seat", "column", "unknown attribute 'Seat'"),
        ("after=nope", "after", "cursor"),
        ("sort=Seats&after=" + quote('["x", "u:ann"]'), "after", "not from a list sorted by 'Seats'"),
        ("rules=" + quote('{"rules": [{"attribute": "Plann", "operator": "is", "value": 1}]}'), "rules.rules[0]", ""),
        ("rules=" + quote("{nope"), "rules", "not JSON"),
    ],
)
def test_bad_list_parameters_name_the_field(live: LiveServer, query: str, path: str, words: str):
    for route in ("/users", "/users.csv"):
        response = api(live, f"{route}?{query}")
        assert response.status_code == 400, response.text
        body = response.json()
        assert body["path"].startswith(path) and words in body["reason"], body


def test_csv_export_has_the_lists_filters_order_and_columns(live: LiveServer):
    response = api(live, "/users.csv?" + urlencode([("sort", "Seats"), ("order", "desc"), ("column", "Seats"),
                                                    ("column", "Plan"), ("q", "u:")]))  # fmt: skip
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows == [
        ["user_key", "Seats", "Plan"],
        ["u:bob", "100", "Free"],
        ["u:fay", "10", ""],
        ["u:cid", "10", "Free"],
        ["u:ann", "9", "Pro"],
        ["u:eve", "", ""],
        ["u:dee", "", "VIP"],
    ]
    every = list(csv.DictReader(io.StringIO(api(live, "/users.csv?sort=First%20seen&order=asc").text)))
    assert [r["user_key"] for r in every] == [f"u:{k}" for k in USERS]
    assert {"Total sessions", "Browser Name", "role", "Plan", "Seats"} <= set(every[0])
    assert every[0]["Total sessions"] == "3" and every[0]["role"] == "admin" and every[0]["Plan"] == "Pro"
    entries = api(live, "/audit-log?action=end_users.list_export").json()["entries"]
    assert len(entries) == 2 and entries[0]["details"]["total"] == 6


def test_csv_export_needs_users_export(live: LiveServer):
    add_account(live, "vic@example.com", "viewer")
    add_account(live, "ann@example.com", "analyst")
    pid = live.project.project.id
    for email, allowed in (("vic@example.com", False), ("ann@example.com", True)):
        with live.client() as client:
            assert client.post("/api/auth/login", json={"email": email, "password": PASSWORD}).status_code == 200
            assert client.get(f"/api/projects/{pid}/users").status_code == 200
            assert client.get(f"/api/projects/{pid}/users.csv").status_code == (200 if allowed else 403)


def test_user_recordings_route(live: LiveServer):
    answer = api(live, "/users/u:ann/recordings")
    assert answer.status_code == 200 and answer.json() == {"user_key": "u:ann", "recordings": []}
