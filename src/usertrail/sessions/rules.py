"""The session rule, as pure functions shared by incremental processing and the full rebuild.

A session is one end user's run of events: it ends after 30 minutes without an event, or when it
has lasted 12 hours (the next event then starts a new session). Events are ordered by
(event time, event id), so the same events always give the same sessions, whatever order they
arrived in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec

IDLE_MS = 30 * 60 * 1000
MAX_SESSION_MS = 12 * 60 * 60 * 1000

# Events that show the app was open but not that the user did anything: page loads, heartbeats,
# idleness, WalkMe items appearing, identification calls. See docs/sessions.md.
PASSIVE_TYPES = frozenset(
    {"page", "pageChange", "pageView", "pageview", "sessionPing", "idle", "loaded", "visible", "draw", "identify"}
)
PAGE_TYPES = frozenset({"page", "pageChange", "pageView", "pageview"})


@dataclass(frozen=True)
class EventPoint:
    """What the session rule needs of one stored event."""

    ts: int
    event_id: str
    type: str
    session_hint: str | None = None
    url_path: str | None = None
    country: str | None = None
    region: str | None = None
    city: str | None = None
    browser: str | None = None
    browser_version: str | None = None
    os: str | None = None
    device_type: str | None = None
    user_vars: str | None = None  # JSON of the analytics properties the event carried


@dataclass
class Session:
    start: int
    end: int
    events: int = 0
    interactions: int = 0
    page_views: int = 0
    hints: list[str] = field(default_factory=list)
    entry_path: str | None = None
    exit_path: str | None = None
    country: str | None = None
    region: str | None = None
    city: str | None = None
    browser: str | None = None
    browser_version: str | None = None
    os: str | None = None
    device_type: str | None = None
    user_vars: dict = field(default_factory=dict)

    @property
    def duration(self) -> int:
        return self.end - self.start

    @property
    def is_empty(self) -> bool:
        """No interaction: only passive events, and at most one page view (navigating is interacting)."""
        return self.interactions == 0 and self.page_views <= 1

    def add(self, e: EventPoint) -> None:
        self.end = e.ts
        self.events += 1
        if e.type in PAGE_TYPES:
            self.page_views += 1
        elif e.type not in PASSIVE_TYPES:
            self.interactions += 1
        if e.session_hint and e.session_hint not in self.hints:
            self.hints.append(e.session_hint)
        if e.url_path:
            self.entry_path = self.entry_path or e.url_path
            self.exit_path = e.url_path
        # Location and browser: those of the latest event that has them.
        if e.country:
            self.country, self.region, self.city = e.country, e.region, e.city
        if e.browser:
            self.browser, self.browser_version = e.browser, e.browser_version
        if e.os:
            self.os = e.os
        if e.device_type:
            self.device_type = e.device_type
        if e.user_vars:
            self.user_vars.update(msgspec.json.decode(e.user_vars))


def sort_key(e: EventPoint) -> tuple[int, str]:
    return (e.ts, e.event_id)


def sessionize(events: Iterable[EventPoint]) -> list[Session]:
    """Split one end user's events (any order) into sessions."""
    sessions: list[Session] = []
    current: Session | None = None
    last_ts = 0
    for e in sorted(events, key=sort_key):
        if current is None or e.ts - last_ts >= IDLE_MS or e.ts - current.start >= MAX_SESSION_MS:
            current = Session(start=e.ts, end=e.ts)
            sessions.append(current)
        current.add(e)
        last_ts = e.ts
    return sessions


def is_closable(session: Session, is_last: bool, now: int) -> bool:
    """Closed once 30 minutes pass without an event, or as soon as a later session has begun."""
    return not is_last or now - session.end >= IDLE_MS
