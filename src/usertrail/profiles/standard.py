"""Standard attributes of the End User Object, computed from a user's closed, non-empty sessions."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

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


def compute_columns(
    users: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    located: Mapping[str, np.ndarray],
    vars_code: np.ndarray,
    vars_values: Sequence[dict],
) -> tuple[np.ndarray, dict[str, list]]:
    """`compute` for many users at once, column-wise: the same attributes by the same definitions.

    In: one entry per closed, non-empty session, grouped by user (`users`: any integer code per user)
    and in start order within a user; `located` holds the session's country, region, city, browser and
    browser_version columns; `vars_code` indexes `vars_values` (-1: no analytics properties). Out: the
    users that have an End User Object, in input order, and per attribute (StandardAttributes' field
    names; `browser` and `browser_version` for the browser) a list in that order.
    """
    n = len(users)
    if not n:
        return users[:0], {name: [] for name in (*_ATTRIBUTE_FIELDS, *located)}
    firsts = np.flatnonzero(np.append(True, users[1:] != users[:-1]))
    lasts = np.append(firsts[1:], n) - 1
    count = lasts - firsts + 1
    total = np.add.reduceat(end - start, firsts)
    # The gaps' sum telescopes: the starts after each user's first, less the ends before their last.
    gaps = (np.add.reduceat(start, firsts) - start[firsts]) - (np.add.reduceat(end, firsts) - end[lasts])
    with np.errstate(divide="ignore", invalid="ignore"):
        between = np.where(count > 1, gaps / np.maximum(count - 1, 1), np.nan)
    properties: list[dict] = [{}] * len(firsts)
    carrying = np.flatnonzero(np.maximum.reduceat(vars_code, firsts) >= 0)
    for u in carrying.tolist():  # the most recent value of each analytics property wins
        merged: dict = {}
        for code in vars_code[firsts[u] : lasts[u] + 1].tolist():
            if code >= 0:
                merged.update(vars_values[code])
        properties[u] = merged
    attributes = {
        "first_seen": start[firsts].tolist(),
        "last_seen": end[lasts].tolist(),
        "total_sessions": count.tolist(),
        "average_session_duration": (total / count).tolist(),
        "total_session_duration": total.tolist(),
        "average_time_between_sessions": [None if b != b else b for b in between.tolist()],
        **{name: values[lasts].tolist() for name, values in located.items()},
        "analytics_properties": properties,
    }
    return users[firsts], attributes


_ATTRIBUTE_FIELDS = (
    "first_seen",
    "last_seen",
    "total_sessions",
    "average_session_duration",
    "total_session_duration",
    "average_time_between_sessions",
    "analytics_properties",
)
