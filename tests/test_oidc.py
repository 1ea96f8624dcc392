"""Single sign-on end to end: a real usertrail server and a local OIDC provider (tests/oidc_provider.py),
both on 127.0.0.1, with httpx following the redirects like a browser, on both engines; and once in Debian's
Chromium from the login page's link."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, expect

from oidc_provider import Provider

from admin_pages import Watcher
from conftest import CHROME_UA, LiveServer


@pytest.fixture
def sso(make_server, provider: Provider) -> LiveServer:
    return make_server(
        oidc_issuer=provider.url,
        oidc_client_id=provider.client_id,
        oidc_client_secret=provider.client_secret,
        oidc_allowed_domains=("example.com",),
        oidc_default_role="viewer",
        oidc_default_project=1,  # the project make_server creates in the fresh database
    )


def sign_in(client: httpx.Client, next_path: str = "/api/auth/me") -> httpx.Response:
    return client.get(f"/api/auth/oidc/login?next={next_path}", follow_redirects=True)


def test_sign_in_creates_then_reuses_the_account(sso: LiveServer, provider: Provider):
    pid = sso.project.project.id
    with sso.client() as browser:
        landed = sign_in(browser)
        assert landed.status_code == 200, landed.text
        assert str(landed.url).endswith("/api/auth/me")
        me = landed.json()
        assert me["account"]["email"] == "sso.user@example.com" and me["account"]["single_sign_on"] is True
        assert me["account"]["display_name"] == "Sso User"
        assert [(p["id"], p["role"]) for p in me["projects"]] == [(pid, "viewer")]
        # The round trip used PKCE and a nonce, and the state cookie is gone afterwards.
        sent = provider.authorize_requests[-1]
        assert sent["code_challenge_method"] == "S256" and len(sent["nonce"]) >= 32
        assert "usertrail_oidc_state" not in browser.cookies
        assert browser.get(f"/api/projects/{pid}/stats").status_code == 200
        # A signed-in SSO account changes things with the CSRF token like any other.
        denied = browser.patch(f"/api/projects/{pid}/environments/production", json={})
        assert denied.status_code == 403 and denied.json()["error"] == "csrf_failed"
        # The callback cannot be replayed: its state was used.
        callback = next(r for r in landed.history if r.url.path == "/api/auth/oidc/callback")
        replay = browser.get(str(callback.url))
        assert replay.status_code == 400  # its state cookie is gone with it
    with sso.client() as browser:
        assert sign_in(browser).status_code == 200
    assert sso.scalar("SELECT count(*) FROM accounts") == 1
    assert sso.scalar("SELECT password_hash FROM accounts") is None
    assert sso.scalar("SELECT count(*) FROM oidc_states") == 0


def test_existing_account_is_linked_by_email(sso: LiveServer):
    store = sso.app.state.accounts
    account = store.create("SSO.User@example.com", "Old Name", "correct horse battery staple")
    store.set_role(account.id, sso.project.project.id, "analyst")
    with sso.client() as browser:
        me = sign_in(browser).json()
    assert me["account"]["id"] == account.id and me["projects"][0]["role"] == "analyst"
    assert sso.scalar("SELECT oidc_subject FROM accounts") == "user-1"


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ({"sign_with_rogue_key": True}, "does not verify"),
        ({"nonce": "not-the-nonce"}, "nonce"),
        ({"aud": "another-client"}, "aud"),
        ({"iss": "http://127.0.0.1:1"}, "iss"),
        ({"exp": 1_000_000_000}, "expired"),
    ],
)
def test_bad_id_tokens_are_refused(sso: LiveServer, provider: Provider, tamper: dict, reason: str):
    provider.tamper = tamper
    with sso.client() as browser:
        refused = sign_in(browser)
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"] == "sso_failed" and reason in refused.json()["reason"]
        assert "usertrail_session" not in browser.cookies
        assert browser.get("/api/auth/me").status_code == 401
    assert sso.scalar("SELECT count(*) FROM accounts") == 0


def test_who_may_sign_in(sso: LiveServer, provider: Provider):
    provider.user = {**provider.user, "email": "someone@elsewhere.org"}
    with sso.client() as browser:
        refused = sign_in(browser)
    assert refused.status_code == 401 and "elsewhere.org" in refused.json()["reason"]
    provider.user = {**provider.user, "email": "unverified@example.com", "email_verified": False}
    with sso.client() as browser:
        assert "not verified" in sign_in(browser).json()["reason"]
    provider.user = {**provider.user, "email": "gone@example.com", "email_verified": True}
    with sso.client() as browser:
        assert sign_in(browser).status_code == 200
    account = sso.app.state.accounts.by_email("gone@example.com")
    sso.app.state.accounts.set_disabled(account.id, True)
    with sso.client() as browser:
        assert "disabled" in sign_in(browser).json()["reason"]


def test_callback_from_another_browser_and_open_redirects_are_refused(sso: LiveServer):
    with sso.client() as victim:
        to_provider = victim.get("/api/auth/oidc/login?next=https://evil.example/")
        assert to_provider.status_code == 302
        at_provider = victim.get(to_provider.headers["location"])
        callback = at_provider.headers["location"]
    # Another browser (no state cookie) cannot complete this round trip.
    with sso.client() as attacker:
        refused = attacker.get(callback)
        assert refused.status_code == 400 and refused.json()["path"] == "state"
    # An absolute `next` was replaced by the default landing page.
    state = parse_qs(urlsplit(callback).query)["state"][0]
    with sso.client(cookies={"usertrail_oidc_state": state}) as same_browser:
        finished = same_browser.get(callback)
    assert finished.status_code == 303 and finished.headers["location"] == "/api/auth/me"


def test_without_configuration_sso_answers_404(live: LiveServer):
    with live.client() as browser:
        response = browser.get("/api/auth/oidc/login")
    assert response.status_code == 404 and response.json()["error"] == "sso_not_configured"


# The browser round trip uses the same routes as the tests above, which run on both engines.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_single_sign_on_from_the_login_page_in_a_browser(sso: LiveServer, provider: Provider, browser: Browser):
    pid = sso.project.project.id
    context = browser.new_context(user_agent=CHROME_UA)
    watcher = Watcher(origin=sso.base_url)
    page = watcher.attach(context.new_page())
    page.goto(f"{sso.base_url}/app/login")
    page.get_by_role("link", name="Sign in with single sign-on").click()
    page.wait_for_url(f"{sso.base_url}/app/projects/{pid}/**")
    expect(page.locator("header")).to_contain_text("sso.user@example.com")
    expect(page.locator("h1")).to_have_text("Overview")
    assert "usertrail_session" in {c["name"] for c in context.cookies()}
    assert provider.authorize_requests[-1]["redirect_uri"] == f"{sso.base_url}/api/auth/oidc/callback"
    # The identity provider's sign-in page is the only other origin the browser went to.
    elsewhere = [p for p in watcher.problems if not p.startswith(f"third-party request: {provider.url}/authorize?")]
    assert elsewhere == []
    context.close()
