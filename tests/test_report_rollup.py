"""The reports' rollup (reports/rollup.py): written at ingest for new events only, equal to a rebuild from the
events, erased with the end user; and reports that read whole days from it and partial days from the events
count exactly what the events say, for ranges on and off midnight."""

from __future__ import annotations

import json
import random

import sqlalchemy as sa

from cli_runner import run_cli
from test_reports_api import WT, item, report, tell
from test_users_api import enable_uuid
from usertrail.reports import engagement, rollup
from usertrail.reports.engagement import ITEM_KINDS, SEARCH_APP_TYPE, SEARCH_TYPE, TOTAL_KINDS, WIDGET_OPEN
from usertrail.store.schema import REPORT_DONE_WHERE, REPORT_EVENTS_WHERE, report_days, report_steps

from conftest import LiveServer
from samples import now_ms

DAY, HOUR, MIN = 86_400_000, 3_600_000, 60_000
ITEMS = [("wt", WT, "Walk-Thru"), ("shoutout", "5001", "ShoutOut"), ("launcher", "7001", "Launcher")]


def _traffic(start: int) -> list[dict]:
    """Plays, completions, step plays, widget opens and searches of 6 users over 4 days, at odd hours."""
    rng = random.Random(7)
    out = []
    for n in range(160):
        user = f"user{n % 6}"
        t = start + rng.randrange(4 * DAY)
        app, oid, name = rng.choice(ITEMS)
        kind = rng.random()
        if kind < 0.5:
            out.append(item(user, t, "click" if app == "launcher" else "play", app, oid, f"{name} v{n % 3}"))
        elif kind < 0.65 and app != "launcher":
            pid = f"{t}-{oid}-{n % 9}"  # shared play instances: completions count once per instance
            out.append(item(user, t, "complete" if app == "wt" else "click", app, oid, None, pid=pid))
        elif kind < 0.8:
            out.append(item(user, t, "play", "step", f"{WT}0{n % 3 + 1}", f"Step {n % 3 + 1}", pid=f"{t}-{WT}-x"))
        elif kind < 0.9:
            out.append(item(user, t, "open", "player", None, "Menu"))
        else:
            term = rng.choice(["billing", "sso", None])
            out.append(item(user, t, "search", "widgetSearch", None, term))
    return out


def _table(live: LiveServer, table: sa.Table) -> list[tuple]:
    with live.engine.connect() as conn:
        return sorted(tuple(r) for r in conn.execute(sa.select(table)))


def test_ingest_rolls_up_new_events_once_and_equals_a_rebuild(make_server):
    live = make_server(process_sessions=False)
    start = (now_ms() // DAY - 5) * DAY + 7 * HOUR
    sent = _traffic(start)
    tell(live, sent[:100])
    tell(live, sent[60:])  # 40 events sent again: stored and rolled up once
    pid = live.project.project.id
    assert live.scalar("SELECT count(*) FROM events") == len(sent)
    by_ingest = _table(live, report_days), _table(live, report_steps)
    per_key = [r for r in by_ingest[0] if r[1] not in TOTAL_KINDS]
    assert sum(r[7] for r in per_key) == sum(1 for e in sent if e["data"]["type"] != "step")
    # The items' day totals sum the same plays and completion events as the per-key rows.
    for total, kind in zip(TOTAL_KINDS, ("play", "done"), strict=True):
        assert sum(r[7] for r in by_ingest[0] if r[1] == total) == sum(r[7] for r in per_key if r[1] == kind)
    assert len(by_ingest[1]) == sum(1 for e in sent if e["data"]["type"] == "step")
    with live.engine.begin() as conn:
        read = rollup.rebuild(conn, pid)
    assert read == len(sent)
    assert (_table(live, report_days), _table(live, report_steps)) == by_ingest
    # `usertrail rebuild` recomputes it too (after it is lost here).
    with live.engine.begin() as conn:
        conn.execute(report_days.delete())
    cli = run_cli("rebuild", "--project", str(pid), "--database-url", live.settings.database_url,
                  "--data-dir", str(live.settings.data_dir), env={})  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert f"reports' rollup of {len(sent)} events" in cli.stdout
    assert (_table(live, report_days), _table(live, report_steps)) == by_ingest


def _expected_items(sent: list[dict], a: int, b: int) -> dict[str, tuple]:
    """(plays, unique users, completions) per item, counted from the events as sent."""
    plays: dict[str, int] = {}
    users: dict[str, set] = {}
    done: dict[str, set] = {}
    for ev in sent:
        d, t = ev["data"], ev["time"]
        if not a <= t < b or d["type"] not in ("wt", "shoutout", "launcher"):
            continue
        if ev["type"] in ("play",) or (d["type"] == "launcher" and ev["type"] == "click"):
            plays[d["oId"]] = plays.get(d["oId"], 0) + 1
            users.setdefault(d["oId"], set()).add(ev["wm"]["euId"] if "wm" in ev else json.dumps(ev))
        else:
            done.setdefault(d["oId"], set()).add(d["pId"])
    return {oid: (plays.get(oid, 0), len(users.get(oid, ())), len(done.get(oid, ()))) for oid in plays.keys() | done}


def test_reports_count_the_same_on_and_off_midnight(make_server):
    """Ranges made of whole days, of partial days, and inside one day give what the events say."""
    live = make_server(process_sessions=False)
    enable_uuid(live)
    midnight = (now_ms() // DAY - 5) * DAY
    sent = _traffic(midnight + 7 * HOUR)
    tell(live, sent)
    ranges = [
        (midnight, midnight + 5 * DAY),  # whole days only: the rollup
        (midnight + 9 * HOUR + 1, midnight + 3 * DAY + 17 * HOUR),  # partial days at both ends
        (midnight + DAY + HOUR, midnight + DAY + 20 * HOUR),  # inside one day: the events only
        (midnight + 2 * DAY, midnight + 4 * DAY + 5 * MIN),  # whole days then a few minutes
    ]
    for a, b in ranges:
        body = report(live, "items", **{"from": str(a), "to": str(b)}).json()
        got = {
            i["object_id"]: (i["plays"], i["unique_users"], i["completions"] or 0)
            for i in body["items"]
            if i["app_type"] in ("wt", "shoutout", "launcher")
        }
        assert got == _expected_items(sent, a, b), (a - midnight, b - midnight)
        widget = report(live, "widget", **{"from": str(a), "to": str(b)}).json()
        in_range = [e for e in sent if a <= e["time"] < b]
        opens = sum(1 for e in in_range if e["type"] == "open")
        searches = [e for e in in_range if e["type"] == "search"]
        assert (widget["totals"]["opens"], widget["totals"]["searches"]) == (opens, len(searches))
        terms = {t["term"]: t["searches"] for t in widget["top_search_terms"]}
        assert terms == {
            term: sum(1 for e in searches if e["data"].get("oName") == term)
            for term in {e["data"].get("oName") for e in searches} - {None}
        }


def test_erasing_an_end_user_erases_their_rollup_rows(make_server):
    live = make_server(process_sessions=False)
    enable_uuid(live)
    start = (now_ms() // DAY - 5) * DAY + 7 * HOUR
    tell(live, _traffic(start))
    live.app.state.sessions.run(now_ms() + DAY)
    for table in ("report_days", "report_steps"):
        assert live.scalar(f"SELECT count(*) FROM {table} WHERE user_key = 'u:user1'") > 0
    with live.admin() as admin:
        assert admin.delete(f"/api/projects/{live.project.project.id}/users/u:user1").status_code == 200
    for table in ("report_days", "report_steps"):
        assert live.scalar(f"SELECT count(*) FROM {table} WHERE user_key = 'u:user1'") == 0


def test_the_partial_days_index_holds_every_event_the_items_and_widget_reports_count():
    """The index's literal condition (schema and migration 0020) names every app type the reports count."""
    app_types = sorted({*ITEM_KINDS, WIDGET_OPEN[1], SEARCH_APP_TYPE})
    expected = f"(app_type IN ({', '.join(repr(t) for t in app_types)}) OR type = '{SEARCH_TYPE}')"
    assert expected == REPORT_EVENTS_WHERE


def test_everyones_completions_are_read_from_their_partial_index(engine):
    """The items report's distinct completions read the completion rows in instance order (no sort of every
    row): the query must repeat the index's condition as a literal, or SQLite never uses the index."""
    captured: list[tuple[str, object]] = []

    def keep(conn, cursor, statement, parameters, context, executemany):
        if "count(DISTINCT done.instance)" in statement:
            captured.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", keep)
    with engine.connect() as conn:
        engagement.items(conn, engagement.Scope(1, engagement.TimeRange(0, 30 * DAY)))
    sa.event.remove(engine, "before_cursor_execute", keep)
    [(statement, parameters)] = captured
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SET enable_seqscan = off")
            conn.exec_driver_sql("SET enable_bitmapscan = off")
        explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
        plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql(explain + statement, parameters))
    assert "ix_report_days_done_instances" in plan, plan
    assert REPORT_DONE_WHERE == "kind = 'done'" == _migration_0026().DONE_WHERE


def _migration_0026():
    import importlib.util
    from pathlib import Path

    import usertrail.store

    path = Path(usertrail.store.__file__).parent / "migrations" / "versions" / "0026_report_done_index.py"
    spec = importlib.util.spec_from_file_location("migration_0026", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
