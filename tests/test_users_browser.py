"""The users pages end to end in Chromium: demo traffic sent through the real HTTP API appears in the list once
the session processor has closed the sessions (with the right Total sessions); sorting, search, a bad rule
filter, a user's page with a session expanded into its stream, export, and erasure back to the list."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.sync_api import Browser, expect

from test_users_api import send, user_events

from admin_pages import Watcher, demo_server, signed_in
from conftest import LiveServer
from samples import now_ms

MIN = 60_000


# The API behind these pages is tested on both engines (test_users_list_api.py); the browser flow on one.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def column_texts(page, index: int) -> list[str]:
    return page.eval_on_selector_all(
        f"#users tbody tr td:nth-child({index})", "els => els.map(e => e.textContent.trim())"
    )


def test_users_flow(make_server, browser: Browser):
    live: LiveServer = demo_server(make_server, users=12, weeks=1)
    pid = live.project.project.id
    context = signed_in(browser, live, "admin")
    watcher = Watcher()
    page = watcher.attach(context.new_page())
    users_url = f"{live.base_url}/app/projects/{pid}/users"

    # New traffic: two sessions of "newcomer" (90 minutes apart), sent through the HTTP API.
    start = now_ms() - 4 * 60 * MIN
    send(live, user_events("newcomer", start, 4))
    send(live, user_events("newcomer", start + 90 * MIN, 3))
    page.goto(f"{users_url}?q=newcomer")
    expect(page.locator("#users tbody")).to_contain_text("No end users match")
    live.app.state.sessions.run(now_ms())
    page.reload()
    row = page.locator("#users tbody tr[data-user='u:newcomer']")
    expect(row).to_be_visible()
    headers = page.eval_on_selector_all("#users thead th", "els => els.map(e => e.textContent.trim())")
    total_column = next(i for i, h in enumerate(headers, start=1) if h.startswith("Total sessions"))
    assert row.locator(f"td:nth-child({total_column})").inner_text() == "2"

    # Sort by Total sessions, both ways, by clicking the column header.
    page.goto(users_url)
    page.get_by_role("link", name="Total sessions").click()
    expect(page.locator("th[aria-sort='descending']")).to_contain_text("Total sessions")
    counts = [int(x) for x in column_texts(page, total_column)]
    assert counts == sorted(counts, reverse=True) and len(counts) > 3
    page.get_by_role("link", name="Total sessions").click()
    expect(page.locator("th[aria-sort='ascending']")).to_contain_text("Total sessions")
    assert [int(x) for x in column_texts(page, total_column)] == sorted(counts)

    # Choose columns: the choice stays in the address and survives sorting.
    page.locator(".column-picker summary").click()
    page.get_by_label("Browser Version").check()
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#users thead")).to_contain_text("Browser Version")
    assert "column=Browser+Version" in page.url and "sort=Total+sessions" in page.url

    # A rule filter with a typo: the API's reason and field path, at the form; then a good one.
    page.get_by_text("Filter with rules").click()
    expect(page.locator("#rule-filter .rb-rule").first).to_be_visible()  # the visual builder, mounted on opening
    page.get_by_label("Rules as JSON").fill(
        json.dumps({"rules": [{"attribute": "Contry", "operator": "is", "value": "US"}]})
    )
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#filter-error")).to_contain_text("rules.rules[0].attribute")
    expect(page.locator("#filter-error")).to_contain_text("did you mean 'Country'")
    watcher.problems = [p for p in watcher.problems if "400" not in p]  # the rule check's own refusal
    page.get_by_label("Rules as JSON").fill(
        json.dumps({"rules": [{"attribute": "Total sessions", "operator": "eq", "value": 2}]})
    )
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#user-count")).to_contain_text("users in filter")
    assert set(column_texts(page, total_column)) == {"2"}

    # Search, then open the user.
    page.goto(users_url)
    page.get_by_label("Search").fill("newcomer")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#users tbody tr")).to_have_count(1)
    assert "q=newcomer" in page.url and "rules=" not in page.url
    page.get_by_role("link", name="u:newcomer").click()
    expect(page.locator("h1")).to_have_text("u:newcomer")
    expect(page.locator("#user-attributes tr[data-attribute='Total sessions'] td").first).to_have_text("2")
    expect(page.locator("#user-segments[data-loaded]")).to_be_attached()

    # Expand the older session into its stream: its 4 events, in order, fetched from the API.
    older = page.locator("#user-sessions tbody tr[data-session]").nth(1)
    older.get_by_role("button", name="Show events").click()
    stream = page.locator("#user-sessions tr.stream-row:not([hidden]) ol.stream li")
    expect(stream).to_have_count(4)
    assert [stream.nth(i).locator(".event-type").inner_text() for i in range(4)] == [
        "pageChange",
        "play",
        "play",
        "play",
    ]
    expect(older.get_by_role("button", name="Hide events")).to_have_attribute("aria-expanded", "true")

    # Export: the JSON document of the existing export route.
    with page.expect_download() as download:
        page.get_by_role("link", name="Export").click()
    exported = json.loads(Path(download.value.path()).read_text())
    assert exported["user_key"] == "u:newcomer" and len(exported["events"]) == 7

    # Erase: cancel first, then confirm; back on the list, the user is gone.
    page.get_by_role("button", name="Erase…").click()
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#erase-dialog")).not_to_be_visible()
    page.get_by_role("button", name="Erase…").click()
    page.get_by_role("button", name="Erase user").click()
    page.wait_for_url(f"{users_url}?erased=1")
    expect(page.locator("#erased")).to_be_visible()
    expect(page.locator("#users tbody tr[data-user='u:newcomer']")).to_have_count(0)
    assert live.scalar("SELECT count(*) FROM events WHERE user_key = 'u:newcomer'") == 0
    gone = page.goto(f"{live.base_url}/app/projects/{pid}/users/{quote('u:newcomer', safe='')}")
    assert gone is not None and gone.status == 404
    watcher.problems = [p for p in watcher.problems if "404" not in p]  # the erased user's page
    assert watcher.problems == []
    context.close()


def test_csv_export_of_the_filtered_list(make_server, browser: Browser):
    live: LiveServer = demo_server(make_server, users=8, weeks=1)
    context = signed_in(browser, live, "analyst")
    page = Watcher().attach(context.new_page())
    page.goto(f"{live.base_url}/app/projects/{live.project.project.id}/users?sort=Total+sessions&order=asc&q=u%3A")
    shown = page.eval_on_selector_all("#users tbody tr", "els => els.map(e => e.dataset.user)")
    with page.expect_download() as download:
        page.get_by_role("link", name="Export CSV").click()
    lines = Path(download.value.path()).read_text().splitlines()
    assert lines[0].startswith("user_key,") and [line.split(",")[0] for line in lines[1:]] == shown
