"""Retention periods of a project (docs/admin-app.md#retention-api)."""

from __future__ import annotations

import msgspec

from usertrail.web.openapi.model import Op

TAG = "Settings"


class RetentionChange(msgspec.Struct, omit_defaults=True):
    """Days to keep end users without a session (`user_days`) and recordings (`playback_days`), 1–3650;
    null: the installation's default; a field left out keeps its value."""

    user_days: int | None = None
    playback_days: int | None = None


class Retention(msgspec.Struct):
    """The project's own periods (null: the default), the installation's defaults, and what applies."""

    user_days: int | None
    playback_days: int | None
    defaults: dict[str, int | None]
    effective: dict[str, int | None]


OPERATIONS = [
    Op(
        "GET",
        "/api/projects/{project_id}/retention",
        "The project's retention periods and the defaults",
        permission="project.view",
        response=Retention,
    ),
    Op(
        "PUT",
        "/api/projects/{project_id}/retention",
        "Set the project's retention periods",
        permission="settings.manage",
        body=RetentionChange,
        response=Retention,
        errors={400: "invalid_request: an unknown field or a value out of range (`$.<field>`)"},
    ),
]
