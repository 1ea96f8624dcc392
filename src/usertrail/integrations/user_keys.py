"""The end-user key an integration writes an id under: the key collection gives the same id.

With `uuid.hash: true`, collection stores a user's events under `u:<hash of the id>`
(`collect.pipeline.identity_for`). An integration that wrote under `u:<id>` would keep its values
on a key no event ever reaches, so every writer (the End User Update API, CSV and S3 imports,
Salesforce, SCIM) turns ids into keys here. Integrations are per project while UUID settings are per
environment: the settings used are those of the first environment that identifies users (a
provider other than `none` and `walkme_id`), `production` first, then by name (docs/integrations.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import sqlalchemy as sa

from usertrail.collect.pipeline import identity_for
from usertrail.project_settings import EnvironmentSettings, UuidSettings
from usertrail.store.projects import ProjectStore

UserKey = Callable[[str], str]

_NOT_IDENTIFYING = ("none", "walkme_id")


def integration_uuid(environments: Mapping[str, EnvironmentSettings]) -> UuidSettings | None:
    """The UUID settings integrations identify users by, or None when no environment identifies users."""
    for name in sorted(environments, key=lambda n: (n != "production", n)):
        uuid = environments[name].uuid
        if uuid.provider not in _NOT_IDENTIFYING:
            return uuid
    return None


def plain_key(user_id: str) -> str:
    """The key of an identified id when ids are not hashed."""
    return "u:" + user_id


def key_function(uuid: UuidSettings | None) -> UserKey:
    """id → end-user key under these settings: `u:<id>`, or `u:<hash>` exactly as collection hashes."""
    if uuid is None or not uuid.hash:
        return plain_key

    def hashed_key(user_id: str) -> str:
        return identity_for(uuid, user_id, None)[2]

    return hashed_key


def user_key_function(engine: sa.Engine, project_id: int) -> UserKey:
    """The id → key function of a project's current settings (read once per write or import)."""
    return key_function(integration_uuid(ProjectStore(engine).environments(project_id)))
