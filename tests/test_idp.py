"""End users identified by their identity provider (UUID provider `idp`, enrich/idp.py), end to end: a real
usertrail server and a local OpenID Connect provider (tests/oidc_provider.py), both on 127.0.0.1, on both
engines; and once in Debian's Chromium, with the snippet reading the page's ID token."""

from __future__ import annotations

import json

import pytest

from oidc_provider import Provider
from test_collect_api import native, patch_env, tell
from usertrail.collect.pipeline import hash_identifier
from usertrail.web.snippet import snippet_tag

from browser import wait_until
from conftest import LiveServer
from samples import now_ms, walkme_event

EMAIL = "sso.user@example.com"  # the provider's user (Provider.user)


@pytest.fixture
def idp_live(live: LiveServer, provider: Provider) -> LiveServer:
    patch_env(live, {"uuid": {"provider": "idp", "issuer": provider.url, "audience": "app", "claim": "email"}})
    return live


def message(token: str | None = None, **fields) -> dict:
    body = {"type": "track", "event": "Opened report", "anonymousId": "anon-1", "timestamp": now_ms() - 1_000}
    if token is not None:
        body["context"] = {"idToken": token}
    return body | fields


def stored(live: LiveServer) -> list:
    return live.rows("SELECT user_key, user_id, anon_id, id_source, payload FROM events ORDER BY ts, event_id")


def test_a_verified_token_identifies_and_is_never_stored(idp_live: LiveServer, provider: Provider):
    token = provider.id_token(audience="app")
    # The page also claims another id: only the token counts.
    assert native(idp_live, [message(token, userId="mallory@example.com")]).status_code == 200
    [row] = stored(idp_live)
    assert (row.user_key, row.user_id, row.anon_id, row.id_source) == (f"u:{EMAIL}", EMAIL, "anon-1", "idp")
    payload = json.loads(row.payload)
    assert payload["userId"] == EMAIL and "idToken" not in payload.get("context", {})
    assert token not in row.payload and "mallory" not in row.payload
    # The next request with the same token is answered from the cache, and hashing applies to the proven id.
    patch_env(idp_live, {"uuid": {"hash": True, "salt": "pepper"}})
    assert native(idp_live, [message(token, anonymousId="anon-2")]).status_code == 200
    hashed = hash_identifier(EMAIL, "pepper")
    assert stored(idp_live)[-1].user_key == f"u:{hashed}"


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda p: p.id_token(audience="app", key=p.rogue_key), id="signed-by-another-key"),
        pytest.param(lambda p: p.id_token(audience="another-app"), id="other-audience"),
        pytest.param(lambda p: p.id_token(audience="app", iss="https://evil.example"), id="other-issuer"),
        pytest.param(lambda p: p.id_token(audience="app", email=None), id="without-the-claim"),
        pytest.param(
            lambda p: p.id_token(audience="app", exp=int(now_ms() / 1000) - 600), id="expired-before-the-event"
        ),
        pytest.param(lambda p: "not.a.token", id="not-a-jwt"),
        pytest.param(lambda p: None, id="no-token"),
    ],
)
def test_without_a_valid_token_the_user_stays_anonymous(idp_live: LiveServer, provider: Provider, make_token):
    assert native(idp_live, [message(make_token(provider), userId="mallory@example.com")]).status_code == 200
    [row] = stored(idp_live)
    assert (row.user_key, row.user_id, row.anon_id, row.id_source) == ("a:anon-1", None, "anon-1", "anonymous_fallback")
    assert "userId" not in json.loads(row.payload) and "mallory" not in row.payload
    assert "idToken" not in row.payload


def test_a_claimed_id_without_anonymous_id_becomes_an_opaque_one(idp_live: LiveServer):
    assert native(idp_live, [{"type": "track", "event": "x", "userId": "mallory@example.com"}]).status_code == 200
    [row] = stored(idp_live)
    opaque = hash_identifier("mallory@example.com", "")
    assert (row.user_key, row.user_id, row.id_source) == (f"a:{opaque}", None, "anonymous_fallback")


def test_events_queued_while_the_token_was_valid_are_identified_later(idp_live: LiveServer, provider: Provider):
    issued = int(now_ms() / 1000) - 3_600
    token = provider.id_token(audience="app", iat=issued, exp=issued + 300)
    during, after = (issued + 200) * 1000, (issued + 900) * 1000
    batch = [message(token, timestamp=during, messageId="m1"), message(token, timestamp=after, messageId="m2")]
    assert native(idp_live, batch, sentAt=now_ms()).status_code == 200
    assert [r.user_key for r in stored(idp_live)] == [f"u:{EMAIL}", "a:anon-1"]


def test_tokens_signed_after_the_provider_rotates_its_keys(idp_live: LiveServer, provider: Provider):
    assert native(idp_live, [message(provider.id_token(audience="app"), messageId="before")]).status_code == 200
    provider.rotate_keys()  # the server has the old keys cached: an unknown key id makes it fetch them again
    assert native(idp_live, [message(provider.id_token(audience="app"), messageId="after")]).status_code == 200
    assert [r.id_source for r in stored(idp_live)] == ["idp", "idp"]


def test_idp_settings_are_checked(live: LiveServer, provider: Provider):
    pid = live.project.project.id
    cases = [
        ({"provider": "idp", "issuer": "http://login.example.com", "audience": "app"}, "$.uuid.issuer"),
        ({"provider": "idp", "issuer": provider.url}, "$.uuid.audience"),
        ({"provider": "idp", "issuer": provider.url, "audience": "app", "claim": ""}, "$.uuid.claim"),
    ]
    with live.admin() as admin:
        for uuid, path in cases:
            answer = admin.patch(f"/api/projects/{pid}/environments/production", json={"uuid": uuid})
            assert answer.status_code == 400 and answer.json()["path"] == path, answer.text


def test_without_an_issuer_only_walkme_events_are_identified(live: LiveServer, provider: Provider):
    """WalkMe's recorder resolves its IDP id itself (`wm.euId`); a native event has nothing to verify."""
    patch_env(live, {"uuid": {"provider": "idp"}})
    recorder = walkme_event(time=now_ms() - 2_000, wm_euId="kim@example.com", wm_euIdSource="IDP")
    assert tell(live, [recorder]).status_code == 200
    token = provider.id_token(audience="app")
    assert native(live, [message(token, userId="mallory@example.com")]).status_code == 200
    assert [(r.user_key, r.id_source) for r in stored(live)] == [
        ("u:kim@example.com", "idp"),
        ("a:anon-1", "anonymous_fallback"),
    ]


def test_the_snippet_sends_the_pages_id_token(idp_live: LiveServer, provider: Provider, site, context):
    token = provider.id_token(audience="app")
    patch_env(idp_live, {"allowed_origins": [site.origin], "uuid": {"source": "auth.idToken"}})
    site.pages["/app"] = (
        '<!doctype html><html><head><meta charset="utf-8"><title>App</title></head><body>'
        f'<script>window.auth = {{idToken: "{token}"}};</script>'
        f"{snippet_tag(idp_live.base_url, idp_live.project.write_key)}"
        "</body></html>"
    )
    context.new_page().goto(site.url("/app"))  # the snippet sends the page view once it has the settings
    rows = wait_until(lambda: stored(idp_live) or None, "the page view", timeout=30)
    assert [(r.user_key, r.id_source) for r in rows] == [(f"u:{EMAIL}", "idp")]
    assert token not in rows[0].payload
