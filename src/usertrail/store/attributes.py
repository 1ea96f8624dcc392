"""Custom attribute values per end user, the per-project registry under its cap, and change history.

Every integration (End User Update API, CSV, S3, Salesforce, SCIM) writes through `write()`, so
they share one mapping and error model: a record's bad field is reported and skipped, the rest of
the record and of the batch still apply, and a new name past the cap is refused with the cap and
the registry in the error.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from dataclasses import dataclass, field

import msgspec
import sqlalchemy as sa

from usertrail.profiles.custom import CAP, InvalidValue, check_name, convert, infer_type
from usertrail.store.database import lock_key, write_transaction
from usertrail.store.schema import attribute_history, attribute_registry, user_attributes


@dataclass
class FieldError:
    record: int
    field: str
    reason: str

    def as_json(self) -> dict:
        return {"record": self.record, "field": self.field, "reason": self.reason}


@dataclass
class WriteReport:
    """What one write did: values applied and changed, and every error by record and field."""

    records: int = 0
    applied: int = 0
    changed: int = 0
    errors: list[FieldError] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        return {
            "records": self.records,
            "applied": self.applied,
            "changed": self.changed,
            "registered": self.registered,
            "errors": [e.as_json() for e in self.errors],
        }


def _now() -> int:
    return int(time.time() * 1000)


def _encode(value) -> str:
    return msgspec.json.encode(value).decode()


class AttributeStore:
    """Reads and writes custom attributes."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def registry(self, project_id: int) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(attribute_registry)
                .where(attribute_registry.c.project_id == project_id)
                .order_by(attribute_registry.c.name)
            ).all()
        return [
            {
                "name": r.name,
                "type": r.type,
                "integrations": msgspec.json.decode(r.integrations),
                "created_at": r.created_at,
                "updated_at": r.updated_at,
            }
            for r in rows
        ]

    def write(
        self,
        project_id: int,
        source: str,
        records: list[tuple[str, dict[str, object]]],
        types: dict[str, str] | None = None,
        conn: sa.Connection | None = None,
    ) -> WriteReport:
        """Apply `(user_key, {name: value})` records from `source`; most recent write wins.

        `types` gives the mapping's type per name; a name not yet registered takes that type (or
        one inferred from its first value). Values of users not seen yet are kept and apply when
        the user appears (their key is the same). Pass `conn` to write in the caller's (write)
        transaction, so the values commit or roll back with the caller's own rows.
        """
        types = types or {}
        report = WriteReport(records=len(records))
        now = _now()
        with contextlib.nullcontext(conn) if conn is not None else write_transaction(self.engine) as conn:
            lock_key(conn, "attribute-registry", project_id)
            registry = {
                r.name: r
                for r in conn.execute(
                    sa.select(attribute_registry).where(attribute_registry.c.project_id == project_id)
                ).all()
            }
            registered_types = {name: r.type for name, r in registry.items()}
            touched: set[str] = set()
            accepted: list[tuple[str, str, object]] = []
            for index, (user_key, values) in enumerate(records):
                for name, raw in values.items():
                    problem = check_name(name)
                    if problem:
                        report.errors.append(FieldError(index, str(name), problem))
                        continue
                    type_ = registered_types.get(name) or types.get(name) or infer_type(raw)
                    if name in types and name in registered_types and types[name] != registered_types[name]:
                        report.errors.append(
                            FieldError(
                                index, name, f"mapped as {types[name]} but registered as {registered_types[name]}"
                            )
                        )
                        continue
                    try:
                        value = convert(raw, type_)
                    except InvalidValue as exc:
                        report.errors.append(FieldError(index, name, str(exc)))
                        continue
                    if name not in registered_types:
                        if len(registered_types) >= CAP:
                            report.errors.append(
                                FieldError(
                                    index,
                                    name,
                                    f"the project already has the maximum of {CAP} custom attributes; "
                                    f"registered: {', '.join(sorted(registered_types))}",
                                )
                            )
                            continue
                        registered_types[name] = type_
                        conn.execute(
                            attribute_registry.insert().values(
                                project_id=project_id,
                                name=name,
                                type=type_,
                                integrations=_encode([source]),
                                created_at=now,
                                updated_at=now,
                            )
                        )
                        report.registered.append(name)
                    touched.add(name)
                    report.applied += 1
                    accepted.append((user_key, name, value))
            report.changed = self._apply(conn, project_id, source, accepted, now)
            for name in touched:
                row = registry.get(name)
                integrations = set(msgspec.json.decode(row.integrations)) if row is not None else {source}
                integrations.add(source)
                conn.execute(
                    attribute_registry.update()
                    .where(attribute_registry.c.project_id == project_id, attribute_registry.c.name == name)
                    .values(integrations=_encode(sorted(integrations)), updated_at=now)
                )
        return report

    @staticmethod
    def _apply(conn: sa.Connection, project_id: int, source: str, accepted: list, now: int) -> int:
        """Write accepted values with a few set-wise statements; returns how many values changed.

        One read of the current values; every change in order goes to the history; then each
        (user, name) gets one final insert, update, delete or refresh (same value, newer time).
        """
        original: dict[tuple[str, str], str] = {}
        keys = sorted({key for key, _, _ in accepted})
        for i in range(0, len(keys), 500):
            rows = conn.execute(
                sa.select(user_attributes.c.user_key, user_attributes.c.name, user_attributes.c.value).where(
                    user_attributes.c.project_id == project_id, user_attributes.c.user_key.in_(keys[i : i + 500])
                )
            ).all()
            original.update({(r.user_key, r.name): r.value for r in rows})
        current = dict(original)
        final: dict[tuple[str, str], tuple[str | None, object]] = {}
        history = []
        for user_key, name, value in accepted:
            k = (user_key, name)
            new = None if value is None else _encode(value)
            final[k] = (new, value)
            if current.get(k) != new:
                history.append(
                    {
                        "project_id": project_id,
                        "user_key": user_key,
                        "id": f"{now:013d}-{len(history):06d}-{secrets.token_hex(4)}",
                        "name": name,
                        "old_value": current.get(k),
                        "new_value": new,
                        "source": source,
                        "changed_at": now,
                    }
                )
                current[k] = new
        inserts, updates, deletes, refreshes = [], [], [], []
        for (user_key, name), (new, value) in final.items():
            key = {"k_user": user_key, "k_name": name}
            numeric = value if isinstance(value, float) else None
            if new is None:
                if (user_key, name) in original:
                    deletes.append(key)
            elif (user_key, name) not in original:
                inserts.append(
                    {
                        "project_id": project_id,
                        "user_key": user_key,
                        "name": name,
                        "value": new,
                        "value_num": numeric,
                        "source": source,
                        "updated_at": now,
                    }
                )
            elif original[(user_key, name)] == new:
                refreshes.append(key)
            else:
                updates.append({**key, "new_value": new, "new_num": numeric})
        where = (
            user_attributes.c.project_id == project_id,
            user_attributes.c.user_key == sa.bindparam("k_user"),
            user_attributes.c.name == sa.bindparam("k_name"),
        )
        if inserts:
            conn.execute(user_attributes.insert(), inserts)
        if updates:
            conn.execute(
                user_attributes.update()
                .where(*where)
                .values(
                    value=sa.bindparam("new_value"), value_num=sa.bindparam("new_num"), source=source, updated_at=now
                ),
                updates,
            )
        if deletes:
            conn.execute(user_attributes.delete().where(*where), deletes)
        if refreshes:
            conn.execute(user_attributes.update().where(*where).values(source=source, updated_at=now), refreshes)
        if history:
            conn.execute(attribute_history.insert(), history)
        return len(history)

    def values(self, project_id: int, keys: list[str]) -> dict[str, dict]:
        """The custom attributes of an end user (all their keys; the most recent write wins)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(user_attributes)
                .where(user_attributes.c.project_id == project_id, user_attributes.c.user_key.in_(keys))
                .order_by(user_attributes.c.updated_at)
            ).all()
        return {
            r.name: {"value": msgspec.json.decode(r.value), "source": r.source, "updated_at": r.updated_at}
            for r in rows
        }

    def history(self, project_id: int, keys: list[str], name: str | None = None, limit: int = 100) -> list[dict]:
        query = sa.select(attribute_history).where(
            attribute_history.c.project_id == project_id, attribute_history.c.user_key.in_(keys)
        )
        if name is not None:
            query = query.where(attribute_history.c.name == name)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(attribute_history.c.id.desc()).limit(limit)).all()
        return [
            {
                "name": r.name,
                "old": None if r.old_value is None else msgspec.json.decode(r.old_value),
                "new": None if r.new_value is None else msgspec.json.decode(r.new_value),
                "source": r.source,
                "changed_at": r.changed_at,
            }
            for r in rows
        ]
