"""The users pages end to end in Chromium: demo traffic sent through the real HTTP API appears in the list once
the session processor has closed the sessions (with the right Total sessions); sorting, search, a bad rule
filter, a user's page with a session expanded into its stream, a custom attribute's source and history,
segment memberships, recordings, export, and erasure back to the list."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.sync_api import Browser, expect

from test_users_api import send, user_events
from usertrail.access.permissions import ROLES
from usertrail.testing.recordings import synthetic_recording
from usertrail.web.pages.layout import utc

from admin_pages import Watcher, demo_server, signed_in
from conftest import CHROME_UA, LiveServer
from replay_helpers import PASSWORD, add_account, store_recording
from samples import now_ms

MIN = 60_000


# The API behind these pages is tested on both engines (test_users_list_api.py); the browser flow on one.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def column_texts(page, index: int) -> list[str]:
    return page.eval_on_selector_all(
        f"#users tbody tr td:nth-child({index})", "els => els.map(e => e.textContent.trim())"
    )


def test_users_flow(make_server, browser: Browser, monkeypatch):
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

    # The same kind of filter built with the visual builder's controls: its rules go into the form as JSON.
    page.goto(users_url)
    page.get_by_text("Filter with rules").click()
    first = page.locator("#rule-filter .rb-rule").first
    first.get_by_label("Attribute").select_option("Total sessions")
    first.get_by_label("Operator").select_option("gte")
    first.get_by_label("Number").fill("2")
    page.locator("#rule-filter").get_by_role("button", name="+ Rule").click()
    second = page.locator("#rule-filter .rb-rule").nth(1)
    second.get_by_label("Attribute").select_option("Browser Name")
    second.get_by_label("Operator").select_option("is_one_of")
    second.get_by_label("Values, separated by commas").fill("Chrome, Firefox")
    built = {"match": "all", "rules": [
        {"attribute": "Total sessions", "operator": "gte", "value": 2},
        {"attribute": "Browser Name", "operator": "is_one_of", "value": ["Chrome", "Firefox"]},
    ]}  # fmt: skip
    expect(page.get_by_label("Rules as JSON")).to_have_value(json.dumps(built, separators=(",", ":")))
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url("**rules=*")
    with live.admin() as admin:
        listed = admin.get(f"/api/projects/{pid}/users", params={"rules": json.dumps(built), "limit": 1000}).json()
    assert 0 < listed["total"] < live.scalar("SELECT count(*) FROM end_users")
    expect(page.locator("#user-count strong").first).to_have_text(f"{listed['total']:,}")
    assert sorted(column_texts(page, 1)) == sorted(u["user_key"] for u in listed["users"])
    assert all(int(x) >= 2 for x in column_texts(page, total_column))

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

    # The user page's other sections: a custom attribute set twice through the admin API, a saved segment
    # the user enters, a recording of the user.
    api = f"/api/projects/{pid}/users/u:newcomer"
    with live.admin() as admin:
        for plan in ("Free", "VIP"):
            assert admin.patch(f"{api}/attributes", json={"Plan": plan}).status_code == 200
        vip = {"rules": [{"attribute": "Plan", "operator": "is", "value": "VIP"}]}
        segment = {"name": "VIP customers", "rules": vip}
        created = admin.post(f"/api/projects/{pid}/segments", json=segment)
        assert created.status_code == 201 and created.json()["membership"]["entered"] == 1, created.text
        recording = store_recording(
            live, synthetic_recording(now_ms(), 0.2, cards=2), "anon-newcomer", user_id="newcomer"
        )
        plan = admin.get(api).json()["custom_attributes"]["Plan"]
        history = admin.get(f"{api}/attributes/history").json()["history"]
    page.reload()
    attribute = page.locator("#user-attributes tr[data-attribute='Plan'] td")
    expect(attribute.nth(0)).to_have_text("VIP")
    expect(attribute.nth(1)).to_have_text("Custom admin_api")
    assert plan["source"] == "admin_api"
    expect(attribute.nth(2)).to_have_text(utc(plan["updated_at"]))
    changes = page.locator("#attribute-history tbody tr")
    expect(changes).to_have_count(2)
    assert [changes.nth(i).locator("td").all_inner_texts()[1:] for i in range(2)] == [
        ["Plan", "Free", "VIP", "admin_api"],  # newest first
        ["Plan", "", "Free", "admin_api"],
    ]
    assert [(h["old"], h["new"]) for h in history] == [("Free", "VIP"), (None, "Free")]
    expect(page.locator("#user-segments li.member")).to_contain_text("VIP customers")
    expect(page.locator("#user-segments li.not-member")).to_contain_text("Frequent visitors")
    expect(page.locator("#segment-history tbody tr").filter(has_text="VIP customers")).to_contain_text("entered")
    row = page.locator(f"#user-recordings tr[data-recording='{recording}']")
    expect(row).to_have_count(1)
    expect(row.get_by_role("link", name="Play")).to_have_attribute(
        "href", f"/app/projects/{pid}/recordings/{recording}"
    )

    # Watching needs playback.view: every built-in role holds it, so a role without it is added to the catalogue.
    monkeypatch.setitem(ROLES, "support", frozenset({"project.view", "users.view"}))
    add_account(live, "sue@example.com", "support")
    support = browser.new_context(user_agent=CHROME_UA)
    assert support.request.post(
        f"{live.base_url}/api/auth/login", data={"email": "sue@example.com", "password": PASSWORD}
    ).ok
    support_page = support.new_page()
    support_page.goto(page.url)
    expect(support_page.locator(f"#user-recordings tr[data-recording='{recording}']")).to_have_count(1)
    expect(support_page.locator("#user-recordings a")).to_have_count(0)
    support.close()

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
