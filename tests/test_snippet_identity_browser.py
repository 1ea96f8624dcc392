"""End-user identification by the browser snippet, per UUID provider, in a real Chromium.

A customer page (served from another origin) carries the id where the environment's UUID settings say
it lives: a cookie, an element's text, a window variable. The snippet reads it (`configuredUserId`) into
every event it queues (`enqueue`), and the server stores it as the end user's key, hashed when the
settings say so. Providers `none` and `walkme_id` keep the visitor anonymous even when the page holds
an id, and a provider whose id is missing from the page falls back to the snippet's anonymous id.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from urllib.parse import quote

import pytest

from test_collect_api import patch_env
from usertrail.web.snippet import snippet_tag

from browser import wait_until
from conftest import LiveServer

# The storage engines are covered elsewhere: here the browser, the snippet and the wire are under test.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

EVENT_COLUMNS = "type, name, anon_id, user_key, user_id, id_source, payload"
USER_EMAIL = "jane@example.com"

# The signed-in user, in each place a provider can read it from. The decoy cookies come first in
# `document.cookie`: a cookie name matched as a regular expression or without its boundary would read them.
ID_COOKIE = (
    "<script>"
    'document.cookie = "xapp.user=decoy-1; path=/";'
    'document.cookie = "app_user=decoy-2; path=/";'
    f'document.cookie = "app.user=" + encodeURIComponent("{USER_EMAIL}") + "; path=/";'
    "</script>"
)
DECOY_COOKIES = '<script>document.cookie = "xapp.user=decoy-1; path=/";</script>'
ID_ELEMENT = f'<div id="account">Signed in as <span data-role="user-id">\n  {USER_EMAIL}\n</span></div>'
ID_VARIABLE = f'<script>window.currentUser = {{id: 4711, email: "{USER_EMAIL}"}};</script>'
EVERY_ID = ID_COOKIE + ID_ELEMENT + ID_VARIABLE


@dataclass(frozen=True)
class Case:
    uuid: dict  # the environment's UUID settings
    page: str  # what the customer page holds ahead of the snippet
    user_id: str | None  # the identified id stored, None for an anonymous visitor
    id_source: str


def walkme_hash(value: str, salt: str) -> str:
    """The documented rule, computed independently: SHA-256 of salt + value, base64 without padding."""
    return base64.b64encode(hashlib.sha256((salt + value).encode()).digest()).decode().rstrip("=")


SALT = "pepper-17"
CASES = {
    "cookie": Case({"provider": "cookie", "source": "app.user"}, ID_COOKIE, USER_EMAIL, "cookie"),
    "selector": Case(
        {"provider": "selector", "source": "#account [data-role=user-id]"}, ID_ELEMENT, USER_EMAIL, "selector"
    ),
    "variable": Case({"provider": "variable", "source": "currentUser.id"}, ID_VARIABLE, "4711", "variable"),
    "variable-hashed": Case(
        {"provider": "variable", "source": "currentUser.email", "hash": True, "salt": SALT},
        ID_VARIABLE,
        walkme_hash(USER_EMAIL, SALT),
        "variable",
    ),
    "none": Case({"provider": "none", "source": "currentUser.email"}, EVERY_ID, None, "anonymous"),
    "walkme_id": Case({"provider": "walkme_id", "source": "app.user"}, EVERY_ID, None, "walkme_id"),
    # The settings name a cookie the page does not have (though it has the id elsewhere).
    "cookie-missing": Case(
        {"provider": "cookie", "source": "app.user"},
        DECOY_COOKIES + ID_ELEMENT + ID_VARIABLE,
        None,
        "anonymous_fallback",
    ),
}


# Base64 has `/` among its digits: about half of all hashed ids contain one (this salt's does), and the
# admin API must still find the user by a key sent with `%2F` (web/paths.py).
SLASH_SALT = "salt-5"
SLASHED = pytest.param(
    Case(
        {"provider": "variable", "source": "currentUser.email", "hash": True, "salt": SLASH_SALT},
        ID_VARIABLE,
        walkme_hash(USER_EMAIL, SLASH_SALT),
        "variable",
    ),
    id="variable-hashed-with-slash",
)


def identity_page(live: LiveServer, content: str) -> str:
    """A customer page whose tag follows `content`: the id is in the document before the snippet runs."""
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>Account</title></head>'
        f"<body>{content}{snippet_tag(live.base_url, live.project.write_key)}</body></html>"
    )


def at_least(count: int, rows: list) -> list | None:
    return rows if len(rows) >= count else None


def stored(live: LiveServer, count: int, what: str) -> list:
    """Wait (generously) until `count` events are stored, and return exactly those."""
    query = f"SELECT {EVENT_COLUMNS} FROM events ORDER BY ts, event_id"
    rows = wait_until(lambda: at_least(count, live.rows(query)), what, timeout=30)
    assert len(rows) == count, rows
    return rows


@pytest.mark.parametrize("case", [*(pytest.param(c, id=k) for k, c in CASES.items()), SLASHED])
def test_snippet_identifies_the_user_as_the_uuid_settings_say(live, site, page, case):
    patch_env(live, {"allowed_origins": [site.origin], "uuid": case.uuid})
    site.pages["/account"] = identity_page(live, case.page)
    page.goto(site.url("/account"))
    stored(live, 1, "the page view, sent once the snippet has the settings")
    page.evaluate("usertrail.track('Viewed account'); usertrail.flush()")
    rows = stored(live, 2, "the custom event")

    anonymous_id = page.evaluate("usertrail.anonymousId()")
    expected_key = "u:" + case.user_id if case.user_id is not None else "a:" + anonymous_id
    if case.uuid.get("salt") == SLASH_SALT:
        assert "/" in expected_key
    assert sorted((r.type, r.name) for r in rows) == [("page", "Account"), ("track", "Viewed account")]
    assert {(r.user_key, r.user_id, r.id_source, r.anon_id) for r in rows} == {
        (expected_key, case.user_id, case.id_source, anonymous_id)
    }
    # What the stored events say of the user, as the snippet sent it (or as the server hashed it).
    assert {json.loads(r.payload).get("userId") for r in rows} == {case.user_id}
    if case.user_id != USER_EMAIL:  # anonymous or hashed: the page's identifier is kept nowhere
        assert not [r for r in rows if USER_EMAIL in r.payload or USER_EMAIL in r.user_key]
    if case.uuid["provider"] != "none":  # with `none` the project has no end users to ask about (409)
        with live.admin() as admin:
            response = admin.get(f"/api/projects/{live.project.project.id}/users/{quote(expected_key, safe='')}/events")
        assert response.status_code == 200, response.text
        timeline = response.json()["events"]
        assert sorted((e["type"], e["user_key"]) for e in timeline) == [("page", expected_key), ("track", expected_key)]
