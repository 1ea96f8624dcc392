"""The overview, rejected-events, install and settings pages end to end in Debian's Chromium: an admin
changes settings (kept after a reload), sees a refused value at its field, rotates the write key and
sees the new key, manages members, and discards a rejected event; a viewer reads the settings and
cannot change them."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import Browser, Page, expect

from usertrail.project_settings import RecordingMethod, UuidProvider
from usertrail.web.pages import settings as settings_page

from admin_pages import Watcher, demo_server, signed_in
from conftest import LiveServer
from samples import now_ms, walkme_event


@pytest.fixture
def database_url(sqlite_database_url: str) -> str:
    # The pages only call the API, which test_overview_api.py and the API tests run on both engines.
    return sqlite_database_url


@pytest.fixture
def live(make_server) -> LiveServer:
    return demo_server(make_server, users=8, weeks=1)


def open_page(browser: Browser, live: LiveServer, role: str, path: str) -> tuple[Page, Watcher]:
    watcher = Watcher()
    page = watcher.attach(signed_in(browser, live, role).new_page())
    answer = page.goto(f"{live.base_url}/app/projects/{live.project.project.id}/{path}")
    assert answer is not None and answer.status == 200, path
    return page, watcher


def production(live: LiveServer):
    return live.projects.environments(live.project.project.id)["production"]


def test_admin_changes_settings_sees_them_after_reload_and_errors_at_the_field(live: LiveServer, browser: Browser):
    page, watcher = open_page(browser, live, "admin", "settings?env=production")
    page.get_by_label("Collect page titles").uncheck()
    page.get_by_label("Origins the snippet may send from").fill("https://app.example.com\n\nhttps://*.example.com")
    page.get_by_label("Recording method").select_option("manual")
    page.get_by_role("button", name="Save production settings").click()
    expect(page.locator("#settings-saved")).to_have_text("Saved.")
    stored = production(live)
    assert stored.collect_title is False and stored.playback.method == "manual"
    assert stored.allowed_origins == ["https://app.example.com", "https://*.example.com"]
    assert stored.uuid.provider == "variable"  # untouched fields keep their values

    page.reload()
    expect(page.get_by_label("Collect page titles")).not_to_be_checked()
    expect(page.get_by_label("Origins the snippet may send from")).to_have_value(
        "https://app.example.com\nhttps://*.example.com"
    )
    expect(page.get_by_label("Recording method")).to_have_value("manual")

    # A refused value: the API's path ($.traffic.excluded_ips[1]) puts the reason at that field.
    watcher.problems.clear()
    page.get_by_label("Excluded IP addresses").fill("10.0.0.0/8\n300.1.2.3")
    page.get_by_label("WalkMe environment number (wm.env)").fill("0")
    page.get_by_role("button", name="Save production settings").click()
    error = page.locator('[data-error-for="$.traffic.excluded_ips"]')
    expect(error).to_be_visible()
    expect(error).to_contain_text("(line 2)")
    expect(page.get_by_label("Excluded IP addresses")).to_have_attribute("aria-invalid", "true")
    assert production(live).traffic.excluded_ips == []
    assert [p for p in watcher.problems if "400" not in p] == []  # the refusal itself is the only problem

    # A wrong type is refused by path too: wm.env must be a whole number.
    page.get_by_label("Excluded IP addresses").fill("10.0.0.0/8")
    page.get_by_label("WalkMe environment number (wm.env)").fill("zero")
    page.get_by_role("button", name="Save production settings").click()
    expect(page.locator('[data-error-for="$.walkme_env"]')).to_be_visible()
    expect(page.locator('[data-error-for="$.traffic.excluded_ips"]')).to_be_hidden()

    # Saving the form unchanged leaves every setting as it was.
    page.reload()
    before = environment_json(live)
    page.get_by_role("button", name="Save production settings").click()
    expect(page.locator("#settings-saved")).to_have_text("Saved.")
    assert environment_json(live) == before

    # Each kind of control round-trips through the API: a choice, text, checkboxes, segments and line lists.
    segment = live.app.state.segments.list(live.project.project.id)[0]
    page.get_by_label("Data collection level").select_option("playback")
    page.get_by_label("Collect page URLs").uncheck()
    page.get_by_label("Identify end users by").select_option("cookie")
    page.get_by_label("Cookie name, variable or selector").fill("uid")
    page.get_by_label("Hash the identifier (SHA-256) before it is stored").check()
    page.get_by_label("Salt for the hash").fill("pepper-42")
    page.get_by_label("Record every session (global capture)").uncheck()
    page.get_by_label(segment.name).check()
    page.get_by_label("Do not record these IP addresses").fill("10.0.*\n192.168.1.7")
    page.get_by_label("Do not record these domains").fill("*.internal.example.com")
    page.get_by_role("button", name="Save production settings").click()
    expect(page.locator("#settings-saved")).to_have_text("Saved.")
    after = environment_json(live)
    assert after["tracking_level"] == "playback" and after["collect_url"] is False
    assert after["uuid"] == {**before["uuid"], "provider": "cookie", "source": "uid", "hash": True, "salt": "pepper-42"}
    assert after["playback"] == {
        **before["playback"],
        "global_capture": False,
        "segment_ids": [segment.id],
        "excluded_ips": ["10.0.*", "192.168.1.7"],
        "excluded_domains": ["*.internal.example.com"],
    }
    changed = {"tracking_level", "collect_url", "uuid", "playback"}
    assert {k: v for k, v in after.items() if k not in changed} == {k: v for k, v in before.items() if k not in changed}
    page.reload()
    expect(page.get_by_label("Identify end users by")).to_have_value("cookie")
    expect(page.get_by_label(segment.name)).to_be_checked()
    expect(page.get_by_label("Do not record these IP addresses")).to_have_value("10.0.*\n192.168.1.7")


def environment_json(live: LiveServer, env: str = "production") -> dict:
    """An environment's settings as the API gives them."""
    with live.admin() as admin:
        answer = admin.get(f"/api/projects/{live.project.project.id}")
    assert answer.status_code == 200, answer.text
    return answer.json()["environments"][env]


def test_admin_sets_the_projects_retention_periods(live: LiveServer, browser: Browser):
    page, watcher = open_page(browser, live, "admin", "settings")
    users = page.get_by_label("Delete end users after this many days without a session")
    expect(users).to_have_attribute("placeholder", "183 (installation default)")
    users.fill("0")
    page.get_by_role("button", name="Save retention").click()
    expect(page.locator('[data-error-for="$.user_days"]')).to_contain_text("from 1 to 3650")
    users.fill("90")
    page.get_by_role("button", name="Save retention").click()
    expect(page.locator("#retention-saved")).to_have_text("Saved.")
    page.reload()
    expect(users).to_have_value("90")
    expect(page.get_by_label("Delete session recordings after (days)")).to_have_value("")
    with live.admin() as admin:
        stored = admin.get(f"/api/projects/{live.project.project.id}/retention").json()
    assert stored["effective"] == {"user_days": 90, "playback_days": 365}
    assert [p for p in watcher.problems if "400" not in p] == []


def test_admin_rotates_the_write_key_and_sees_the_new_one(live: LiveServer, browser: Browser):
    old = live.project.write_key
    page, watcher = open_page(browser, live, "admin", "install")
    expect(page.locator("#snippet-production")).to_contain_text(f'data-key="{old}"')
    expect(page.locator("#snippet-test")).to_contain_text('data-env="test"')
    page.locator("#rotate-kind").select_option("write")
    page.get_by_role("button", name="Rotate").click()
    expect(page.locator("#new-key")).to_be_visible()
    new = page.locator("#new-key-value").inner_text()
    assert new.startswith("wk_") and new != old
    expect(page.locator("#new-key .warning")).to_contain_text("stops working in 86400 seconds")
    expect(page.locator("#snippet-production")).to_contain_text(f'data-key="{new}"')
    page.reload()
    expect(page.locator("#snippet-production")).to_contain_text(f'data-key="{new}"')
    expect(page.locator("#keys")).to_contain_text(new)
    assert watcher.problems == []
    # The new key is the one the API hands out, and it collects.
    with live.client() as client:
        answer = client.post(
            f"/event/tell?key={new}", content=json.dumps([walkme_event(time=now_ms())]),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
    assert answer.status_code == 200, answer.text

    # An admin token is shown once, and never again.
    page.locator("#rotate-kind").select_option("admin")
    expect(page.get_by_label("Old key keeps working for (seconds)")).to_have_value("0")
    page.get_by_role("button", name="Rotate").click()
    expect(page.locator("#new-key-value")).to_contain_text("adm_")
    token = page.locator("#new-key-value").inner_text()
    page.reload()
    assert token not in page.content()


def test_viewer_reads_settings_but_cannot_change_them(live: LiveServer, browser: Browser):
    page, watcher = open_page(browser, live, "viewer", "settings")
    expect(page.locator("#read-only")).to_be_visible()
    expect(page.locator("#save-settings")).to_have_count(0)
    expect(page.locator("#quota-form")).to_have_count(0)
    expect(page.locator("#members")).to_have_count(0)
    expect(page.locator("#save-retention")).to_have_count(0)
    expect(page.get_by_label("Delete session recordings after (days)")).not_to_be_editable()
    expect(page.get_by_label("Collect page titles")).to_be_disabled()
    expect(page.get_by_label("Excluded IP addresses")).not_to_be_editable()
    page.goto(f"{live.base_url}/app/projects/{live.project.project.id}/install")
    expect(page.locator("#keys")).to_be_visible()
    expect(page.locator("#rotate-button")).to_have_count(0)
    expect(page.locator("#snippet-production")).to_contain_text(live.project.write_key)
    page.goto(f"{live.base_url}/app/projects/{live.project.project.id}/overview")
    expect(page.locator("#rejected-link")).to_have_count(0)
    assert watcher.problems == []


def test_admin_manages_members(live: LiveServer, browser: Browser):
    page, watcher = open_page(browser, live, "admin", "settings")
    page.get_by_label("E-mail").fill("new.person@example.com")
    page.locator("#member-role").select_option("analyst")
    page.get_by_role("button", name="Add").click()
    expect(page.locator("#member-password")).to_be_visible()
    expect(page.locator("#member-password-value")).not_to_be_empty()
    row = page.locator('tr[data-email="new.person@example.com"]')
    expect(row).to_contain_text("new.person@example.com")
    expect(page.get_by_label("Role of new.person@example.com")).to_have_value("analyst")
    page.reload()
    page.get_by_label("Role of new.person@example.com").select_option("viewer")
    expect(page.locator("#members-result")).to_contain_text("is now viewer")
    roles = {a.email: role for a, role in live.app.state.accounts.members(live.project.project.id)}
    assert roles["new.person@example.com"] == "viewer"
    row.get_by_role("button", name="Remove").click()
    expect(row).to_have_count(0)
    roles = {a.email: role for a, role in live.app.state.accounts.members(live.project.project.id)}
    assert "new.person@example.com" not in roles
    assert watcher.problems == []


def test_overview_links_to_rejected_events_which_can_be_discarded(live: LiveServer, browser: Browser):
    bad = walkme_event(time=now_ms() - 10, data_oId={"nested": True})
    with live.client() as client:
        answer = client.post(
            f"/event/tell?key={live.project.write_key}", content=json.dumps([bad, bad | {"time": now_ms() - 5}]),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
    assert answer.status_code == 400
    page, watcher = open_page(browser, live, "admin", "overview")
    expect(page.locator('[data-total="rejected_pending"]')).to_have_text("2")
    expect(page.locator('[data-total="active_users"]')).not_to_have_text("0")
    expect(page.locator("#top-pages tbody tr").first).not_to_contain_text("No page views")
    page.locator("#rejected-link").click()
    rows = page.locator("#rejected tbody tr")
    expect(rows).to_have_count(2)
    # The reason in words, as the sender was answered, beside its code.
    expect(rows.first.locator("td").nth(4)).to_have_text(f"invalid{answer.json()['errors'][0]['reason']}")
    page.locator("#select-all").check()
    page.get_by_role("button", name="Discard selected").click()
    expect(page.locator("#rejected-result")).to_have_text("Discarded 2 events.")
    expect(rows.locator("td.status").first).to_have_text("discarded")
    page.goto(f"{live.base_url}/app/projects/{live.project.project.id}/overview")
    expect(page.locator('[data-total="rejected_pending"]')).to_have_text("0")
    assert watcher.problems == []


def test_a_whole_body_is_reprocessed_from_the_rejected_page(live: LiveServer, browser: Browser):
    too_many = [walkme_event(time=now_ms() - 10_000 + i, data_oId=f"whole-{i}") for i in range(501)]
    with live.client() as client:
        answer = client.post(f"/event/tell?key={live.project.write_key}", json=too_many)
    assert answer.status_code == 400
    page, watcher = open_page(browser, live, "admin", "rejected")
    row = page.locator("#rejected tbody tr")
    expect(row).to_have_count(1)
    row.locator("input.pick").check()
    page.get_by_role("button", name="Re-process selected").click()
    expect(page.locator("#rejected-result")).to_have_text("Re-processed: 1 stored.")
    expect(row.locator("td.status")).to_have_text(
        "reprocessed (501 stored, 0 dropped, 0 rejected, listed on their own)"
    )
    assert live.scalar("SELECT count(*) FROM events WHERE object_id LIKE 'whole-%'") == 501
    assert watcher.problems == []


def test_settings_choices_cover_the_setting_types():
    assert {v for v, _ in settings_page.UUID_PROVIDERS} == set(UuidProvider.__args__)
    assert {v for v, _ in settings_page.RECORDING_METHODS} == set(RecordingMethod.__args__)
