"""Shared by the replay tests: accounts that sign in, recordings stored through the real chunk API."""

from __future__ import annotations

import argon2

from usertrail.testing.recordings import chunks_of

from conftest import LiveServer
from playback_helpers import enable_playback, send_chunk, start

PASSWORD = "correct horse battery staple"
# Still argon2id, with a small cost: this 2-core machine is shared and the defaults take ~1 s per hash here.
CHEAP_ARGON2 = argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)


def add_account(live: LiveServer, email: str, role: str | None) -> None:
    store = live.app.state.accounts
    store.hasher = CHEAP_ARGON2
    account = store.create(email, None, PASSWORD)
    if role:
        store.set_role(account.id, live.project.project.id, role)


def store_recording(
    live: LiveServer, events: list[dict], anonymous_id: str = "anon-1", user_id: str | None = None
) -> str:
    """A recording started for `anonymous_id` (signed in as `user_id`, if given) and filled with `events` in
    5-s chunks; its id."""
    enable_playback(live)
    identified = {"userId": user_id} if user_id else {}
    answer = start(live, anonymousId=anonymous_id, sessionId=f"s-{anonymous_id}", **identified)
    assert answer["record"] is True, answer
    for seq, chunk in enumerate(chunks_of(events)):
        response = send_chunk(live, answer["token"], seq, chunk)
        assert response.status_code == 200, response.text
    return answer["recording_id"]
