"""Why an event was not stored. Every drop is counted per project, environment, day and reason."""

from enum import StrEnum


class DropReason(StrEnum):
    BOT = "bot"
    EXCLUDED_IP = "excluded_ip"
    EXCLUDED_DOMAIN = "excluded_domain"
    EXCLUDED_USER_AGENT = "excluded_user_agent"
    ABOVE_TRACKING_LEVEL = "above_tracking_level"
    DUPLICATE = "duplicate"


class RejectReason(StrEnum):
    """Why an event was refused as invalid; refused events are kept in the rejected-events store."""

    INVALID = "invalid"
    LIMIT = "limit_exceeded"
    UNKNOWN_ENVIRONMENT = "unknown_environment"
