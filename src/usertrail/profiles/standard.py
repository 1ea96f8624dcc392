"""Standard attributes of the End User Object, computed from a user's closed, non-empty sessions."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# The attribute names exactly as WalkMe documents them (case-sensitive).
FIRST_SEEN = "First seen"
LAST_SEEN = "Last seen"
TOTAL_SESSIONS = "Total sessions"
AVERAGE_SESSION_DURATION = "Average session duration"
TOTAL_SESSION_DURATION = "Total session duration"
AVERAGE_TIME_BETWEEN_SESSIONS = "Average time between sessions"
COUNTRY = "Country"
REGION = "Region/State"
CITY = "City"
BROWSER_NAME = "Browser Name"
BROWSER_VERSION = "Browser Version"

STANDARD_ATTRIBUTES = (
    FIRST_SEEN,
    LAST_SEEN,
    TOTAL_SESSIONS,
    AVERAGE_SESSION_DURATION,
    TOTAL_SESSION_DURATION,
    AVERAGE_TIME_BETWEEN_SESSIONS,
    COUNTRY,
    REGION,
    CITY,
    BROWSER_NAME,
    BROWSER_VERSION,
)


class SessionFacts(Protocol):
    """What the standard attributes read of a closed session (`ClosedSession`, or the session rule's own
    `sessions.rules.Session`)."""

    @property
    def start(self) -> int: ...
    @property
    def end(self) -> int: ...
    @property
    def country(self) -> str | None: ...
    @property
    def region(self) -> str | None: ...
    @property
    def city(self) -> str | None: ...
    @property
    def browser(self) -> str | None: ...
    @property
    def browser_version(self) -> str | None: ...
    @property
    def user_vars(self) -> dict | None: ...


@dataclass(frozen=True)
class ClosedSession:
    """The parts of a closed session that the standard attributes read, as stored."""

    start: int
    end: int
    country: str | None
    region: str | None
    city: str | None
    browser: str | None
    browser_version: str | None
    user_vars: dict | None = None


@dataclass(frozen=True)
class StandardAttributes:
    first_seen: int
    last_seen: int
    total_sessions: int
    average_session_duration: float
    total_session_duration: int
    average_time_between_sessions: float | None
    country: str | None
    region: str | None
    city: str | None
    browser_name: str | None
    browser_version: str | None
    analytics_properties: dict

    def by_name(self) -> dict[str, object]:
        """The attributes under their documented names."""
        return {
            FIRST_SEEN: self.first_seen,
            LAST_SEEN: self.last_seen,
            TOTAL_SESSIONS: self.total_sessions,
            AVERAGE_SESSION_DURATION: self.average_session_duration,
            TOTAL_SESSION_DURATION: self.total_session_duration,
            AVERAGE_TIME_BETWEEN_SESSIONS: self.average_time_between_sessions,
            COUNTRY: self.country,
            REGION: self.region,
            CITY: self.city,
            BROWSER_NAME: self.browser_name,
            BROWSER_VERSION: self.browser_version,
        }


def compute(sessions: Sequence[SessionFacts]) -> StandardAttributes | None:
    """The attributes, or None before the user's first (non-empty) session has closed.

    Durations are in milliseconds. The time between sessions is the mean gap from one session's
    end to the next one's start. Location and browser come from the most recent session.
    """
    if not sessions:
        return None
    ordered = sorted(sessions, key=lambda s: s.start)
    total = sum(s.end - s.start for s in ordered)
    gaps = [b.start - a.end for a, b in itertools.pairwise(ordered)]
    last = ordered[-1]
    properties: dict = {}
    for s in ordered:  # the most recent value of each analytics property wins
        properties.update(s.user_vars or {})
    return StandardAttributes(
        first_seen=ordered[0].start,
        last_seen=last.end,
        total_sessions=len(ordered),
        average_session_duration=total / len(ordered),
        total_session_duration=total,
        average_time_between_sessions=sum(gaps) / len(gaps) if gaps else None,
        country=last.country,
        region=last.region,
        city=last.city,
        browser_name=last.browser,
        browser_version=last.browser_version,
        analytics_properties=properties,
    )
