"""Checks of the playback settings that their types alone cannot express."""

from __future__ import annotations

from usertrail.collect.traffic import InvalidPattern, validate_ip_pattern
from usertrail.project_settings import EnvironmentSettings


class InvalidPlaybackSettings(ValueError):
    """A playback setting that can never work; `path` is its JSON path in the environment settings."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(reason)
        self.path, self.reason = path, reason


def validate(settings: EnvironmentSettings) -> None:
    """Raise InvalidPlaybackSettings for the first unusable IP pattern, domain pattern, selector or id."""
    playback = settings.playback
    for i, pattern in enumerate(playback.excluded_ips):
        try:
            validate_ip_pattern(pattern)
        except InvalidPattern as exc:
            raise InvalidPlaybackSettings(f"$.playback.excluded_ips[{i}]", str(exc)) from None
    for name in ("excluded_domains", "asset_domains"):
        for i, pattern in enumerate(getattr(playback, name)):
            p = pattern.strip().lower()
            if not p or not all(c.isalnum() or c in ".-*" for c in p) or "*" in p.lstrip("*"):
                raise InvalidPlaybackSettings(
                    f"$.playback.{name}[{i}]", f"{pattern!r} is not a domain or a `*.domain` pattern"
                )
    # Selectors go to the browser's Element.matches(); braces or semicolons would be CSS rules, not selectors.
    for name in ("allowed_input_selectors", "blocked_selectors", "segment_ids"):
        for i, value in enumerate(getattr(playback, name)):
            if not value.strip() or any(c in value for c in "{};"):
                raise InvalidPlaybackSettings(f"$.playback.{name}[{i}]", f"{value!r} is not a usable value here")
