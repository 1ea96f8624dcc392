"""Custom attribute values per end user, the per-project registry under its cap, and change history.

Every integration (End User Update API, CSV, S3, Salesforce, SCIM) writes through `write()` or its
bulk form `write_columns()`, so they share one mapping and error model: a record's bad field is
reported and skipped, the rest of the record and of the batch still apply, and a new name past the
cap is refused with the cap and the registry in the error.

Storage (store/schema.py): one `custom_attributes` row per end user holding every value in the
slot its attribute owns, with each value's source and time in the row's `stamps`; and one
`attribute_changes` row per end user and write holding that write's changes. A write reads the
rows of the users it touches once, decides every change in Python (the project's writes are
serialised by a lock, so nothing changes in between) and writes each user's row once.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec
import sqlalchemy as sa

from usertrail.profiles.custom import CAP, InvalidValue, check_name, convert, infer_type
from usertrail.store.database import insert_rows, lock_key, update_rows, write_transaction
from usertrail.store.schema import SLOTS_PER_KIND, attribute_changes, attribute_registry, custom_attributes


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


# A column's values for `write_columns`, aligned with the keys: the typed value (as
# `profiles.custom.convert` returns it), or None where the row has no value (left unchanged).
ColumnValues = list[str | float | bool | None]


@dataclass
class ColumnsReport:
    """What one `write_columns` call did (or would do, for a dry run)."""

    applied: int = 0
    changed: int = 0
    registered: list[str] = field(default_factory=list)
    column_errors: list[tuple[str, str]] = field(default_factory=list)  # (name, reason): the column was refused
    rows_applied: bytearray = field(default_factory=bytearray)  # 1 where the row had a value applied


def slot_kind(type_: str) -> str:
    """The slot kind of a type: "t" (text: strings, dates) or "n" (number: numbers, booleans)."""
    return "n" if type_ in ("number", "boolean") else "t"


def free_slot(used: Iterable[str], type_: str) -> str:
    """The first slot of the type's kind that no attribute of the project owns."""
    kind, taken = slot_kind(type_), set(used)
    for i in range(SLOTS_PER_KIND):
        if f"{kind}{i}" not in taken:
            return f"{kind}{i}"
    raise AssertionError("more attributes than slots: the cap is larger than SLOTS_PER_KIND")


def stored(value: str | float | bool | None) -> str | float | None:
    """A typed value as its slot holds it (booleans as 1.0 / 0.0)."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    return value


def typed(value: str | float | None, type_: str) -> str | float | bool | None:
    """A slot's value as the attribute's typed value."""
    if value is None or type_ != "boolean":
        return value
    return value != 0


def decode_stamps(text: str | None) -> dict[str, tuple[str, int]]:
    """`custom_attributes.stamps` as {slot: (source, time)}."""
    found: dict[str, tuple[str, int]] = {}
    for source, at, slots in msgspec.json.decode(text) if text else ():
        for slot in slots:
            found[slot] = (source, at)
    return found


def encode_stamps(stamps: dict[str, tuple[str, int]]) -> str:
    """{slot: (source, time)} grouped by (source, time): a row written by one import is one group."""
    groups: dict[tuple[str, int], list[str]] = {}
    for slot, stamp in stamps.items():
        groups.setdefault(stamp, []).append(slot)
    return _encode([[source, at, slots] for (source, at), slots in groups.items()])


@dataclass(frozen=True)
class Registered:
    """One registry entry as writes and reads need it."""

    name: str
    type: str
    slot: str


def registry_of(conn: sa.Connection, project_id: int) -> dict[str, Registered]:
    """The project's attributes by name."""
    rows = conn.execute(
        sa.select(attribute_registry.c.name, attribute_registry.c.type, attribute_registry.c.slot).where(
            attribute_registry.c.project_id == project_id
        )
    ).all()
    return {r.name: Registered(r.name, r.type, r.slot) for r in rows}


def _record_writer(conn: sa.Connection, project_id: int, names, source: str, now: int) -> None:
    """Add `source` to the integrations that write each name, and mark the names updated."""
    rows = {
        r.name: r
        for r in conn.execute(
            sa.select(attribute_registry.c.name, attribute_registry.c.integrations).where(
                attribute_registry.c.project_id == project_id
            )
        ).all()
    }
    for name in names:
        row = rows.get(name)
        integrations = set(msgspec.json.decode(row.integrations)) if row is not None else {source}
        integrations.add(source)
        conn.execute(
            attribute_registry.update()
            .where(attribute_registry.c.project_id == project_id, attribute_registry.c.name == name)
            .values(integrations=_encode(sorted(integrations)), updated_at=now)
        )


def _encode(value) -> str:
    return msgspec.json.encode(value).decode()


def _register(
    conn: sa.Connection, project_id: int, registry: dict[str, Registered], name: str, type_: str, source: str, now: int
) -> Registered:
    entry = Registered(name, type_, free_slot((r.slot for r in registry.values()), type_))
    registry[name] = entry
    conn.execute(
        attribute_registry.insert().values(
            project_id=project_id,
            name=name,
            type=type_,
            integrations=_encode([source]),
            created_at=now,
            updated_at=now,
            slot=entry.slot,
        )
    )
    return entry


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
            registry = registry_of(conn, project_id)
            touched: set[str] = set()
            accepted: list[tuple[str, str, object]] = []  # (user_key, slot, typed value or None)
            for index, (user_key, values) in enumerate(records):
                for name, raw in values.items():
                    problem = check_name(name)
                    if problem:
                        report.errors.append(FieldError(index, str(name), problem))
                        continue
                    entry = registry.get(name)
                    type_ = entry.type if entry is not None else (types.get(name) or infer_type(raw))
                    if entry is not None and name in types and types[name] != entry.type:
                        report.errors.append(
                            FieldError(index, name, f"mapped as {types[name]} but registered as {entry.type}")
                        )
                        continue
                    try:
                        value = convert(raw, type_)
                    except InvalidValue as exc:
                        report.errors.append(FieldError(index, name, str(exc)))
                        continue
                    if entry is None:
                        if len(registry) >= CAP:
                            report.errors.append(FieldError(index, name, cap_reason(registry)))
                            continue
                        entry = _register(conn, project_id, registry, name, type_, source, now)
                        report.registered.append(name)
                    touched.add(name)
                    report.applied += 1
                    accepted.append((user_key, entry.slot, value))
            final: dict[str, dict[str, object]] = {}
            for user_key, slot, value in accepted:
                final.setdefault(user_key, {})[slot] = value
            report.changed = _apply(conn, project_id, source, final, registry, now)
            _record_writer(conn, project_id, touched, source, now)
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
        the column (`column_errors`); the other columns apply. Most recent write wins (rows apply in
        order: a key repeated in one call ends with its last value), and each user's changes go to
        the history as one row. `dry_run` checks everything and writes nothing.
        """
        now = now if now is not None else _now()
        report = ColumnsReport(rows_applied=bytearray(len(keys)))
        if not dry_run:
            lock_key(conn, "attribute-registry", project_id)
        registry = registry_of(conn, project_id)
        planned = dict(registry)
        accepted: list[tuple[str, str, ColumnValues]] = []  # (name, slot, values)
        for name, type_, values in columns:
            problem = check_name(name)
            entry = planned.get(name)
            if problem is None and entry is not None and entry.type != type_:
                problem = f"mapped as {type_} but registered as {entry.type}"
            if problem is None and entry is None and len(planned) >= CAP:
                problem = cap_reason(planned)
            if problem is not None:
                report.column_errors.append((name, problem))
                continue
            if entry is None:
                entry = planned[name] = Registered(name, type_, free_slot((r.slot for r in planned.values()), type_))
                report.registered.append(name)
            accepted.append((name, entry.slot, values))
            missing = values.count(None)
            report.applied += len(values) - missing
            if not missing:
                report.rows_applied = bytearray(b"\x01" * len(values))
            else:
                rows_applied = report.rows_applied
                for i, v in enumerate(values):
                    if v is not None:
                        rows_applied[i] = 1
        if dry_run:
            return report
        for name in report.registered:
            _register(conn, project_id, registry, name, planned[name].type, source, now)
        # One read of the chunk's stored rows (the columns it writes) serves both paths.
        read_slots = sorted({slot for _, slot, _ in accepted})
        current = _read_rows(conn, project_id, sorted(set(keys)), read_slots)
        changed = None if current else _insert_fresh(conn, project_id, source, keys, accepted, registry, now)
        if changed is not None:
            report.changed = changed
            _record_writer(conn, project_id, [name for name, _, _ in accepted], source, now)
            return report
        final: dict[str, dict[str, object]] = {}
        for i, key in enumerate(keys):
            row = None
            for _, slot, values in accepted:
                v = values[i]
                if v is not None:
                    if row is None:
                        row = final.get(key)
                        if row is None:
                            row = final[key] = {}
                    row[slot] = v
        report.changed = _apply(conn, project_id, source, final, registry, now, (read_slots, current))
        _record_writer(conn, project_id, [name for name, _, _ in accepted], source, now)
        return report

    def values(self, project_id: int, keys: list[str]) -> dict[str, dict]:
        """The custom attributes of an end user (all their keys; the most recent write wins)."""
        with self.engine.connect() as conn:
            registry = registry_of(conn, project_id)
            rows = conn.execute(
                sa.select(custom_attributes).where(
                    custom_attributes.c.project_id == project_id, custom_attributes.c.user_key.in_(keys)
                )
            ).all()
        found: dict[str, dict] = {}
        for row in rows:
            stamps = decode_stamps(row.stamps)
            for entry in registry.values():
                value = getattr(row, entry.slot)
                if value is None:
                    continue
                source, at = stamps.get(entry.slot, ("", 0))
                if entry.name not in found or at >= found[entry.name]["updated_at"]:
                    found[entry.name] = {"value": typed(value, entry.type), "source": source, "updated_at": at}
        return dict(sorted(found.items(), key=lambda item: item[1]["updated_at"]))

    def history(self, project_id: int, keys: list[str], name: str | None = None, limit: int = 100) -> list[dict]:
        """The changes of an end user's attributes (of `name` only, if given), newest first."""
        h = attribute_changes
        query = (
            sa.select(h.c.source, h.c.changed_at, h.c.changes)
            .where(h.c.project_id == project_id, h.c.user_key.in_(keys))
            .order_by(h.c.id.desc())
        )
        found: list[dict] = []
        with self.engine.connect() as conn:
            names = {entry.slot: entry.name for entry in registry_of(conn, project_id).values()}
            for row in conn.execute(query):
                for slot, (old, new) in reversed(msgspec.json.decode(row.changes).items()):
                    if name is not None and names.get(slot) != name:
                        continue
                    found.append(
                        {"name": names.get(slot, slot), "old": old, "new": new, "source": row.source,
                         "changed_at": row.changed_at}
                    )  # fmt: skip
                    if len(found) >= limit:
                        return found
        return found


def _read_rows(conn: sa.Connection, project_id: int, keys: list[str], slots: list[str]) -> dict[str, tuple]:
    """The stored rows of these users: {user_key: (stamps, *slot values)}, read in a few driver-level queries."""
    found: dict[str, tuple] = {}
    cursor = conn.connection.dbapi_connection.cursor()
    columns = ", ".join(["user_key", "stamps", *slots])
    try:
        if conn.dialect.name == "postgresql":
            sql = f"SELECT {columns} FROM custom_attributes WHERE project_id = %s AND user_key = ANY(%s)"
            cursor.execute(sql, (project_id, keys))
            for row in cursor.fetchall():
                found[row[0]] = row[1:]
            return found
        step = 5000
        for i in range(0, len(keys), step):
            part = keys[i : i + step]
            sql = (
                f"SELECT {columns} FROM custom_attributes WHERE project_id = ? "
                f"AND user_key IN ({', '.join('?' * len(part))})"
            )
            for row in cursor.execute(sql, (project_id, *part)):
                found[row[0]] = row[1:]
        return found
    finally:
        cursor.close()


def _insert_fresh(
    conn: sa.Connection,
    project_id: int,
    source: str,
    keys: list[str],
    columns: list[tuple[str, str, ColumnValues]],
    registry: dict[str, Registered],
    now: int,
) -> int | None:
    """The common case of an import, column-wise: distinct keys in ascending order (as exports
    write them), none of them stored yet (the caller checked), so every value is new. Returns the number of values
    written, or None (nothing written) when the case does not apply and `_apply` must decide.

    The rows are built by zipping whole columns, and each column's JSON for the history is encoded
    once per distinct value, so the per-row Python work is a tuple and a string join.
    """
    if not columns or any(a >= b for a, b in itertools.pairwise(keys)):
        return None
    types = {entry.slot: entry.type for entry in registry.values()}
    slots = [slot for _, slot, _ in columns]
    stored_columns = []
    parts = []  # per column: each row's '"slot":[null,value]' history text, or None
    for slot, (_, _, values) in zip(slots, columns, strict=True):
        boolean = types[slot] == "boolean"
        stored_columns.append([None if v is None else (1.0 if v else 0.0) for v in values] if boolean else values)
        # Columns repeat values (plans, dates, flags): encode each distinct value once, map in C.
        texts: dict[object, str | None] = {
            v: None if v is None else f'"{slot}":[null,{msgspec.json.encode(v).decode()}]' for v in set(values)
        }
        column_parts = list(map(texts.__getitem__, values))
        parts.append(column_parts)
    complete = not any(None in values for _, _, values in columns)
    if complete:
        stamps: list[str] | itertools.repeat[str] = itertools.repeat(encode_stamps(dict.fromkeys(slots, (source, now))))
        changes = ["{" + ",".join(row) + "}" for row in zip(*parts, strict=True)]
    else:
        stamps, changes = [], []
        for row in zip(*parts, strict=True):
            present = [slots[j] for j, text in enumerate(row) if text is not None]
            stamps.append(encode_stamps(dict.fromkeys(present, (source, now))) if present else "")  # type: ignore[union-attr]
            changes.append("{" + ",".join(text for text in row if text is not None) + "}" if present else "")
    rows = [row for row in zip(itertools.repeat(project_id), keys, *stored_columns, stamps, strict=False) if row[-1]]
    prefix, suffix = f"{now:013d}-", "-" + secrets.token_hex(4)
    history = [
        (project_id, key, f"{prefix}{n:08d}{suffix}", source, now, text)
        for n, (key, text) in enumerate((k, c) for k, c in zip(keys, changes, strict=True) if c)
    ]
    insert_rows(conn, custom_attributes, ("project_id", "user_key", *slots, "stamps"), rows)
    insert_rows(conn, attribute_changes, ("project_id", "user_key", "id", "source", "changed_at", "changes"), history)
    return sum(len(values) - values.count(None) for _, _, values in columns)


def _apply(
    conn: sa.Connection,
    project_id: int,
    source: str,
    final: dict[str, dict[str, object]],
    registry: dict[str, Registered],
    now: int,
    read: tuple[list[str], dict[str, tuple]] | None = None,
) -> int:
    """Write each user's final values of this write (None clears); returns how many values changed.

    One read of the users' current rows, then one bulk insert of the new rows, one set-wise update
    of the others, and one history row per user whose values changed ({slot: [old, new]}). A value
    written again unchanged keeps its value and takes the new source and time (no history).
    Users are visited in key order, so inserts sweep the primary key once and history ids count
    up in that order.
    """
    if not final:
        return 0
    types = {entry.slot: entry.type for entry in registry.values()}
    slots = sorted({slot for values in final.values() for slot in values})
    keys = sorted(final)
    if read is None:
        current = _read_rows(conn, project_id, keys, slots)
    else:  # the caller read these users' rows with (at least) these slots: keep them in our order
        read_slots, rows = read
        where = [read_slots.index(slot) + 1 for slot in slots]
        current = {key: (row[0], *(row[i] for i in where)) for key, row in rows.items()}
    stamp = (source, now)
    inserts: list[tuple] = []
    updates: list[tuple] = []
    history: list[tuple] = []
    changed = 0
    prefix, suffix = f"{now:013d}-", "-" + secrets.token_hex(4)
    encode = msgspec.json.encode
    for key in keys:
        values = final[key]
        row = current.get(key)
        changes: dict[str, list] = {}
        if row is None:
            new_slots = {slot: v for slot, v in values.items() if v is not None}
            if not new_slots:
                continue
            for slot, v in new_slots.items():
                changes[slot] = [None, v]
            inserts.append(
                (project_id, key, *(stored(new_slots.get(slot)) for slot in slots),
                 encode([[source, now, list(new_slots)]]).decode())
            )  # fmt: skip
        else:
            stamps = decode_stamps(row[0])
            out = []
            for j, slot in enumerate(slots):
                old_stored = row[j + 1]
                if slot not in values:
                    out.append(old_stored)
                    continue
                v = values[slot]
                old = typed(old_stored, types[slot])
                if old != v:
                    changes[slot] = [old, v]
                if v is None:
                    stamps.pop(slot, None)
                else:
                    stamps[slot] = stamp
                out.append(stored(v))  # type: ignore[arg-type]
            updates.append((*out, encode_stamps(stamps), project_id, key))
        if changes:
            changed += len(changes)
            history.append(
                (project_id, key, f"{prefix}{len(history):08d}{suffix}", source, now, encode(changes).decode())
            )
    insert_rows(conn, custom_attributes, ("project_id", "user_key", *slots, "stamps"), inserts)
    update_rows(conn, custom_attributes, (*slots, "stamps"), ("project_id", "user_key"), updates)
    insert_rows(conn, attribute_changes, ("project_id", "user_key", "id", "source", "changed_at", "changes"), history)
    return changed
