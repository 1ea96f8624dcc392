"""Incoming integrations: everything that writes custom attributes of end users from outside.

Every integration (the End User Update API in `update_api.py`; later CSV, S3, Salesforce, SCIM)
writes attributes through `AttributeStore.write` and records what it did in the one integration
log below, so an admin can see in one place which integration sent what, and what failed.
"""

from __future__ import annotations

import secrets
import time

import msgspec
import sqlalchemy as sa

from usertrail.store.database import write_transaction
from usertrail.store.schema import integration_log

FIRST_ERRORS = 10  # errors kept per log entry; the full list stays with the integration's own result


def _now() -> int:
    return int(time.time() * 1000)


class IntegrationLog:
    """Append-only log of integration activity: update calls, imports, credential changes."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def append(
        self,
        project_id: int,
        integration: str,
        kind: str,
        records: int = 0,
        applied: int = 0,
        errors: list[dict] | None = None,
        *,
        integration_id: str | None = None,
        request_id: str | None = None,
        details: dict | None = None,
        error_count: int | None = None,
        ts: int | None = None,
        conn: sa.Connection | None = None,
    ) -> str:
        """Record one event of `integration` (its name, the attribute source); returns the entry id.

        `errors` may be the full list: only the first few are kept, with the total count
        (`error_count` overrides the count when the caller already truncated the list).
        Pass `conn` to write in the caller's transaction.
        """
        errors = errors or []
        now = ts if ts is not None else _now()
        entry_id = f"{now:013d}-{secrets.token_hex(6)}"
        row = {
            "project_id": project_id,
            "id": entry_id,
            "ts": now,
            "integration": integration,
            "integration_id": integration_id,
            "kind": kind,
            "records": records,
            "applied": applied,
            "error_count": len(errors) if error_count is None else error_count,
            "errors": msgspec.json.encode(errors[:FIRST_ERRORS]).decode(),
            "request_id": request_id,
            "details": msgspec.json.encode(details or {}).decode(),
        }
        if conn is not None:
            conn.execute(integration_log.insert().values(**row))
        else:
            with write_transaction(self.engine) as own:
                own.execute(integration_log.insert().values(**row))
        return entry_id

    def list(
        self,
        project_id: int,
        integration: str | None = None,
        kind: str | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[dict]:
        """Newest first. `integration` matches the integration's name or its id (e.g. a client id)."""
        query = sa.select(integration_log).where(integration_log.c.project_id == project_id)
        if integration:
            query = query.where(
                sa.or_(integration_log.c.integration == integration, integration_log.c.integration_id == integration)
            )
        if kind:
            query = query.where(integration_log.c.kind == kind)
        if before:
            query = query.where(integration_log.c.id < before)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(integration_log.c.id.desc()).limit(limit)).all()
        return [
            {
                "id": r.id,
                "ts": r.ts,
                "integration": r.integration,
                "integration_id": r.integration_id,
                "kind": r.kind,
                "records": r.records,
                "applied": r.applied,
                "error_count": r.error_count,
                "errors": msgspec.json.decode(r.errors),
                "request_id": r.request_id,
                "details": msgspec.json.decode(r.details),
            }
            for r in rows
        ]
