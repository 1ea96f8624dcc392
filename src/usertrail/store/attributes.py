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
from usertrail.store.database import insert_rows, lock_key, update_rows, write_transaction
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


def cap_reason(registered: object) -> str:
    """The error for a name past the cap: it names the cap and lists the registry."""
    return (
        f"the project already has the maximum of {CAP} custom attributes; registered: {', '.join(sorted(registered))}"
    )


# A column's values for `write_columns`, aligned with the keys: (json_text, number_or_None), or
# None where the row has no value (the attribute is left unchanged).
ColumnValues = list[tuple[str, float | None] | None]


@dataclass
class ColumnsReport:
    """What one `write_columns` call did (or would do, for a dry run)."""

    applied: int = 0
    changed: int = 0
    registered: list[str] = field(default_factory=list)
    column_errors: list[tuple[str, str]] = field(default_factory=list)  # (name, reason): the column was refused
    rows_applied: bytearray = field(default_factory=bytearray)  # 1 where the row had a value applied


def _record_writer(conn: sa.Connection, project_id: int, registry: dict, names, source: str, now: int) -> None:
    """Add `source` to the integrations that write each name, and mark the names updated."""
    for name in names:
        row = registry.get(name)
        integrations = set(msgspec.json.decode(row.integrations)) if row is not None else {source}
        integrations.add(source)
        conn.execute(
            attribute_registry.update()
            .where(attribute_registry.c.project_id == project_id, attribute_registry.c.name == name)
            .values(integrations=_encode(sorted(integrations)), updated_at=now)
        )


def _encode(value) -> str:
    return msgspec.json.encode(value).decode()


_ATTRIBUTE_COLUMNS = ("project_id", "user_key", "name", "value", "value_num", "source", "updated_at")
_HISTORY_COLUMNS = ("project_id", "user_key", "id", "name", "old_value", "new_value", "source", "changed_at")


_KEY_COLUMNS = ("project_id", "user_key", "name")


def _first(item: tuple) -> str:
    return item[0]


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
                            report.errors.append(FieldError(index, name, cap_reason(registered_types)))
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
            _record_writer(conn, project_id, registry, touched, source, now)
        return report

    def write_columns(
        self,
        conn: sa.Connection,
        project_id: int,
        source: str,
        keys: list[str],
        columns: list[tuple[str, str, ColumnValues]],
        now: int | None = None,
        dry_run: bool = False,
    ) -> ColumnsReport:
        """Bulk form of `write` for imports: many rows, a few typed columns, in the caller's transaction.

        `columns` holds `(name, type, values)` with values already converted by
        `profiles.custom.CellConverter` for that type. The rules are `write`'s, decided once per
        column: a bad name, a type that clashes with the registry, or a new name past the cap refuses
        the column (`column_errors`); the other columns apply. Most recent write wins, rows apply in
        order, and each change goes to the history. `dry_run` checks everything and writes nothing.
        """
        now = now if now is not None else _now()
        report = ColumnsReport(rows_applied=bytearray(len(keys)))
        if not dry_run:
            lock_key(conn, "attribute-registry", project_id)
        registry = {
            r.name: r
            for r in conn.execute(
                sa.select(attribute_registry).where(attribute_registry.c.project_id == project_id)
            ).all()
        }
        registered_types = {name: r.type for name, r in registry.items()}
        accepted: list[tuple[str, ColumnValues]] = []
        for name, type_, values in columns:
            problem = check_name(name)
            if problem is None and name in registered_types and registered_types[name] != type_:
                problem = f"mapped as {type_} but registered as {registered_types[name]}"
            if problem is None and name not in registered_types and len(registered_types) >= CAP:
                problem = cap_reason(registered_types)
            if problem is not None:
                report.column_errors.append((name, problem))
                continue
            if name not in registered_types:
                registered_types[name] = type_
                report.registered.append(name)
            accepted.append((name, values))
            rows_applied = report.rows_applied
            for i, v in enumerate(values):
                if v is not None:
                    rows_applied[i] = 1
                    report.applied += 1
        if dry_run:
            return report
        for name in report.registered:
            conn.execute(
                attribute_registry.insert().values(
                    project_id=project_id,
                    name=name,
                    type=registered_types[name],
                    integrations=_encode([source]),
                    created_at=now,
                    updated_at=now,
                )
            )
        report.changed = self._apply_columns(conn, project_id, source, keys, accepted, now)
        _record_writer(conn, project_id, registry, [name for name, _ in accepted], source, now)
        return report

    @staticmethod
    def _current(conn: sa.Connection, project_id: int, keys: list[str]) -> dict[tuple[str, str], str]:
        """The stored values of these users, read in a few driver-level queries."""
        found: dict[tuple[str, str], str] = {}
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            if conn.dialect.name == "postgresql":
                sql = "SELECT user_key, name, value FROM user_attributes WHERE project_id = %s AND user_key = ANY(%s)"
                cursor.execute(sql, (project_id, keys))
                for user_key, name, value in cursor.fetchall():
                    found[(user_key, name)] = value
                return found
            step = 5000
            for i in range(0, len(keys), step):
                part = keys[i : i + step]
                sql = (
                    "SELECT user_key, name, value FROM user_attributes WHERE project_id = ? "
                    f"AND user_key IN ({', '.join('?' * len(part))})"
                )
                for user_key, name, value in cursor.execute(sql, (project_id, *part)):
                    found[(user_key, name)] = value
            return found
        finally:
            cursor.close()

    @staticmethod
    def _apply_columns(
        conn: sa.Connection,
        project_id: int,
        source: str,
        keys: list[str],
        columns: list[tuple[str, ColumnValues]],
        now: int,
    ) -> int:
        """`_apply` for columns: one read of the current values, then bulk inserts and set-wise updates.

        Rows are visited in primary-key order (user key, then name; a key's repeated rows in file
        order), so the rows to insert come out sorted: the B-tree inserts sweep each index once
        instead of landing at random, and nothing has to be sorted afterwards. History ids count up
        in that order, so a (user, name)'s changes keep the order in which they were applied.
        """
        order = sorted(range(len(keys)), key=keys.__getitem__)
        by_name = sorted(columns, key=_first)
        distinct = sorted(set(keys))
        original = AttributeStore._current(conn, project_id, distinct)
        prefix, suffix = f"{now:013d}-", "-" + secrets.token_hex(4)
        history: list[tuple] = []
        inserts: list[tuple] = []
        if not original and len(distinct) == len(keys):
            # A fresh import of distinct users (the common case): every value is new.
            for i in order:
                key = keys[i]
                for name, values in by_name:
                    v = values[i]
                    if v is not None:
                        inserts.append((project_id, key, name, v[0], v[1], source, now))
                        history.append(
                            (project_id, key, f"{prefix}{len(history):08d}{suffix}", name, None, v[0], source, now)
                        )
        else:
            current = dict(original)
            final: dict[tuple[str, str], tuple[str, float | None]] = {}
            for i in order:
                key = keys[i]
                for name, values in by_name:
                    v = values[i]
                    if v is None:
                        continue
                    k = (key, name)
                    old = current.get(k)
                    if old != v[0]:
                        history.append(
                            (project_id, key, f"{prefix}{len(history):08d}{suffix}", name, old, v[0], source, now)
                        )
                        current[k] = v[0]
                    final[k] = v
            updates, refreshes = [], []
            for (key, name), (new, number) in final.items():
                old = original.get((key, name))
                if old is None:
                    inserts.append((project_id, key, name, new, number, source, now))
                elif old == new:
                    refreshes.append((source, now, project_id, key, name))
                else:
                    updates.append((new, number, source, now, project_id, key, name))
            update_rows(conn, user_attributes, ("value", "value_num", "source", "updated_at"), _KEY_COLUMNS, updates)
            update_rows(conn, user_attributes, ("source", "updated_at"), _KEY_COLUMNS, refreshes)
        insert_rows(conn, user_attributes, _ATTRIBUTE_COLUMNS, inserts)
        insert_rows(conn, attribute_history, _HISTORY_COLUMNS, history)
        return len(history)

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
        history: list[tuple] = []
        suffix = "-" + secrets.token_hex(4)
        for user_key, name, value in accepted:
            k = (user_key, name)
            new = None if value is None else _encode(value)
            final[k] = (new, value)
            old = current.get(k)
            if old != new:
                history.append(
                    (project_id, user_key, f"{now:013d}-{len(history):06d}{suffix}", name, old, new, source, now)
                )
                current[k] = new
        inserts, updates, deletes, refreshes = [], [], [], []
        for (user_key, name), (new, value) in final.items():
            numeric = value if isinstance(value, float) else None
            if new is None:
                if (user_key, name) in original:
                    deletes.append({"k_user": user_key, "k_name": name})
            elif (user_key, name) not in original:
                inserts.append((project_id, user_key, name, new, numeric, source, now))
            elif original[(user_key, name)] == new:
                refreshes.append((source, now, project_id, user_key, name))
            else:
                updates.append((new, numeric, source, now, project_id, user_key, name))
        if deletes:
            conn.execute(
                user_attributes.delete().where(
                    user_attributes.c.project_id == project_id,
                    user_attributes.c.user_key == sa.bindparam("k_user"),
                    user_attributes.c.name == sa.bindparam("k_name"),
                ),
                deletes,
            )
        update_rows(conn, user_attributes, ("value", "value_num", "source", "updated_at"), _KEY_COLUMNS, updates)
        update_rows(conn, user_attributes, ("source", "updated_at"), _KEY_COLUMNS, refreshes)
        insert_rows(conn, user_attributes, _ATTRIBUTE_COLUMNS, inserts)
        insert_rows(conn, attribute_history, _HISTORY_COLUMNS, history)
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
