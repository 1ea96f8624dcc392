"""Who is recorded: the checks the server runs when a session starts (docs/playback.md).

The order is the order of the checks below; the first that fails is the answer's `reason`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

import msgspec
import sqlalchemy as sa

from usertrail.collect.pipeline import identity_for
from usertrail.collect.traffic import domain_matches, ip_matches, user_agent_matches
from usertrail.enrich.useragent import Agent
from usertrail.project_settings import EnvironmentSettings, TrackingLevel, UuidSettings
from usertrail.segments.evaluate import compile_tree, load_facts
from usertrail.segments.membership import catalog_of
from usertrail.segments.model import parse
from usertrail.store.identity import owner_of
from usertrail.store.schema import segments


class NotRecorded(StrEnum):
    """Why a session is not recorded."""

    TRACKING_LEVEL = "tracking_level"  # the environment does not collect at the playback level
    UNSUPPORTED_BROWSER = "unsupported_browser"  # not a desktop browser that can run the recorder
    EXCLUDED_USER_AGENT = "excluded_user_agent"
    EXCLUDED_IP = "excluded_ip"
    EXCLUDED_DOMAIN = "excluded_domain"
    MANUAL = "manual"  # manual method: waits for usertrail.startPlaybackRecording()
    NO_SEGMENT = "no_segment"  # neither global capture nor any segment chosen
    NOT_IN_SEGMENT = "not_in_segment"
    QUOTA_REACHED = "quota_reached"


# ua-parser's family names of the supported desktop browsers, with the lowest (major, minor) version that
# can run the recorder. The spec asks for "Safari >= 8", but rrweb 2.1.6's bundle calls `globalThis`
# while it records (Chrome 71, Firefox 65, Safari 12.1, Chromium-based Edge 79) and uses async functions
# and Object.entries (Safari 10.1); the snippet needs `fetch` (Safari 10.1). An older browser would be
# counted against the quota and record nothing, so the server does not choose it (docs/playback.md).
SUPPORTED_BROWSERS = {
    "Chrome": (71, 0),
    "Chromium": (71, 0),
    "Edge": (79, 0),
    "Firefox": (65, 0),
    "Safari": (12, 1),
}


def supported_browser(agent: Agent) -> bool:
    """A desktop browser (no mobile, tablet or bot) recent enough to run the recorder (SUPPORTED_BROWSERS)."""
    if agent.is_bot or agent.device_type != "desktop" or agent.browser not in SUPPORTED_BROWSERS:
        return False
    parts = (agent.browser_version or "0").split(".")[:2]
    if not all(part.isdigit() for part in parts):
        return False
    version = (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0)
    return version >= SUPPORTED_BROWSERS[agent.browser]


def user_in_segments(conn: sa.Connection, project_id: int, user_key: str, segment_ids: list[str]) -> bool:
    """Whether the end user is in any of the saved segments, evaluated on their stored End User
    Object (so a user whose first session has not closed yet is in none)."""
    rows = conn.execute(
        sa.select(segments.c.rules).where(segments.c.project_id == project_id, segments.c.id.in_(segment_ids))
    ).all()
    if not rows:
        return False
    catalog = catalog_of(conn, project_id)
    trees = [parse(msgspec.json.decode(r.rules), catalog, "$.rules") for r in rows]
    now = int(time.time() * 1000)
    facts = load_facts(conn, project_id, owner_of(conn, project_id, user_key), trees, now)
    return any(compile_tree(tree)(facts, now) is True for tree in trees)


def user_key_for(uuid: UuidSettings, anonymous_id: str, user_id: str | None) -> str:
    """The end-user key events of the same visitor get (collect/pipeline.py: identity_for)."""
    return identity_for(uuid, user_id, anonymous_id)[2]


@dataclass(frozen=True)
class Visit:
    """What the server knows about the page asking to be recorded."""

    ip: str
    agent: Agent
    user_agent: str
    url: str | None  # None: not known (a chunk without page URL or Origin); the domain is not checked


def excluded(settings: EnvironmentSettings, visit: Visit) -> NotRecorded | None:
    """The checks that hold for every page of a recording: level, browser, IP, domain.

    The environment's collection exclusions (traffic rules) apply as well as playback's own.
    """
    if settings.tracking_level != TrackingLevel.PLAYBACK:
        return NotRecorded.TRACKING_LEVEL
    if not supported_browser(visit.agent):
        return NotRecorded.UNSUPPORTED_BROWSER
    if any(user_agent_matches(visit.user_agent, p) for p in settings.traffic.excluded_user_agents):
        return NotRecorded.EXCLUDED_USER_AGENT
    playback = settings.playback
    if any(ip_matches(visit.ip, p) for p in [*settings.traffic.excluded_ips, *playback.excluded_ips]):
        return NotRecorded.EXCLUDED_IP
    if visit.url is not None:
        host = urlsplit(visit.url).hostname or ""
        patterns = [*settings.traffic.excluded_domains, *playback.excluded_domains]
        if not host or any(domain_matches(host, p) for p in patterns):
            return NotRecorded.EXCLUDED_DOMAIN
    return None


def chosen(
    conn: sa.Connection, project_id: int, settings: EnvironmentSettings, user_key: str, manual_trigger: bool
) -> NotRecorded | None:
    """The checks for a new recording: method, then global capture or segments (quota comes last)."""
    playback = settings.playback
    if playback.method == "manual" and not manual_trigger:
        return NotRecorded.MANUAL
    if playback.global_capture:
        return None
    if not playback.segment_ids:
        return NotRecorded.NO_SEGMENT
    if not user_in_segments(conn, project_id, user_key, playback.segment_ids):
        return NotRecorded.NOT_IN_SEGMENT
    return None
