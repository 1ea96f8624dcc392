"""Projects, their environments' settings, and their keys."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

import msgspec
import sqlalchemy as sa

from usertrail.project_settings import DEFAULT_ENVIRONMENTS, EnvironmentSettings
from usertrail.store.database import write_transaction
from usertrail.store.schema import api_keys, environments, projects

WRITE = "write"
ADMIN = "admin"
_PREFIX = {WRITE: "wk_", ADMIN: "adm_"}


class UnknownProject(LookupError):
    """No project has that id."""


class UnknownEnvironment(LookupError):
    """The project has no environment of that name."""


@dataclass(frozen=True)
class Project:
    id: int
    name: str
    created_at: int
    walkme_account_id: str | None


@dataclass(frozen=True)
class KeyGrant:
    """What a presented key allows: which project, and whether it can only write."""

    project_id: int
    kind: str
    key_id: str


@dataclass(frozen=True)
class NewProject:
    project: Project
    write_key: str
    admin_token: str


def hash_token(token: str) -> str:
    """Keys are looked up by their SHA-256, so a stolen database holds no usable admin token."""
    return hashlib.sha256(token.encode()).hexdigest()


def now_ms() -> int:
    return int(time.time() * 1000)


class ProjectStore:
    """Reads and writes projects, environments and keys."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def create(self, name: str, walkme_account_id: str | None = None) -> NewProject:
        """Create a project with the default environments, one write key and one admin token."""
        created = now_ms()
        with write_transaction(self.engine) as conn:
            project_id = conn.execute(
                projects.insert()
                .values(name=name, created_at=created, walkme_account_id=walkme_account_id)
                .returning(projects.c.id)
            ).scalar_one()
            for env_name, code in DEFAULT_ENVIRONMENTS.items():
                conn.execute(
                    environments.insert().values(
                        project_id=project_id,
                        name=env_name,
                        settings=msgspec.json.encode(EnvironmentSettings(walkme_env=code)).decode(),
                        updated_at=created,
                    )
                )
            write_key = self._issue(conn, project_id, WRITE)
            admin_token = self._issue(conn, project_id, ADMIN)
        project = Project(project_id, name, created, walkme_account_id)
        return NewProject(project, write_key, admin_token)

    def list(self) -> list[Project]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(projects).order_by(projects.c.id)).all()
        return [Project(r.id, r.name, r.created_at, r.walkme_account_id) for r in rows]

    def get(self, project_id: int) -> Project:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(projects).where(projects.c.id == project_id)).first()
        if row is None:
            raise UnknownProject(project_id)
        return Project(row.id, row.name, row.created_at, row.walkme_account_id)

    def by_walkme_account(self, account_id: str) -> Project | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(projects).where(projects.c.walkme_account_id == account_id)).first()
        return None if row is None else Project(row.id, row.name, row.created_at, row.walkme_account_id)

    def environments(self, project_id: int) -> dict[str, EnvironmentSettings]:
        """Every environment of the project with its settings, by name."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(environments.c.name, environments.c.settings).where(environments.c.project_id == project_id)
            ).all()
        return {r.name: msgspec.json.decode(r.settings, type=EnvironmentSettings) for r in rows}

    def save_environment(self, project_id: int, name: str, settings: EnvironmentSettings) -> None:
        """Create or replace one environment's settings."""
        encoded = msgspec.json.encode(settings).decode()
        with write_transaction(self.engine) as conn:
            updated = conn.execute(
                environments.update()
                .where(environments.c.project_id == project_id, environments.c.name == name)
                .values(settings=encoded, updated_at=now_ms())
            ).rowcount
            if not updated:
                conn.execute(
                    environments.insert().values(
                        project_id=project_id, name=name, settings=encoded, updated_at=now_ms()
                    )
                )

    def authenticate(self, token: str) -> KeyGrant | None:
        """The grant of a key, or None if it is unknown or expired."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(api_keys.c.project_id, api_keys.c.kind, api_keys.c.key_id, api_keys.c.expires_at).where(
                    api_keys.c.token_hash == hash_token(token)
                )
            ).first()
        if row is None or (row.expires_at is not None and row.expires_at <= now_ms()):
            return None
        return KeyGrant(row.project_id, row.kind, row.key_id)

    def keys(self, project_id: int) -> list[dict]:
        """The project's keys: write keys in full (they are public), admin tokens by id only."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(api_keys).where(api_keys.c.project_id == project_id).order_by(api_keys.c.created_at)
            ).all()
        return [
            {
                "key_id": r.key_id,
                "kind": r.kind,
                "key": r.display,
                "created_at": r.created_at,
                "expires_at": r.expires_at,
            }
            for r in rows
        ]

    def rotate(self, project_id: int, kind: str, grace_seconds: int = 0) -> str:
        """Issue a new key of `kind`; the current ones stop working after `grace_seconds`.

        A grace period matters for write keys, which sit in deployed pages until they are updated.
        """
        if kind not in _PREFIX:
            raise ValueError(f"kind must be one of {sorted(_PREFIX)}")
        self.get(project_id)
        expires = now_ms() + grace_seconds * 1000
        with write_transaction(self.engine) as conn:
            conn.execute(
                api_keys.update()
                .where(
                    api_keys.c.project_id == project_id,
                    api_keys.c.kind == kind,
                    sa.or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > expires),
                )
                .values(expires_at=expires)
            )
            return self._issue(conn, project_id, kind)

    @staticmethod
    def _issue(conn: sa.Connection, project_id: int, kind: str) -> str:
        token = _PREFIX[kind] + secrets.token_urlsafe(24 if kind == WRITE else 32)
        conn.execute(
            api_keys.insert().values(
                project_id=project_id,
                key_id=token[: len(_PREFIX[kind]) + 8],
                kind=kind,
                token_hash=hash_token(token),
                display=token if kind == WRITE else None,
                created_at=now_ms(),
                expires_at=None,
            )
        )
        return token
