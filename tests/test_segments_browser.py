"""The issue's flow "build a segment and see its count", in Debian's Chromium on the demo data: a two-group
rule built with the mouse and keyboard, the live count equal to the API's, a validation message at the
rule that is wrong, save, the list with its count, the members and the entered history; then every kind of
value control and behaviour rules, with the JSON they send and the saved segment drawn back."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
from playwright.sync_api import Browser, Page, expect

from admin_pages import SCREENSHOTS, Watcher, demo_server, signed_in
from browser import wait_until
from conftest import LiveServer

# The pages call the segments API, whose routes are tested on both engines in the API tests.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def api_count(live: LiveServer, rules: dict) -> int:
    with live.admin() as admin:
        answer = admin.post(f"/api/projects/{live.project.project.id}/segments/preview", json={"rules": rules})
    assert answer.status_code == 200, answer.text
    return answer.json()["count"]


def counted(page: Page) -> int:
    """The live count once the latest preview has answered."""
    editor = page.locator("#segment-editor")
    expect(editor).to_have_attribute("data-preview-state", "counted")
    return int(page.locator("#live-count").get_attribute("data-count"))


def set_rule(rule, attribute: str, operator: str, value: str | None) -> None:
    """Choose the attribute and operator with the mouse (select menus), type the value with the keyboard."""
    rule.get_by_label("Attribute").select_option(attribute)
    rule.get_by_label("Operator").select_option(operator)
    if value is not None:
        box = rule.locator("[data-field=a]")
        box.click()
        box.press("Control+a")
        box.press_sequentially(value)


def test_build_a_segment_and_see_its_count(make_server, browser: Browser):
    live = demo_server(make_server)
    pid = live.project.project.id
    context = signed_in(browser, live, "admin")
    watcher = Watcher()
    page = watcher.attach(context.new_page())
    page.goto(f"{live.base_url}/app/projects/{pid}/segments")
    page.get_by_role("link", name="New segment").click()
    page.wait_for_url("**/segments/new")

    builder = page.locator("#rule-builder")
    first = builder.locator(".rb-rule").first
    set_rule(first, "Total sessions", "gte", "2")

    # A second group, nested: the builder makes it "any" (OR) under the root's "all" (AND).
    builder.get_by_role("button", name="+ Group").click()
    group = builder.locator(".rb-nested")
    expect(group.get_by_role("button", name="any (OR)")).to_have_attribute("aria-pressed", "true")
    expect(group.locator(".rb-rule select.rb-attribute")).to_be_focused()  # the new rule, ready for the keyboard
    set_rule(group.locator(".rb-rule").nth(0), "role", "is", "admin")
    group.get_by_role("button", name="+ Rule").click()
    set_rule(group.locator(".rb-rule").nth(1), "role", "starts_with", "ana")

    rules = {
        "match": "all",
        "rules": [
            {"attribute": "Total sessions", "operator": "gte", "value": 2},
            {"match": "any", "rules": [{"attribute": "role", "operator": "is", "value": "admin"},
                                       {"attribute": "role", "operator": "starts_with", "value": "ana"}]},
        ],
    }  # fmt: skip
    expected = api_count(live, rules)
    with live.admin() as admin:
        everyone = len(admin.get(f"/api/projects/{pid}/users", params={"limit": 1000}).json()["users"])
    assert 0 < expected < everyone, (expected, everyone)
    assert counted(page) == expected
    user_page = re.compile(rf"^/app/projects/{pid}/users/[ua]%3A")
    expect(page.locator("#live-sample li a").first).to_have_attribute("href", user_page)
    assert watcher.problems == []

    # A broken regular expression in the nested group's second rule: the message is shown at that rule.
    wrong = group.locator(".rb-rule").nth(1)
    set_rule(wrong, "role", "matches_regex", "ana(")
    expect(page.locator("#segment-editor")).to_have_attribute("data-preview-state", "invalid")
    expect(wrong.locator(".rb-error")).to_contain_text("not a valid regular expression")
    expect(wrong.locator("[data-field=a]")).to_have_attribute("aria-invalid", "true")
    expect(group.locator(".rb-rule").nth(0).locator(".rb-error")).to_be_hidden()
    expect(first.locator(".rb-error")).to_be_hidden()
    expect(page.locator("#live-count")).to_have_text("—")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "segment-validation.png"))
    watcher.problems.clear()  # the refused preview (HTTP 400) was the point of this step

    wrong.locator("[data-field=a]").fill("^ana")
    assert counted(page) == expected
    expect(wrong.locator(".rb-error")).to_be_hidden()

    page.get_by_label("Name").fill("Engaged admins and analysts")
    page.get_by_label("Description").fill("two or more sessions, admin or analyst role")
    page.get_by_role("button", name="Save segment").click()
    page.wait_for_url(f"**/app/projects/{pid}/segments/seg_*")
    segment_id = page.url.rsplit("/", 1)[1]
    with live.admin() as admin:
        saved = admin.get(f"/api/projects/{pid}/segments/{segment_id}").json()
    rules["rules"][1]["rules"][1] = {"attribute": "role", "operator": "matches_regex", "value": "^ana"}
    assert saved["rules"] == rules and saved["name"] == "Engaged admins and analysts"

    # The members (live, linking to the user pages) and the history: everyone entered when it was saved.
    expect(page.locator("#members-summary")).to_have_attribute("data-total", str(expected))
    links = page.locator("#members tbody a")
    expect(links).to_have_count(min(expected, 25))
    expect(links.first).to_have_attribute("href", user_page)
    expect(page.locator("#history tbody .badge.entered")).to_have_count(min(expected, 25))
    page.get_by_label("Show").select_option("left")
    expect(page.locator("#history tbody")).to_contain_text("No changes recorded.")

    watcher.settle(page)
    page.get_by_role("link", name="← Segments").click()
    row = page.locator(f"#segments tr[data-segment='{segment_id}']")
    expect(row.locator("td[data-members]")).to_have_attribute("data-members", str(expected))
    row.get_by_role("link", name="Engaged admins and analysts").click()
    expect(page.locator("#members-summary")).to_have_attribute("data-total", str(expected))
    # The page still fetches its history; navigating away now would abort that fetch (ERR_ABORTED).
    watcher.settle(page)
    assert watcher.problems == []

    value_types_and_behaviour(page, live)
    assert watcher.problems == []
    context.close()


def last_preview(page: Page, previews: list[dict], rules: dict) -> None:
    """Wait until the editor has asked for a preview of exactly `rules`: the builder's JSON."""
    wait_until(
        lambda: previews and previews[-1]["rules"] == rules,
        f"a preview of {rules}",
        sleep=lambda s: page.wait_for_timeout(s * 1000),
    )


def value_types_and_behaviour(page: Page, live: LiveServer) -> None:
    """One rule per kind of value control, and behaviour rules, built with the builder's own controls: the
    rules JSON it sends, the live count equal to the API's, and the saved segment drawn back unchanged."""
    pid = live.project.project.id
    previews: list[dict] = []
    page.on("request", lambda r: previews.append(r.post_data_json) if r.url.endswith("/segments/preview") else None)
    page.goto(f"{live.base_url}/app/projects/{pid}/segments/new")
    builder = page.locator("#rule-builder")
    rules = builder.locator(".rb-rule")

    # Two dates, the end day included: the day someone was last seen, from that day to that same day.
    last_day = dt.datetime.fromtimestamp(live.scalar("SELECT max(last_seen) FROM end_users") / 1000, dt.UTC)
    day = last_day.date().isoformat()
    between = rules.nth(0)
    between.get_by_label("Attribute").select_option("Last seen")
    between.get_by_label("Operator").select_option("between")
    between.get_by_label("From date (UTC)").fill(day)
    between.get_by_label("To date (UTC), included").fill(day)
    one_day = {"match": "all", "rules": [{"attribute": "Last seen", "operator": "between", "value": [day, day]}]}
    last_preview(page, previews, one_day)
    assert counted(page) == api_count(live, one_day) > 0

    def add(attribute: str, operator: str):
        builder.get_by_role("button", name="+ Rule").click()
        rule = rules.last
        if attribute == "behaviour":
            rule.get_by_label("Attribute").select_option(label="Did something (events)")
        else:
            rule.get_by_label("Attribute").select_option(attribute)
        rule.get_by_label("Operator").select_option(operator)
        return rule

    week_ago = (last_day.date() - dt.timedelta(days=7)).isoformat()
    add("First seen", "before").get_by_label("Date (UTC)").fill(week_ago)
    add("Average session duration", "gte").get_by_label("Number (minutes)").fill("5")
    within = add("First seen", "within_last")
    within.get_by_label("How many").fill("4")
    within.get_by_label("Unit").select_option("weeks")
    add("Country", "is_one_of").get_by_label("Values, separated by commas").fill("US, DE")
    did = add("behaviour", "did")
    did.get_by_label("Event type").fill("play")
    did.get_by_label("At least how many times").fill("2")
    did.get_by_label("Days", exact=True).fill("14")
    stopped = add("behaviour", "stopped")
    stopped.get_by_label("Event type").fill("play")
    stopped.get_by_label("Did it within the last days").fill("60")
    stopped.get_by_label("Days", exact=True).fill("7")
    builder.locator(".rb-match").first.get_by_role("button", name="any (OR)").click()
    expected = {
        "match": "any",
        "rules": [
            {"attribute": "Last seen", "operator": "between", "value": [day, day]},
            {"attribute": "First seen", "operator": "before", "value": week_ago},
            {"attribute": "Average session duration", "operator": "gte", "value": 300_000},  # minutes → ms
            {"attribute": "First seen", "operator": "within_last", "value": 4, "unit": "weeks"},
            {"attribute": "Country", "operator": "is_one_of", "value": ["US", "DE"]},
            {"behaviour": {"event": "play"}, "operator": "did", "days": 14, "times": 2},
            {"behaviour": {"event": "play"}, "operator": "stopped", "days": 7, "since_days": 60},
        ],
    }
    last_preview(page, previews, expected)
    assert counted(page) == api_count(live, expected)

    page.get_by_label("Name").fill("Every kind of rule")
    asked = len(previews)
    page.get_by_role("button", name="Save segment").click()
    page.wait_for_url(f"**/app/projects/{pid}/segments/seg_*")
    with live.admin() as admin:
        saved = admin.get(f"/api/projects/{pid}/segments/{page.url.rsplit('/', 1)[1]}").json()
    assert saved["rules"] == expected
    # Drawn back from the saved rules: the same controls and values, and the same JSON again.
    wait_until(
        lambda: len(previews) > asked, "the saved segment's preview", sleep=lambda s: page.wait_for_timeout(s * 1000)
    )
    last_preview(page, previews, expected)
    expect(rules).to_have_count(7)
    expect(rules.nth(0).get_by_label("To date (UTC), included")).to_have_value(day)
    expect(rules.nth(2).get_by_label("Number (minutes)")).to_have_value("5")
    expect(rules.nth(3).get_by_label("Unit")).to_have_value("weeks")
    expect(rules.nth(4).get_by_label("Values, separated by commas")).to_have_value("US, DE")
    expect(rules.nth(6).get_by_label("Did it within the last days")).to_have_value("60")
    expect(builder.locator(".rb-match").first.get_by_role("button", name="any (OR)")).to_have_attribute(
        "aria-pressed", "true"
    )


def test_viewer_sees_rules_read_only_and_cannot_create(make_server, browser: Browser):
    live = demo_server(make_server)
    pid = live.project.project.id
    segment_id = live.app.state.segments.list(pid)[0].id
    context = signed_in(browser, live, "viewer")
    page = Watcher().attach(context.new_page())
    page.goto(f"{live.base_url}/app/projects/{pid}/segments")
    expect(page.get_by_role("link", name="New segment")).to_have_count(0)
    page.goto(f"{live.base_url}/app/projects/{pid}/segments/{segment_id}")
    expect(page.locator("#rule-builder select.rb-attribute")).to_be_disabled()
    expect(page.locator("#rule-builder").get_by_role("button", name="+ Rule")).to_have_count(0)
    expect(page.locator("#save")).to_have_count(0)
    assert counted(page) == api_count(live, json.loads(live.app.state.segments.get(pid, segment_id).rules))
    assert page.goto(f"{live.base_url}/app/projects/{pid}/segments/new").status == 403
    context.close()
