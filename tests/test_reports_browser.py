"""The engagement report page in Debian's Chromium on the demo data: the demo Walk-Thrus with the plays and
completion rates the API gives, a Walk-Thru's step funnel, the date and segment filters changing the
numbers (still equal to the API's), the CSV download, the widget's tables, wrong filters shown with the API's
reason and status; and the overview page's charts and dropped events."""

from __future__ import annotations

import csv
import datetime as dt
import re
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from admin_pages import Watcher, demo_server, signed_in
from conftest import LiveServer
from samples import now_ms, walkme_event

# The page reads through the reports API's own functions, which are tested on both engines.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def api(live: LiveServer, path: str, **params) -> dict:
    with live.admin() as admin:
        answer = admin.get(f"/api/projects/{live.project.project.id}/reports/{path}", params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def shown_items(page: Page, app_type: str) -> dict[str, tuple[int, float | None]]:
    """Plays and completion rate of each row of one app type, as the page shows them."""
    rows = page.locator(f"#items tbody[data-app-type='{app_type}'] tr[data-item]")
    found = {}
    for i in range(rows.count()):
        row = rows.nth(i)
        rate = row.locator("td.rate").get_attribute("data-rate")
        plays = int(row.locator("td[data-plays]").get_attribute("data-plays"))
        found[row.get_attribute("data-item").split(":", 1)[1]] = (plays, float(rate) if rate else None)
    return found


def expected_items(live: LiveServer, app_type: str, **params) -> dict[str, tuple[int, float | None]]:
    body = api(live, "items", app_type=app_type, **params)
    return {i["object_id"]: (i["plays"], i["completion_rate"]) for i in body["items"]}


def test_report_numbers_funnel_filters_and_csv(make_server, browser: Browser, tmp_path: Path):
    live = demo_server(make_server)
    pid = live.project.project.id
    today = dt.datetime.now(dt.UTC).date()
    month = {"from": (today - dt.timedelta(days=29)).isoformat(), "to": today.isoformat()}
    context = signed_in(browser, live, "analyst")
    watcher = Watcher()
    page = watcher.attach(context.new_page())
    reports = f"{live.base_url}/app/projects/{pid}/reports"
    page.goto(reports)
    watcher.settle(page)

    # The demo's three Walk-Thrus, with the API's plays and completion rates for the default range.
    walkthrus = expected_items(live, "wt", **month)
    assert set(walkthrus) == {"124909", "124910", "124911"} and all(p > 0 for p, _ in walkthrus.values())
    assert shown_items(page, "wt") == walkthrus
    assert shown_items(page, "survey") == expected_items(live, "survey", **month)
    expect(page.locator("#items tbody[data-app-type='bizFlow']")).to_contain_text("No Smart Walk-Thru plays")
    expect(page.locator("canvas[data-drawn]")).to_have_count(2)  # items and widget charts drawn
    widget = api(live, "widget", **month)
    expect(page.locator("#total-opens")).to_have_text(f"{widget['totals']['opens']:,}")

    # The step funnel of "Log in", drawn from the funnel API.
    page.locator("tr[data-item='wt:124909']").get_by_role("button", name="Step funnel").click()
    funnel = page.locator("#funnel")
    expect(funnel).to_have_attribute("data-state", "ready")
    expect(page.locator("#funnel-heading")).to_be_focused()
    steps = api(live, "items/wt/124909/funnel", **month)["steps"]
    assert len(steps) == 4 and steps[0]["reached"] > 0
    rows = funnel.locator("#funnel-steps tbody tr")
    expect(rows).to_have_count(4)
    assert [int(rows.nth(i).locator("td").nth(2).inner_text()) for i in range(4)] == [s["reached"] for s in steps]
    expect(funnel.locator("canvas[data-drawn]")).to_have_count(1)
    funnel.get_by_role("button", name="Close").click()
    expect(funnel).to_be_hidden()

    # The last 7 days: fewer plays, still the API's numbers.
    page.get_by_label("From (UTC)").fill((today - dt.timedelta(days=6)).isoformat())
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url("**from=*")
    week = {"from": (today - dt.timedelta(days=6)).isoformat(), "to": today.isoformat()}
    in_week = expected_items(live, "wt", **week)
    assert shown_items(page, "wt") == in_week
    assert sum(p for p, _ in in_week.values()) < sum(p for p, _ in walkthrus.values())

    # A segment: only its members' plays.
    page.get_by_label("From (UTC)").fill(month["from"])
    page.get_by_label("Segment").select_option(label="Frequent visitors")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url("**segment=seg_*")
    segment = live.app.state.segments.list(pid)[0].id
    in_segment = expected_items(live, "wt", segment=segment, **month)
    assert shown_items(page, "wt") == in_segment
    assert 0 < sum(p for p, _ in in_segment.values()) < sum(p for p, _ in walkthrus.values())
    expect(page.locator("#segment-note")).to_contain_text("Frequent visitors")
    segment_plays = sum(i["plays"] for i in api(live, "items", segment=segment, **month)["items"])
    assert segment_plays > 0
    expect(page.locator("#total-plays")).to_have_text(f"{segment_plays:,}")

    # The CSV is the API's, for the same filters.
    with page.expect_download() as download:
        page.locator("#items-csv").click()
    saved = tmp_path / "items.csv"
    download.value.save_as(saved)
    with saved.open(newline="") as f:
        table = list(csv.DictReader(f))
    everything = api(live, "items", segment=segment, **month)["items"]
    assert [(r["app_type"], r["object_id"], int(r["plays"])) for r in table] == [
        (i["app_type"], i["object_id"], i["plays"]) for i in everything
    ]
    assert download.value.suggested_filename.startswith(f"items-{pid}-")
    assert watcher.problems == []

    # The widget: the top search terms and the numbers per day (the line chart's table) are the API's.
    page.goto(f"{reports}?from={month['from']}&to={month['to']}")
    widget = api(live, "widget", **month)
    assert widget["top_search_terms"] and widget["totals"]["searches"] > 0
    assert table_rows(page, "#search-terms") == [
        [t["term"], f"{t['searches']:,}", f"{t['unique_users']:,}"] for t in widget["top_search_terms"]
    ]
    page.get_by_text("Opens and searches per day (table)").click()
    expect(page.locator("#widget-days")).to_be_visible()
    assert table_rows(page, "#widget-days") == [
        [d["day"], f"{d['opens']:,}", f"{d['searches']:,}", f"{d['unique_users']:,}"] for d in reversed(widget["days"])
    ]

    # Wrong filters: the API's status, reason and field, on the page.
    answer = page.goto(f"{reports}?from={month['to']}&to={month['from']}")
    assert answer is not None and answer.status == 400
    expect(page.locator("#report-error")).to_contain_text("(from)")
    expect(page.locator("#items")).to_have_count(0)
    answer = page.goto(f"{reports}?segment=seg_unknown")
    assert answer is not None and answer.status == 404
    expect(page.locator("#report-error")).to_contain_text("seg_unknown")
    expect(page.locator("#report-error")).to_contain_text("(segment)")
    refusals = re.compile(r"HTTP 40[04]: |console: Failed to load resource: .* status of 40[04]")
    assert [p for p in watcher.problems if not refusals.match(p)] == []  # only the two refused pages
    watcher.problems.clear()

    # The overview: every chart drawn, and a bot's event among the dropped ones.
    bot = walkme_event(time=now_ms() - 60_000, type="play", wm_euId="crawler", wm_euIdSource="Identifier")
    with live.client(headers={"User-Agent": "Googlebot/2.1 (+http://www.google.com/bot.html)"}) as client:
        sent = client.post(f"/event/tell?key={live.project.write_key}", json=[bot])
    assert sent.status_code == 200, sent.text
    page.goto(f"{live.base_url}/app/projects/{pid}/overview")
    watcher.settle(page)
    charts = page.locator("main canvas[data-chart]")
    assert charts.count() == 4  # users, sessions, events per day and drops by reason
    expect(page.locator("main canvas[data-drawn]")).to_have_count(charts.count())
    expect(page.locator("#drop-reasons tbody tr").filter(has_text="bot")).to_contain_text("dropped")
    with live.admin() as admin:
        daily = admin.get(f"/api/projects/{pid}/stats/daily").json()
    assert daily["dropped_by_reason"].get("bot", 0) >= 1
    assert ["bot", "dropped", f"{daily['dropped_by_reason']['bot']:,}"] in table_rows(page, "#drop-reasons")
    assert watcher.problems == []
    context.close()


def table_rows(page: Page, table: str) -> list[list[str]]:
    """The cells of a table's body rows, as shown."""
    return page.eval_on_selector_all(
        f"{table} tbody tr", "rows => rows.map(r => Array.from(r.cells).map(c => c.textContent.trim()))"
    )
