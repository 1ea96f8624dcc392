"""Who is acting on a project, and with which permissions."""

from __future__ import annotations

from dataclasses import dataclass

ACCOUNT = "account"
TOKEN = "token"


@dataclass(frozen=True)
class Principal:
    """An account signed in (cookie) or a project admin token, acting on `project_id` with `role`.

    `actor` names it in audit entries: the account's e-mail address, or the admin token's key id.
    """

    project_id: int
    kind: str  # ACCOUNT or TOKEN
    role: str
    permissions: frozenset[str]
    actor_id: str  # the account id, or the token's key id
    email: str | None = None

    @property
    def actor(self) -> str:
        return self.email if self.email is not None else self.actor_id

    @property
    def key_id(self) -> str:
        """The actor label, under the name routes written for admin tokens only used."""
        return self.actor

    def can(self, permission: str) -> bool:
        return permission in self.permissions
