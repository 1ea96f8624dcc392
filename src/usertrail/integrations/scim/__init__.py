"""SCIM 2.0 provisioning: Okta, Microsoft Entra ID or OneLogin push users into a project (docs/scim.md).

- `protocol.py`: what the service provider announces and accepts (scim2-server's `ScimService`);
- `mapping.py`: SCIM attributes → custom attributes, and which attribute is the end-user id;
- `storage.py`: scim2-server's storage interface over `scim_users`, writing attributes and the log;
- here: the per-project settings and bearer token, and `serve()`, which authenticates a request
  and hands it to scim2-server's `ScimHandler` with a storage bound to the project.

`web/scim_routes.py` is the HTTP shell.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import sqlalchemy as sa
from scim2_models import SCIMException, UnauthorizedException
from scim2_server.handler import ScimHandler
from scim2_server.requests import ScimRequest
from scim2_server.responses import ScimResponse
from scim2_server.routing import Operation

from usertrail.integrations import IntegrationLog
from usertrail.integrations.scim.mapping import (
    DEFAULT_MAPPING,
    DEFAULT_USER_ID_ATTRIBUTE,
    AttributeMap,
    ScimMapping,
    parse_mapping,
    parse_user_id_attribute,
)
from usertrail.integrations.scim.protocol import SERVICE, normalize_patch
from usertrail.integrations.scim.storage import SOURCE, SqlScimStorage
from usertrail.integrations.update_api import InvalidRequest
from usertrail.integrations.user_keys import user_key_function
from usertrail.profiles.custom import CAP
from usertrail.store.attributes import AttributeStore
from usertrail.store.database import write_transaction
from usertrail.store.schema import scim_settings, scim_users

log = logging.getLogger(__name__)

TOKEN_PREFIX = "scim_"
WRITES = {
    Operation.create: "user.create",
    Operation.replace: "user.replace",
    Operation.patch: "user.patch",
    Operation.delete: "user.delete",
}


def _now() -> int:
    return int(time.time() * 1000)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class SettingsConflict(Exception):
    """A settings change that would break users already provisioned."""

    def __init__(self, reason: str, path: str) -> None:
        super().__init__(reason)
        self.reason, self.path = reason, path


@dataclass(frozen=True)
class ScimSettings:
    project_id: int
    token_hash: str | None
    token_created_at: int | None
    mapping: ScimMapping
    created_at: int
    updated_at: int

    def as_json(self) -> dict:
        return {
            "enabled": self.token_hash is not None,
            "token_created_at": self.token_created_at,
            "user_id_attribute": self.mapping.user_id_attribute,
            "mapping": [f.as_json() for f in self.mapping.fields],
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


def _settings_from_row(row) -> ScimSettings:
    fields = tuple(AttributeMap(f["path"], f["name"], f["type"]) for f in msgspec.json.decode(row.mapping))
    return ScimSettings(
        row.project_id,
        row.token_hash,
        row.token_created_at,
        ScimMapping(row.user_id_attribute, fields),
        row.created_at,
        row.updated_at,
    )


def _encode_fields(fields: tuple[AttributeMap, ...]) -> str:
    return msgspec.json.encode([f.as_json() for f in fields]).decode()


class ScimIntegration:
    """Per-project SCIM settings and token, and the SCIM endpoint itself."""

    def __init__(
        self,
        engine: sa.Engine,
        attributes: AttributeStore,
        log: IntegrationLog,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.engine = engine
        self.attributes = attributes
        self.log = log
        self.clock = clock or _now  # ms

    # settings and token

    def settings(self, project_id: int) -> ScimSettings | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(scim_settings).where(scim_settings.c.project_id == project_id)).first()
        return None if row is None else _settings_from_row(row)

    def user_count(self, project_id: int) -> int:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(sa.func.count()).select_from(scim_users).where(scim_users.c.project_id == project_id)
            ).scalar_one()

    def _ensure_row(self, conn: sa.Connection, project_id: int, now: int):
        row = conn.execute(sa.select(scim_settings).where(scim_settings.c.project_id == project_id)).first()
        if row is not None:
            return row
        conn.execute(
            scim_settings.insert().values(
                project_id=project_id,
                token_hash=None,
                token_created_at=None,
                user_id_attribute=DEFAULT_USER_ID_ATTRIBUTE,
                mapping=_encode_fields(DEFAULT_MAPPING),
                created_at=now,
                updated_at=now,
            )
        )
        return conn.execute(sa.select(scim_settings).where(scim_settings.c.project_id == project_id)).one()

    def configure(self, project_id: int, body: dict, actor: str | None = None) -> tuple[ScimSettings, list[str]]:
        """Change the end-user id attribute and/or the mapping; raises InvalidRequest or SettingsConflict.

        Returns the settings and warnings (mapped names that the cap of 100 will refuse).
        """
        for key in body:
            if key not in ("user_id_attribute", "mapping"):
                raise InvalidRequest(f"unknown field {key!r}: expected user_id_attribute and mapping", f"$.{key}")
        user_id_attribute = parse_user_id_attribute(body["user_id_attribute"]) if "user_id_attribute" in body else None
        fields = parse_mapping(body["mapping"]) if "mapping" in body else None
        registry = {a["name"]: a["type"] for a in self.attributes.registry(project_id)}
        warnings: list[str] = []
        if fields is not None:
            for i, field in enumerate(fields):
                registered = registry.get(field.name)
                if registered is not None and registered != field.type:
                    raise InvalidRequest(
                        f"{field.name!r} is already registered as {registered}; map it as {registered}",
                        f"$.mapping[{i}].type",
                    )
            new_names = [f.name for f in fields if f.name not in registry]
            if len(registry) + len(new_names) > CAP:
                room = max(0, CAP - len(registry))
                warnings.append(
                    f"the project has {len(registry)} of {CAP} custom attributes; only {room} of the "
                    f"{len(new_names)} new names can be registered: values of the others will be refused"
                )
        now = self.clock()
        with write_transaction(self.engine) as conn:
            row = self._ensure_row(conn, project_id, now)
            if user_id_attribute is not None and user_id_attribute != row.user_id_attribute:
                users = conn.execute(
                    sa.select(sa.func.count()).select_from(scim_users).where(scim_users.c.project_id == project_id)
                ).scalar_one()
                if users:
                    raise SettingsConflict(
                        f"{users} SCIM users are already provisioned under {row.user_id_attribute}; the end-user "
                        "id attribute can only change while the project has none (delete them from the IdP first)",
                        "$.user_id_attribute",
                    )
            changes: dict[str, object] = {"updated_at": now}
            if user_id_attribute is not None:
                changes["user_id_attribute"] = user_id_attribute
            if fields is not None:
                changes["mapping"] = _encode_fields(fields)
            conn.execute(scim_settings.update().where(scim_settings.c.project_id == project_id).values(**changes))
            self.log.append(
                project_id,
                SOURCE,
                "config.update",
                details={"by": actor, "changed": sorted(k for k in changes if k != "updated_at"), "warnings": warnings},
                ts=now,
                conn=conn,
            )
        settings = self.settings(project_id)
        assert settings is not None
        return settings, warnings

    def issue_token(self, project_id: int, actor: str | None = None) -> str:
        """A new bearer token for the project (shown once); the previous one stops working at once."""
        token = f"{TOKEN_PREFIX}{project_id}_{secrets.token_urlsafe(32)}"
        now = self.clock()
        with write_transaction(self.engine) as conn:
            row = self._ensure_row(conn, project_id, now)
            conn.execute(
                scim_settings.update()
                .where(scim_settings.c.project_id == project_id)
                .values(token_hash=_sha256(token), token_created_at=now, updated_at=now)
            )
            kind = "token.rotate" if row.token_hash is not None else "token.create"
            self.log.append(project_id, SOURCE, kind, details={"by": actor}, ts=now, conn=conn)
        return token

    def revoke_token(self, project_id: int, actor: str | None = None) -> bool:
        """Stop accepting the project's token; False if it had none."""
        now = self.clock()
        with write_transaction(self.engine) as conn:
            revoked = conn.execute(
                scim_settings.update()
                .where(scim_settings.c.project_id == project_id, scim_settings.c.token_hash.is_not(None))
                .values(token_hash=None, token_created_at=None, updated_at=now)
            ).rowcount
            if revoked:
                self.log.append(project_id, SOURCE, "token.revoke", details={"by": actor}, ts=now, conn=conn)
        return bool(revoked)

    # the SCIM endpoint

    @staticmethod
    def _authenticate(settings: ScimSettings, authorization: str | None) -> None:
        if not authorization or authorization[:7].lower() != "bearer " or not authorization[7:].strip():
            raise UnauthorizedException(detail="send Authorization: Bearer <the project's SCIM token>")
        assert settings.token_hash is not None
        if not hmac.compare_digest(_sha256(authorization[7:].strip()), settings.token_hash):
            raise UnauthorizedException(detail="unknown SCIM token for this project")

    def serve(self, project_id: int, request: ScimRequest, authorization: str | None) -> ScimResponse:
        """Answer one SCIM request for a project (blocking: run it in a worker thread)."""
        kind: str | None = None
        authenticated = False
        try:
            target = SERVICE.match(request)
            kind = WRITES.get(target.operation)
            settings = self.settings(project_id)
            if settings is None or settings.token_hash is None:
                raise UnauthorizedException(detail="SCIM is not enabled for this project (no SCIM token)")
            # RFC 7644 §4: the service provider configuration is readable without credentials.
            if target.operation is not Operation.service_provider_config:
                self._authenticate(settings, authorization)
                authenticated = True
            if target.operation is Operation.patch:
                request.body = normalize_patch(request.body)
            storage = SqlScimStorage(
                self.engine,
                project_id,
                settings.mapping,
                self.attributes,
                self.log,
                write=kind is not None,
                kind=kind or "read",
                clock=self.clock,
                user_key=user_key_function(self.engine, project_id),
            )
            response = ScimHandler(SERVICE, storage).handle(request)
            if kind is not None and not storage.wrote:
                self.log.append(
                    project_id,
                    SOURCE,
                    kind,
                    records=1,
                    integration_id=target.resource_id,
                    details={"scim_id": target.resource_id, "changed": [], "unchanged": True},
                    ts=self.clock(),
                )
        except Exception as exc:
            if not isinstance(exc, SCIMException):
                log.exception("SCIM request failed: %s %s", request.method, request.path)
            response = SERVICE.error_response(exc)
            if kind is not None and authenticated:
                body = response.body or {}
                error = {key: body.get(key) for key in ("status", "scimType", "detail")}
                self.log.append(
                    project_id,
                    SOURCE,
                    f"{kind}.refused",
                    records=1,
                    errors=[error],
                    details={"path": request.path},
                    ts=self.clock(),
                )
        # SCIM answers carry personal data: never cached.
        response.headers.setdefault("Cache-Control", "no-store")
        return response
