"""The overview API through the real server on both engines: activity per day from closed sessions,
top pages from page views, dropped and rejected events by reason, range checks, and the indexes the
queries are meant to use."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from test_users_api import enable_uuid
from usertrail.reports import overview
from usertrail.reports.engagement import TimeRange
from usertrail.sessions.rules import PAGE_TYPES
from usertrail.store.schema import PAGE_VIEWS_WHERE

from conftest import CHROME_UA, LiveServer
from samples import now_ms, walkme_event

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR


def midnight(days_ago: int) -> int:
    return (now_ms() // DAY - days_ago) * DAY


def day_name(ms: int) -> str:
    return overview._day_name(ms // DAY)


def tell(live: LiveServer, events: list[dict], user_agent: str = CHROME_UA):
    """WalkMe events as a JSON array (no header line: each is stored at exactly its `time`)."""
    with live.client(headers={"User-Agent": user_agent}) as client:
        return client.post(
            f"/event/tell?key={live.project.write_key}",
            content=json.dumps(events),
            headers={"Content-Type": "application/json"},
        )


def event(user: str, t: int, type_: str, path: str = "/home", title: str = "Home", sid: str | None = None) -> dict:
    return walkme_event(
        time=t, type=type_, wm_euId=user, wm_euIdSource="Identifier", sId=sid or f"s-{user}-{t // HOUR}",
        ctx_location={"protocol": "https:", "hostname": "shop.example", "pathname": path}, ctx_title=title,
    )  # fmt: skip


def get(live: LiveServer, path: str, **params):
    with live.admin() as admin:
        return admin.get(f"/api/projects/{live.project.project.id}/stats/{path}", params=params)


@pytest.fixture
def filled(make_server) -> LiveServer:
    """Two users three days ago (one of them twice, the second time an empty session), one user yesterday,
    an open session now, a bot's event (dropped) and a malformed one (rejected)."""
    live = make_server(process_sessions=False)
    enable_uuid(live)
    a, b = midnight(3) + 9 * HOUR, midnight(1) + 15 * HOUR
    answer = tell(
        live,
        [
            event("ann", a, "pageChange"),
            event("ann", a + MIN, "play"),
            event("ann", a + 2 * MIN, "pageChange", "/pricing", "Pricing"),
            event("bob", a + 5 * MIN, "pageChange", title="Home (old)"),
            event("bob", a + 6 * MIN, "click"),
            event("bob", a + 3 * HOUR, "pageChange"),  # alone: an empty session
            event("ann", b, "pageChange"),
            event("ann", b + MIN, "play"),
            event("cy", now_ms() - MIN, "play"),  # still open
        ],
    )
    assert answer.status_code == 200, answer.text
    assert tell(live, [event("bot", now_ms() - MIN, "play")], user_agent="Googlebot/2.1").status_code == 200
    bad = walkme_event(time=now_ms() - 10, data_oId={"nested": True})
    assert tell(live, [bad]).status_code == 400
    live.app.state.sessions.run(now_ms())
    return live


def test_daily_counts_closed_sessions_by_start_day_with_drops_and_rejections(filled: LiveServer):
    answer = get(filled, "daily")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert len(body["days"]) == 31 and body["days"][-1]["day"] == day_name(now_ms())
    days = {d["day"]: d for d in body["days"]}
    a, b = midnight(3), midnight(1)
    assert days[day_name(a)] | {"dropped": 0, "rejected": 0} == {
        "day": day_name(a), "active_users": 2, "sessions": 2, "events": 6, "dropped": 0, "rejected": 0,
    }  # fmt: skip
    assert (days[day_name(b)]["active_users"], days[day_name(b)]["sessions"], days[day_name(b)]["events"]) == (1, 1, 2)
    today = days[day_name(now_ms())]
    assert (today["active_users"], today["sessions"], today["events"]) == (0, 0, 0)  # cy's session is open
    assert today["dropped"] == 1 and today["rejected"] == 1
    assert body["totals"] == {
        "active_users": 2, "sessions": 3, "events": 8, "dropped": 1, "rejected": 1, "rejected_pending": 1,
    }  # fmt: skip
    assert body["dropped_by_reason"] == {"bot": 1}
    with filled.admin() as admin:
        [rejected] = admin.get(f"/api/projects/{filled.project.project.id}/rejected").json()["items"]
        assert body["rejected_by_reason"] == {rejected["reason"]: {"pending": 1}}
        admin.post(f"/api/projects/{filled.project.project.id}/rejected/discard", json={"ids": [rejected["id"]]})
    after = get(filled, "daily").json()
    assert after["rejected_by_reason"] == {rejected["reason"]: {"discarded": 1}}
    assert after["totals"]["rejected_pending"] == 0

    # A range of the one day three days ago: dates are whole UTC days, `to` included.
    one = get(filled, "daily", **{"from": day_name(a), "to": day_name(a)}).json()
    assert [d["day"] for d in one["days"]] == [day_name(a)]
    assert (one["from"], one["to"]) == (a, a + DAY)
    assert one["totals"]["active_users"] == 2 and one["totals"]["dropped"] == 0


def test_top_pages_count_page_views_with_titles_and_visitors(filled: LiveServer, monkeypatch):
    body = get(filled, "pages").json()
    assert body["complete"] is True and body["page_views"] == 5
    assert body["counted_since"] == midnight(3) + 9 * HOUR
    assert body["pages"] == [
        {"host": "shop.example", "path": "/home", "title": "Home (old)", "views": 4, "visitors": 2},
        {"host": "shop.example", "path": "/pricing", "title": "Pricing", "views": 1, "visitors": 1},
    ]
    assert [p["path"] for p in get(filled, "pages", limit=1).json()["pages"]] == ["/home"]
    # Past the limit the latest page views are read, and the answer says so.
    monkeypatch.setattr(overview, "PAGE_VIEW_LIMIT", 2)
    capped = get(filled, "pages").json()
    assert (capped["complete"], capped["page_views"]) == (False, 2)
    assert capped["counted_since"] == midnight(3) + 12 * HOUR  # bob's late /home, the older of the two
    assert sum(p["views"] for p in capped["pages"]) == 2  # ann's two latest: /home yesterday, bob's late /home
    assert capped["pages"] == [{"host": "shop.example", "path": "/home", "title": "Home", "views": 2, "visitors": 2}]


@pytest.mark.parametrize(
    ("params", "path"),
    [
        ({"from": "2026-02-30"}, "from"),
        ({"from": "2026-03-02", "to": "2026-03-01"}, "from"),
        ({"from": "2024-01-01", "to": "2025-06-01"}, "from"),
        ({"to": "yesterday"}, "to"),
    ],
)
def test_bad_ranges_are_refused_with_the_parameter(live: LiveServer, params: dict, path: str):
    for route in ("daily", "pages"):
        answer = get(live, route, **params)
        assert answer.status_code == 400, answer.text
        assert answer.json()["path"] == path


def test_limit_and_permission(live: LiveServer):
    assert get(live, "pages", limit=0).json()["path"] == "limit"
    assert get(live, "pages", limit=101).status_code == 400
    with live.client() as anonymous:
        assert anonymous.get(f"/api/projects/{live.project.project.id}/stats/daily").status_code == 401
    with live.admin() as admin:
        assert admin.get(f"/api/projects/{live.project.project.id + 1}/stats/daily").status_code in (401, 403)


def test_page_view_condition_matches_the_session_rule():
    assert "type IN (" + ", ".join(f"'{t}'" for t in sorted(PAGE_TYPES)) + ")" == PAGE_VIEWS_WHERE


def query_plan(engine: sa.Engine, query: sa.Select, avoid_sorts: bool = False) -> str:
    compiled = query.compile(engine, compile_kwargs={"literal_binds": True})
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}").all()
            return "\n".join(str(r[-1]) for r in rows)
        # The tables are tiny here; forbid the sequential scan to see whether the index can serve at all.
        conn.exec_driver_sql("SET enable_seqscan = off")
        if avoid_sorts:  # likewise: a sort of every row is then chosen only if no index order can serve
            conn.exec_driver_sql("SET enable_sort = off")
        return "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {compiled}").all())


def test_queries_read_through_their_indexes(engine: sa.Engine):
    span = TimeRange(midnight(30), midnight(0))
    for by_day in (True, False):
        plan = query_plan(engine, overview.session_counts(1, span, by_day))
        assert "ix_sessions_overview" in plan, plan
        if engine.dialect.name == "sqlite":
            assert "COVERING INDEX" in plan, plan
    plan = query_plan(engine, overview.page_views(1, span))
    assert "ix_events_page_views" in plan, plan
