"""The integrations pages in Debian's Chromium, end to end through the real server: a CSV upload with its
mapping step and a bad row, whose error report is shown and downloadable while the good rows are applied;
an API client's secret and a SCIM token shown once; an S3 source created, run, edited and deleted; and who
may reach these pages."""

from __future__ import annotations

import csv
import io
import re

import pytest
from playwright.sync_api import Browser

from usertrail.testing.postgres import free_port

from admin_pages import Watcher, light_server, signed_in
from conftest import LiveServer, http_client

# The API behind these pages is tested on both engines (test_csv_import.py, test_update_api.py, …).
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def live(make_server) -> LiveServer:
    return light_server(make_server)


# `seats` is typed as a number in the mapping step (the rows alone suggest text, because of "many"), so
# line 3's value is refused; line 4 has no end-user id. `color` is left out.
CRM_CSV = "user_id,plan,seats,color\nlena,VIP,12,blue\nmax,free,many,red\n,orphan,3,green\n"


def history(live: LiveServer, user_key: str) -> dict[str, object]:
    """The user's current custom attribute values, from the attribute history API (latest change wins)."""
    with live.admin() as api:
        answer = api.get(f"/api/projects/{live.project.project.id}/users/{user_key}/attributes/history")
    assert answer.status_code == 200, answer.text
    values: dict[str, object] = {}
    for change in sorted(answer.json()["history"], key=lambda c: c["changed_at"]):
        values[change["name"]] = change["new"]
    return values


def test_upload_a_csv_with_a_bad_row_and_see_the_error_report(live: LiveServer, browser: Browser, tmp_path):
    pid = live.project.project.id
    context = signed_in(browser, live, "admin")
    watcher = Watcher()
    page = watcher.attach(context.new_page())
    page.goto(f"{live.base_url}/app/projects/{pid}")
    page.click("header nav a:text('Integrations')")
    page.wait_for_selector("body[data-ready]")

    page.set_input_files("#csv-file", files=[{"name": "crm.csv", "mimeType": "text/csv", "buffer": CRM_CSV.encode()}])
    page.wait_for_selector("#csv-mapping:not([hidden])")
    assert page.get_attribute("#step-map", "aria-current") == "step"
    assert page.input_value("#csv-id-column") == "user_id"
    columns = page.eval_on_selector_all("#csv-columns tbody tr", "rows => rows.map(r => r.dataset.column)")
    assert columns == ["plan", "seats", "color"]
    seats = "#csv-columns tr[data-column='seats']"
    assert page.input_value(f"{seats} select") == "string"  # what the rows suggest
    assert "lena" not in page.text_content(seats) and "12, many, 3" in page.text_content(seats)
    page.select_option(f"{seats} select", "number")
    page.fill("#csv-columns tr[data-column='plan'] input.c-name", "Plan")
    page.uncheck("#csv-columns tr[data-column='color'] input.c-include")
    assert "adds 2 new names" in page.text_content("#csv-budget")
    page.click("#csv-start")

    page.wait_for_selector("#csv-job[data-finished]")
    assert page.get_attribute("#csv-job", "data-finished") == "done"
    assert page.text_content("#csv-job-status") == "done"
    assert page.eval_on_selector("#csv-progress", "bar => bar.value") == 1
    counts = {key: page.text_content(f"#csv-{key}") for key in ("rows", "rows-applied", "rows-failed", "registered")}
    assert counts == {"rows": "3", "rows-applied": "2", "rows-failed": "2", "registered": "Plan, seats"}
    page.wait_for_selector("#csv-errors:not([hidden])")
    assert page.text_content("#csv-error-count").startswith("2 errors")
    shown = page.eval_on_selector_all(
        "#csv-error-table tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
    assert [row[:2] for row in shown] == [["3", "seats"], ["4", "user_id"]], shown
    assert "expected a number" in shown[0][2] and "many" in shown[0][2]

    with page.expect_download() as download:
        page.click("#csv-errors-download")
    saved = tmp_path / "errors.csv"
    download.value.save_as(saved)
    report = list(csv.reader(io.StringIO(saved.read_text())))
    assert report[0] == ["line", "column", "reason"]
    assert [r[:2] for r in report[1:]] == [["3", "seats"], ["4", "user_id"]]

    # The history below the form shows the job; the good rows were applied, the bad value and column were not.
    page.wait_for_selector("#jobs tbody tr[data-job] .status-done")
    assert "2 errors (CSV)" in page.text_content("#jobs tbody tr[data-job]")
    assert history(live, "u:lena") == {"Plan": "VIP", "seats": 12}
    assert history(live, "u:max") == {"Plan": "free"}
    with live.admin() as api:
        registry = api.get(f"/api/projects/{pid}/attributes").json()
    assert {a["name"]: a["type"] for a in registry["attributes"]} == {"Plan": "string", "seats": "number"}

    # Uploading the same file with the same mapping again changes nothing, and the page says so.
    page.click("#csv-again")
    page.set_input_files("#csv-file", files=[{"name": "crm.csv", "mimeType": "text/csv", "buffer": CRM_CSV.encode()}])
    page.wait_for_selector("#csv-mapping:not([hidden])")
    assert page.text_content("#csv-columns tr[data-column='plan'] .c-note") == ""
    page.select_option(f"{seats} select", "number")
    page.fill("#csv-columns tr[data-column='plan'] input.c-name", "Plan")
    assert page.text_content("#csv-columns tr[data-column='plan'] .c-note") == "registered as string"
    page.uncheck("#csv-columns tr[data-column='color'] input.c-include")
    page.click("#csv-start")
    page.wait_for_selector("#csv-job[data-finished='skipped']")
    assert "already imported" in page.text_content("#csv-job-message")

    # The attribute registry page shows the budget.
    page.click("nav.tabs a:text('Attribute registry')")
    page.wait_for_selector("#attributes")
    assert page.text_content("#budget-used") == "2"
    assert page.eval_on_selector_all("#attributes tbody tr", "rows => rows.map(r => r.dataset.attribute)") == [
        "Plan",
        "seats",
    ]
    assert watcher.problems == [], watcher.problems
    context.close()


def test_a_refused_mapping_names_the_field(live: LiveServer, browser: Browser):
    pid = live.project.project.id
    with live.admin() as api:
        assert api.patch(f"/api/projects/{pid}/users/u:x/attributes", json={"seats": "few"}).status_code == 200
    context = signed_in(browser, live, "admin")
    page = context.new_page()
    page.goto(f"{live.base_url}/app/projects/{pid}/integrations")
    page.set_input_files("#csv-file", files=[{"name": "c.csv", "mimeType": "text/csv", "buffer": CRM_CSV.encode()}])
    page.wait_for_selector("#csv-mapping:not([hidden])")
    seats = "#csv-columns tr[data-column='seats']"
    assert page.input_value(f"{seats} select") == "string" and "registered as string" in page.text_content(seats)
    page.select_option(f"{seats} select", "number")  # clashes with the registry
    page.click("#csv-start")
    page.wait_for_selector("#csv-mapping-error:not([hidden])")
    assert "registered as string" in page.text_content("#csv-mapping-error")
    assert "(type)" in page.text_content("#csv-mapping-error")

    page.click("#csv-cancel")
    page.set_input_files("#csv-file", files=[{"name": "one.csv", "mimeType": "text/csv", "buffer": b"just_one\nu1\n"}])
    page.wait_for_selector("#csv-pick-error:not([hidden])")
    assert "two columns" in page.text_content("#csv-pick-error")
    context.close()


def test_an_api_client_and_a_scim_token_are_shown_once(live: LiveServer, browser: Browser):
    pid = live.project.project.id
    context = signed_in(browser, live, "admin")
    watcher = Watcher()
    page = watcher.attach(context.new_page())
    page.goto(f"{live.base_url}/app/projects/{pid}/integrations/api-clients")
    page.wait_for_selector("body[data-ready]")
    page.fill("#client-name", "crm")
    page.fill("#client-id-path", "properties.ID")
    page.fill("#client-fields tbody tr:nth-child(1) .m-source", "plan")
    page.fill("#client-fields tbody tr:nth-child(1) .m-name", "Plan")
    page.click("#client-fields .m-add")
    page.fill("#client-fields tbody tr:nth-child(2) .m-source", "properties.seats")
    page.select_option("#client-fields tbody tr:nth-child(2) .m-type", "number")
    page.click("#client-form button[type='submit']")
    page.wait_for_selector("#client-secret:not([hidden])")
    client_id = page.text_content("#new-client-id")
    secret = page.text_content("#new-client-secret")
    assert client_id.startswith(f"uc_{pid}_") and len(secret) >= 32

    # The secret works: it gets a token, which writes a value.
    with http_client(base_url=live.base_url) as client:
        token = client.post(
            "/accounts/connect/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret)
        )
        assert token.status_code == 200, token.text
        update = client.post(
            "/public/v1/user/data",
            json={"data": [{"properties": {"ID": "lena", "seats": "3"}, "plan": "VIP"}]},
            headers={"Authorization": f"Bearer {token.json()['access_token']}"},
        )
        assert update.status_code == 202 and update.json()["records_applied"] == 1

    page.click("#client-secret-done")
    page.wait_for_selector(f"#clients tr[data-client='{client_id}']")
    assert secret not in page.content()  # shown once: never again
    row = f"#clients tr[data-client='{client_id}']"
    assert "properties.seats → properties.seats number" in re.sub(r"\s+", " ", page.text_content(row))
    page.click(f"{row} button.revoke")
    assert page.text_content(f"{row} button.revoke").startswith("Click again")
    page.click(f"{row} button.revoke")
    page.wait_for_selector(f"{row} .status-revoked")

    page.goto(f"{live.base_url}/app/projects/{pid}/integrations/scim")
    page.wait_for_selector("body[data-ready]")
    assert page.text_content("#scim-issue") == "Create token"
    page.click("#scim-issue")
    page.wait_for_selector("#scim-token:not([hidden])")
    scim_token = page.text_content("#scim-token-value")
    base_url = page.text_content("#scim-base-url")
    with http_client() as client:
        users = client.get(f"{base_url}/Users", headers={"Authorization": f"Bearer {scim_token}"})
    assert users.status_code == 200 and users.json()["totalResults"] == 0
    page.click("#scim-token-done")
    page.wait_for_selector("#scim-revoke")
    assert scim_token not in page.content() and page.text_content("#scim-issue") == "Rotate token"

    # The mapping: one attribute from the enterprise extension, saved through the settings API.
    page.click("#scim-mapping .m-add")
    last = "#scim-mapping tbody tr:last-child"
    page.fill(f"{last} .m-source", "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber")
    page.fill(f"{last} .m-name", "Employee no")
    page.click("#scim-form button[type='submit']")
    page.wait_for_selector("#scim-saved:has-text('Saved'), #scim-form-error:not([hidden])")
    assert page.is_hidden("#scim-form-error"), page.text_content("#scim-form-error")
    with live.admin() as api:
        mapping = api.get(f"/api/projects/{pid}/integrations/scim").json()["mapping"]
    assert mapping[-1] == {
        "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber",
        "name": "Employee no",
        "type": "string",
    }

    # The integration log lists what happened, filterable by integration.
    page.goto(f"{live.base_url}/app/projects/{pid}/integrations/log?integration=crm")
    kinds = page.eval_on_selector_all("#log tbody tr[data-kind]", "rows => rows.map(r => r.dataset.kind)")
    assert kinds == ["client.revoke", "update", "token.issue", "client.create"], kinds
    assert watcher.problems == [], watcher.problems
    context.close()


def test_an_s3_source_is_created_run_edited_and_deleted(live: LiveServer, browser: Browser):
    pid = live.project.project.id
    context = signed_in(browser, live, "admin")
    watcher = Watcher()
    page = watcher.attach(context.new_page())
    page.goto(f"{live.base_url}/app/projects/{pid}/integrations/s3")
    page.wait_for_selector("body[data-ready]")
    form = "#s3-form"
    # Nothing listens on this port: the run's listing fails, which the run history must show.
    page.fill(f"{form} input[name='name']", "warehouse")
    page.fill(f"{form} input[name='bucket']", "acme-exports")
    page.fill(f"{form} input[name='endpoint_url']", f"http://127.0.0.1:{free_port()}")
    page.fill(f"{form} input[name='access_key_id']", "AKIAEXAMPLEKEY1234")
    page.fill(f"{form} input[name='id_column']", "user_id")
    page.fill(f"{form} input[name='interval_seconds']", "600")
    page.click("#s3-columns .m-add")
    page.fill("#s3-columns tbody tr:last-child .m-source", "plan")
    page.click("#s3-submit")
    page.wait_for_selector("#s3-error:not([hidden])")
    assert "($.secret_access_key)" in page.text_content("#s3-error")
    watcher.problems.clear()  # the refusal was the point
    page.fill(f"{form} input[name='secret_access_key']", "secret-example")
    page.click("#s3-submit")
    page.wait_for_selector("#s3-sources tr[data-source]")
    row = "#s3-sources tr[data-source]"
    assert "key ****1234" in page.text_content(row) and "secret-example" not in page.content()

    page.click(f"{row} button.run")
    page.wait_for_selector("#runs-table tbody tr[data-run] .status-failed", timeout=60_000)
    assert page.text_content("#runs-title") == "Runs of “warehouse”"
    assert page.text_content("#runs-table tbody tr[data-run] td:nth-child(2)") == "api"

    page.click(f"{row} button.edit")
    assert page.text_content("#s3-form-title") == "Edit “warehouse”"
    assert page.input_value(f"{form} input[name='bucket']") == "acme-exports"
    assert page.input_value("#s3-columns tbody tr:last-child .m-source") == "plan"
    page.fill(f"{form} input[name='interval_seconds']", "7200")
    page.click("#s3-submit")
    page.wait_for_selector("#s3-sources tr[data-source]:has-text('every 120 min')")
    with live.admin() as api:
        (source,) = api.get(f"/api/projects/{pid}/integrations/s3").json()["sources"]
    assert source["interval_seconds"] == 7200 and source["credentials"] == "access_key"  # the secret was kept
    assert source["columns"] == [{"column": "plan", "name": "plan", "type": None}]

    page.click(f"{row} button.delete")
    page.click(f"{row} button.delete")
    page.wait_for_selector("#s3-sources tbody td.muted")
    assert watcher.problems == [], watcher.problems
    context.close()


def test_a_salesforce_source_is_created_run_and_edited(live: LiveServer, browser: Browser):
    pid = live.project.project.id
    context = signed_in(browser, live, "admin")
    watcher = Watcher()
    page = watcher.attach(context.new_page())
    page.goto(f"{live.base_url}/app/projects/{pid}/integrations/salesforce")
    page.wait_for_selector("body[data-ready]")
    form = "#sf-form"
    assert page.is_hidden(f"{form} textarea[name='private_key']")
    # Nothing listens there: the run fails to connect, and the run history says so.
    page.fill(f"{form} input[name='login_url']", f"https://127.0.0.1:{free_port()}")
    page.fill(f"{form} input[name='object']", "Contact")
    page.fill(f"{form} input[name='match_field']", "Usertrail_Id__c")
    page.fill(f"{form} input[name='username']", "integration@acme.example")
    page.fill(f"{form} input[name='password']", "hunter2-password")
    page.fill("#sf-fields tbody tr:nth-child(1) .m-source", "Plan__c")
    page.fill("#sf-fields tbody tr:nth-child(1) .m-name", "Plan")
    page.click("#sf-submit")
    row = "#sf-sources tr[data-source]"
    page.wait_for_selector(row)
    assert "password · integration@acme.example" in page.text_content(row)
    assert "hunter2-password" not in page.content()

    page.click(f"{row} button.run")
    page.wait_for_selector("#runs-table tbody tr[data-run] .status-failed", timeout=90_000)
    assert "connection_failed" in page.text_content("#runs-table tbody tr[data-run]")

    page.click(f"{row} button.edit")
    assert page.is_visible("#sf-secrets-note")
    page.select_option(f"{form} select[name='flow']", "jwt")
    assert page.is_visible(f"{form} textarea[name='private_key']") and page.is_hidden(f"{form} input[name='password']")
    page.select_option(f"{form} select[name='flow']", "oauth_password")
    for shown in ("input[name='consumer_secret']", "input[name='consumer_key']", "input[name='password']"):
        assert page.is_visible(f"{form} {shown}"), shown
    assert page.is_hidden(f"{form} textarea[name='private_key']")
    page.select_option(f"{form} select[name='flow']", "password")
    page.fill(f"{form} input[name='interval_minutes']", "30")
    page.click("#sf-submit")  # the password is left empty: the stored one is kept
    page.wait_for_selector(f"{row}:has-text('every 30 min')")
    with live.admin() as api:
        (source,) = api.get(f"/api/projects/{pid}/integrations/salesforce").json()["sources"]
    assert source["interval_minutes"] == 30 and source["auth"]["password"] == "********"
    assert source["fields"] == [{"field": "Plan__c", "name": "Plan", "type": "string"}]
    assert watcher.problems == [], watcher.problems
    context.close()


def test_roles_without_integrations_manage_get_403_and_no_link(live: LiveServer, browser: Browser):
    pid = live.project.project.id
    for role in ("analyst", "viewer"):
        context = signed_in(browser, live, role)
        page = context.new_page()
        page.goto(f"{live.base_url}/app/projects/{pid}")
        links = page.eval_on_selector_all("header nav a", "els => els.map(e => e.textContent)")
        assert "Integrations" not in links, (role, links)
        for path in ("integrations", "integrations/api-clients", "integrations/s3", "integrations/salesforce",
                     "integrations/scim", "integrations/log"):  # fmt: skip
            answer = page.goto(f"{live.base_url}/app/projects/{pid}/{path}")
            assert answer.status == 403, (role, path)
        # The registry needs only users.view: readable, without the integrations' tabs.
        answer = page.goto(f"{live.base_url}/app/projects/{pid}/attributes")
        assert answer.status == 200 and page.locator("nav.tabs").count() == 0
        refused = context.request.post(
            f"{live.base_url}/api/projects/{pid}/integrations/api-clients",
            data={"name": "x", "user_id_property": "id", "fields": [{"payload": "a"}]},
            headers={"X-CSRF-Token": next(c["value"] for c in context.cookies() if c["name"] == "usertrail_csrf")},
        )
        assert refused.status == 403 and refused.json()["permission"] == "integrations.manage"
        context.close()
