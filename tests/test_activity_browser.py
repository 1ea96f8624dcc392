"""The activity pages and the recordings quota in Debian's Chromium, end to end: an analyst watches a recording
and the admin finds that view in the activity log (filtered by the recording, chain verified, exported); the
audit log lists a role change; the admin changes the quota and sees the period's count reset."""

from __future__ import annotations

import csv
import io
import time

import pytest
from playwright.sync_api import Browser

from usertrail.testing.recordings import synthetic_recording

from admin_pages import Watcher, light_server, signed_in
from conftest import LiveServer
from replay_helpers import store_recording

# The API behind these pages is tested on both engines (test_activity_api.py, test_accounts.py).
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def live(make_server) -> LiveServer:
    return light_server(make_server)


def test_watch_a_recording_and_find_the_view_in_the_activity_log(live: LiveServer, browser: Browser):
    pid = live.project.project.id
    watched = store_recording(live, synthetic_recording(int(time.time() * 1000), 0.2, cards=2), "anon-1")
    other = store_recording(live, synthetic_recording(int(time.time() * 1000), 0.2, cards=2), "anon-2")

    analyst = signed_in(browser, live, "analyst")
    player = analyst.new_page()
    player.goto(f"{live.base_url}/app/projects/{pid}/recordings/{watched}")
    player.wait_for_selector("#replay[data-first-frame-ms]", state="attached", timeout=20_000)
    assert player.locator("#delete-recording").count() == 0  # analysts lack playback.delete
    analyst.close()

    admin = signed_in(browser, live, "admin")
    watcher = Watcher()
    page = watcher.attach(admin.new_page())
    page.goto(f"{live.base_url}/app/projects/{pid}")
    page.click("header nav a:text('Activity')")
    page.wait_for_selector("#chain[data-ok='true']")
    assert "1 entry verified" in page.text_content("#chain-text")
    assert page.get_attribute("header nav a[aria-current='page']", "href") == f"/app/projects/{pid}/activity"

    page.fill("input[name='recording']", watched)
    page.select_option("select[name='action']", "view")
    page.click("#filters button[type='submit']")
    page.wait_for_selector("#activity tbody tr[data-seq]")
    rows = page.eval_on_selector_all(
        "#activity tbody tr[data-seq]", "rows => rows.map(r => [...r.cells].map(c => c.textContent.trim()))"
    )
    assert len(rows) == 1, rows
    seq, _, who, action, recording, ip, browser_name = rows[0]
    assert (seq, who, action, recording) == ("1", "ann@example.com", "view", watched)
    assert ip == "127.0.0.0" and "Chrome" in browser_name

    # The same filter for the other recording finds nothing; the export carries the filter.
    page.fill("input[name='recording']", other)
    page.click("#filters button[type='submit']")
    page.wait_for_selector("#activity tbody td.muted")
    page.fill("input[name='recording']", watched)
    page.fill("input[name='from']", time.strftime("%Y-%m-%d", time.gmtime()))
    page.click("#filters button[type='submit']")
    page.wait_for_selector("#activity tbody tr[data-seq='1']")
    export = page.get_attribute("#export", "href")
    assert f"recording={watched}" in export and "since=" in export
    exported = admin.request.get(f"{live.base_url}{export}")
    assert exported.status == 200
    entries = list(csv.DictReader(io.StringIO(exported.text())))
    assert [(e["action"], e["actor_email"], e["recording_id"]) for e in entries] == [
        ("view", "ann@example.com", watched)
    ]
    assert watcher.problems == [], watcher.problems

    # The admin deletes the other recording from its player page; the log shows who deleted it.
    page.goto(f"{live.base_url}/app/projects/{pid}/recordings/{other}")
    page.click("#delete-recording")
    page.click("#delete-cancel")
    assert live.scalar(f"SELECT count(*) FROM playback_recordings WHERE recording_id = '{other}'") == 1
    page.click("#delete-recording")
    page.click("#delete-confirm")
    page.wait_for_url(f"**/app/projects/{pid}/recordings?deleted=1")
    assert live.scalar(f"SELECT count(*) FROM playback_recordings WHERE recording_id = '{other}'") == 0
    page.goto(f"{live.base_url}/app/projects/{pid}/activity?recording={other}")
    page.wait_for_selector("#activity tbody tr[data-seq]")
    rows = page.eval_on_selector_all(
        "#activity tbody tr[data-seq]", "rows => rows.map(r => [...r.cells].map(c => c.textContent.trim()))"
    )
    # Newest first: opening the player page was a view, then the deletion.
    assert [(r[2], r[3], r[4]) for r in rows] == [
        ("ada@example.com", "delete", other),
        ("ada@example.com", "view", other),
    ], rows
    assert watcher.problems == [], watcher.problems

    # Someone edits the entry in the database: the page says where the chain breaks.
    with live.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE activity_log SET actor_email = 'someone@example.com' WHERE seq = 1")
    page.reload()
    page.wait_for_selector("#chain[data-ok='false']")
    assert page.text_content("#chain-badge") == "Chain broken"
    assert page.text_content("#chain-text").startswith("At entry 1: the entry was changed")
    admin.close()


def test_the_audit_log_lists_role_changes_and_filters(live: LiveServer, browser: Browser):
    pid = live.project.project.id
    with live.admin() as api:
        assert api.put(f"/api/projects/{pid}/members/kim@example.com", json={"role": "viewer"}).status_code == 201
        assert api.put(f"/api/projects/{pid}/members/lou@example.com", json={"role": "analyst"}).status_code == 201
    admin = signed_in(browser, live, "admin")
    watcher = Watcher()
    page = watcher.attach(admin.new_page())
    page.goto(f"{live.base_url}/app/projects/{pid}/activity")
    page.click("nav.tabs a:text('Admin audit log')")
    page.wait_for_selector("#audit tbody tr[data-action]")
    # The accounts of the fixture were given their roles by the store, not the API: only these two are logged.
    targets = page.eval_on_selector_all(
        "#audit tbody tr[data-action] td:nth-child(4)", "cells => cells.map(c => c.textContent)"
    )
    assert targets == ["lou@example.com", "kim@example.com"]
    page.fill("input[name='target']", "kim@example.com")
    page.click("#filters button[type='submit']")
    page.wait_for_selector("#audit tbody tr[data-action]")
    assert page.locator("#audit tbody tr[data-action]").count() == 1
    assert "role viewer" in page.text_content("#audit tbody tr[data-action] td.details")
    exported = admin.request.get(f"{live.base_url}{page.get_attribute('#export', 'href')}")
    assert [r["target"] for r in csv.DictReader(io.StringIO(exported.text()))] == ["kim@example.com"]

    # A date the browser's date input would not let through, sent as a URL: the page names the field.
    answer = page.goto(f"{live.base_url}/app/projects/{pid}/activity/audit?from=2026-13-40")
    assert answer.status == 400 and "(from)" in page.text_content("#filter-error")
    admin.close()


def test_change_the_quota_and_see_the_count_reset(live: LiveServer, browser: Browser):
    pid = live.project.project.id
    store_recording(live, synthetic_recording(int(time.time() * 1000), 0.2, cards=2))  # counts against the quota

    analyst = signed_in(browser, live, "analyst")
    page = analyst.new_page()
    page.goto(f"{live.base_url}/app/projects/{pid}/recordings")
    assert page.text_content("#quota-used") == "1" and page.text_content("#quota-limit") == "1000"
    assert page.locator("#quota-form").count() == 0  # no settings.manage: the usage, not the control
    analyst.close()

    admin = signed_in(browser, live, "admin")
    watcher = Watcher()
    page = watcher.attach(admin.new_page())
    page.goto(f"{live.base_url}/app/projects/{pid}/recordings")
    assert page.text_content("#quota-used") == "1"
    assert page.text_content("#quota-remaining") == "999"
    page.fill("#quota-input", "-5")
    page.click("#quota-form button[type='submit']")  # the browser's own check stops it: nothing is sent
    assert page.evaluate("document.getElementById('quota-input').validity.rangeUnderflow") is True
    assert page.text_content("#quota-used") == "1" and page.text_content("#quota-status") == ""

    page.fill("#quota-input", "500")
    page.click("#quota-form button[type='submit']")
    page.wait_for_selector("#quota-status:has-text('Quota set to 500')")
    assert page.text_content("#quota-used") == "0"
    assert page.text_content("#quota-limit") == "500" and page.text_content("#quota-remaining") == "500"
    assert page.get_attribute("#quota-meter", "value") == "0"
    assert page.is_hidden("#quota-error")
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert page.text_content("#quota-start").startswith(today)
    page.reload()
    assert (page.text_content("#quota-used"), page.text_content("#quota-limit")) == ("0", "500")
    usage = admin.request.get(f"{live.base_url}/api/projects/{pid}/playback/usage").json()
    assert (usage["quota"], usage["used"]) == (500, 0)
    assert watcher.problems == [], watcher.problems
    admin.close()


def test_roles_without_audit_view_get_403_and_no_link(live: LiveServer, browser: Browser):
    pid = live.project.project.id
    for role in ("analyst", "viewer"):
        context = signed_in(browser, live, role)
        page = context.new_page()
        page.goto(f"{live.base_url}/app/projects/{pid}")
        links = page.eval_on_selector_all("header nav a", "els => els.map(e => e.textContent)")
        assert "Activity" not in links and "Integrations" not in links, (role, links)
        for path in ("activity", "activity/audit"):
            answer = page.goto(f"{live.base_url}/app/projects/{pid}/{path}")
            assert answer.status == 403, (role, path)
            assert "audit.view" in page.text_content("main")
        context.close()
