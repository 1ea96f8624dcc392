"""Per-project, per-environment settings: tracking level, privacy, identity and traffic rules.

Settings are typed msgspec structs so that an update with a wrong key or type is refused with
the field path, and so that the same definition documents the API.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

import msgspec


class TrackingLevel(StrEnum):
    """WalkMe's three cumulative data collection levels."""

    ENGAGEMENT = "engagement"
    DXA = "dxa"
    PLAYBACK = "playback"

    @property
    def rank(self) -> int:
        return _LEVEL_RANK[self]


_LEVEL_RANK = {TrackingLevel.ENGAGEMENT: 0, TrackingLevel.DXA: 1, TrackingLevel.PLAYBACK: 2}

UuidProvider = Literal["walkme_id", "cookie", "variable", "selector", "idp", "none"]

ShortText = Annotated[str, msgspec.Meta(max_length=512)]


class UuidSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """End-user identification (WalkMe's "Unique User Settings")."""

    provider: UuidProvider = "walkme_id"
    # Cookie name, window variable name or CSS selector, depending on the provider; for `idp`, the window
    # variable holding the ID token.
    source: ShortText = ""
    hash: bool = False
    salt: ShortText = ""
    # `idp` only (enrich/idp.py): the identity provider's issuer URL, the client id its ID tokens are
    # issued to (`aud`), and the claim that holds the end-user id.
    issuer: ShortText = ""
    audience: ShortText = ""
    claim: ShortText = "sub"


class TrafficRules(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Traffic that is never collected."""

    excluded_ips: list[ShortText] = msgspec.field(default_factory=list)
    excluded_domains: list[ShortText] = msgspec.field(default_factory=list)
    excluded_user_agents: list[ShortText] = msgspec.field(default_factory=list)
    drop_bots: bool = True


RecordingMethod = Literal["automatic", "manual"]


class PlaybackSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Who is recorded by Session Playback, and what the recorder may capture (docs/playback.md)."""

    # Record every session that passes the other checks; otherwise only users in `segment_ids`.
    global_capture: bool = False
    # Segments whose users are recorded; none chosen (and no global capture) records nobody.
    segment_ids: list[ShortText] = msgspec.field(default_factory=list)
    # "manual": a session is recorded only once the page calls usertrail.startPlaybackRecording().
    method: RecordingMethod = "automatic"
    excluded_ips: list[ShortText] = msgspec.field(default_factory=list)
    excluded_domains: list[ShortText] = msgspec.field(default_factory=list)
    # Inputs whose values may be recorded (CSS selectors); every other value is masked, passwords always.
    allowed_input_selectors: list[ShortText] = msgspec.field(default_factory=list)
    # Elements replaced by a placeholder in recordings (besides class `wm-hide`).
    blocked_selectors: list[ShortText] = msgspec.field(default_factory=list)
    # Hosts the server may fetch recorded pages' stylesheets, fonts and images from, besides the hosts
    # of `allowed_origins`: `cdn.example.com` (and its subdomains) or `*.example.com`.
    asset_domains: list[ShortText] = msgspec.field(default_factory=list)


class EnvironmentSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Everything configurable for one environment (production, test, ...) of a project."""

    tracking_level: TrackingLevel = TrackingLevel.DXA
    collect_url: bool = True
    collect_title: bool = True
    uuid: UuidSettings = msgspec.field(default_factory=UuidSettings)
    traffic: TrafficRules = msgspec.field(default_factory=TrafficRules)
    # Origins the browser snippet may post from, e.g. "https://app.example.com",
    # "https://*.example.com" or "http://localhost:*".
    allowed_origins: list[ShortText] = msgspec.field(default_factory=list)
    # The `wm.env` number WalkMe's own recorder sends for this environment.
    walkme_env: int = 0
    playback: PlaybackSettings = msgspec.field(default_factory=PlaybackSettings)


DEFAULT_ENVIRONMENTS: dict[str, int] = {"production": 0, "test": 1}


def merge_settings(current: EnvironmentSettings, patch: dict) -> EnvironmentSettings:
    """Apply a partial update (a JSON object) and validate the result.

    Raises msgspec.ValidationError naming the offending path.
    """
    merged = msgspec.to_builtins(current)
    _deep_merge(merged, patch)
    return msgspec.convert(merged, EnvironmentSettings)


def _deep_merge(target: dict, patch: dict) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_merge(target[key], value)
        else:
            target[key] = value
