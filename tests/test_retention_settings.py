"""Per-project retention periods on both engines: the API (defaults, set, reset, refusals by path) and
`usertrail retention` applying a project's own period instead of the installation's."""

from __future__ import annotations

import pytest

from cli_runner import run_cli
from test_users_api import api, enable_uuid, send, user_events

from conftest import LiveServer
from samples import now_ms

DAY = 86_400_000


def retention(live: LiveServer, body: dict | None = None):
    with live.admin() as admin:
        path = f"/api/projects/{live.project.project.id}/retention"
        return admin.get(path) if body is None else admin.put(path, json=body)


def test_periods_default_to_the_installation_and_can_be_set_and_reset(live: LiveServer):
    answer = retention(live)
    assert answer.status_code == 200
    assert answer.json() == {
        "user_days": None,
        "playback_days": None,
        "defaults": {"user_days": 183, "playback_days": 365},
        "effective": {"user_days": 183, "playback_days": 365},
    }
    set_ = retention(live, {"user_days": 30})
    assert set_.status_code == 200, set_.text
    assert set_.json()["effective"] == {"user_days": 30, "playback_days": 365}
    assert retention(live, {"playback_days": 90}).json()["effective"] == {"user_days": 30, "playback_days": 90}
    assert retention(live).json()["user_days"] == 30  # a field left out keeps its value
    reset = retention(live, {"user_days": None}).json()
    assert (reset["user_days"], reset["effective"]["user_days"], reset["playback_days"]) == (None, 183, 90)


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"user_days": 0}, "$.user_days"),
        ({"user_days": 3651}, "$.user_days"),
        ({"playback_days": "30"}, "$.playback_days"),
        ({"playback_days": True}, "$.playback_days"),
        ({"user_days": 30, "events_days": 5}, "$.events_days"),
    ],
)
def test_bad_periods_are_refused_by_path_and_change_nothing(live: LiveServer, body: dict, path: str):
    answer = retention(live, body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["path"] == path
    assert retention(live).json()["user_days"] is None


def test_viewer_may_read_but_not_set(live: LiveServer):
    from replay_helpers import PASSWORD, add_account

    add_account(live, "vic@example.com", "viewer")
    with live.client() as client:
        signed = client.post("/api/auth/login", json={"email": "vic@example.com", "password": PASSWORD})
        assert signed.status_code == 200, signed.text
        path = f"/api/projects/{live.project.project.id}/retention"
        assert client.get(path).status_code == 200
        csrf = client.cookies.get("usertrail_csrf")
        refused = client.put(path, json={"user_days": 10}, headers={"X-CSRF-Token": csrf})
        assert refused.status_code == 403, refused.text


def test_retention_command_uses_the_projects_own_period(make_server):
    live = make_server(process_sessions=False)
    enable_uuid(live)
    send(live, user_events("month-ago", now_ms() - 40 * DAY, 3))
    send(live, user_events("recent", now_ms() - 2 * DAY, 3))
    live.app.state.sessions.run(now_ms())
    env = {"USERTRAIL_DATABASE_URL": live.settings.resolved_database_url}

    def run(*args: str) -> str:
        return run_cli("retention", *args, env=env, check=True).stdout

    assert "0 end users would be deleted" in run("--dry-run")  # the default: 183 days
    assert retention(live, {"user_days": 30}).status_code == 200
    dry = run("--dry-run")
    assert "its own period" in dry and "u:month-ago" in dry and "u:recent" not in dry
    assert "1 end users were deleted" in run()
    assert api(live, "/users/u:month-ago").status_code == 404
    assert api(live, "/users/u:recent").status_code == 200
