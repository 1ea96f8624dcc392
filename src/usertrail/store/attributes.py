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
import operator
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec
import sqlalchemy as sa

from usertrail.profiles.custom import CAP, InvalidValue, check_name, convert, infer_type
from usertrail.profiles.history import ColumnsHistory, ColumnValues, new_values_history
from usertrail.store.changes import note_project_changed, note_users_changed
from usertrail.store.database import insert_columns, insert_rows, lock_key, update_rows, write_transaction
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


def plan_columns(
    planned: dict[str, Registered], columns: list[tuple[str, str]]
) -> list[tuple[Registered | None, str | None]]:
    """Where each `(name, type)` column of a bulk write goes: its registry entry (new names get the
    next free slot of their kind, added to `planned`), or None and why the column is refused (a bad
    name, a type that clashes with the registry, a new name past the cap)."""
    found: list[tuple[Registered | None, str | None]] = []
    for name, type_ in columns:
        problem = check_name(name)
        entry = planned.get(name)
        if problem is None and entry is not None and entry.type != type_:
            problem = f"mapped as {type_} but registered as {entry.type}"
        if problem is None and entry is None and len(planned) >= CAP:
            problem = cap_reason(planned)
        if problem is not None:
            found.append((None, problem))
            continue
        if entry is None:
            entry = planned[name] = Registered(name, type_, free_slot((r.slot for r in planned.values()), type_))
        found.append((entry, None))
    return found


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
            note_users_changed(conn, project_id, final)
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
        history: ColumnsHistory | None = None,
        whole_project: bool = False,
    ) -> ColumnsReport:
        """Bulk form of `write` for imports: many rows, a few typed columns, in the caller's transaction.

        `columns` holds `(name, type, values)` with values already converted by
        `profiles.custom.CellConverter` for that type. The rules are `write`'s, decided once per
        column: a bad name, a type that clashes with the registry, or a new name past the cap refuses
        the column (`column_errors`); the other columns apply. Most recent write wins (rows apply in
        order: a key repeated in one call ends with its last value), and each user's changes go to
        the history as one row. `dry_run` checks everything and writes nothing. `history` may bring
        each row's history text made beforehand (by an import's reader process) for the slots the
        columns were expected to take; it is used only if they took exactly those. `whole_project`
        records the change for every user of the project instead of for `keys` (an import past
        `changes.WHOLE_PROJECT_KEYS` users, whose readers re-read the whole project anyway).
        """
        now = now if now is not None else _now()
        report = ColumnsReport(rows_applied=bytearray(len(keys)))
        if not dry_run:
            lock_key(conn, "attribute-registry", project_id)
        registry = registry_of(conn, project_id)
        planned = dict(registry)
        accepted: list[tuple[str, str, ColumnValues]] = []  # (name, slot, values)
        for (name, _, values), (entry, problem) in zip(
            columns, plan_columns(planned, [(name, type_) for name, type_, _ in columns]), strict=True
        ):
            if entry is None:
                report.column_errors.append((name, problem))  # type: ignore[arg-type]
                continue
            if name not in registry:
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
        report.changed = _write_values(conn, project_id, source, keys, accepted, registry, now, history)
        _record_writer(conn, project_id, [name for name, _, _ in accepted], source, now)
        if accepted and whole_project:
            note_project_changed(conn, project_id)
        elif accepted:
            note_users_changed(conn, project_id, keys)
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


def _write_values(
    conn: sa.Connection,
    project_id: int,
    source: str,
    keys: list[str],
    columns: list[tuple[str, str, ColumnValues]],
    registry: dict[str, Registered],
    now: int,
    history: ColumnsHistory | None = None,
) -> int:
    """Write `write_columns`' accepted columns; returns how many values changed.

    Distinct keys (one row per user, as exports write them) take the column-wise paths: users not
    stored yet are inserted (`_insert_fresh`, with `history`'s texts if the columns took its slots),
    stored ones compared column by column (`_update_stored`). A key repeated in the chunk goes
    through `_apply`, which applies the rows in order so that the last value wins.
    """
    if not columns:
        return 0
    texts = None
    if history is not None and history.slots == tuple(slot for _, slot, _ in columns):
        texts = history.texts
    read_slots = sorted({slot for _, slot, _ in columns})
    distinct = len(set(keys)) == len(keys)
    if distinct and not _any_stored(conn, project_id, keys):
        return _insert_fresh(conn, project_id, source, keys, columns, registry, now, texts)
    current = _read_rows(conn, project_id, keys if distinct else sorted(set(keys)), read_slots)
    if distinct:
        stored_rows = list(map(current.get, keys))
        new = [i for i, row in enumerate(stored_rows) if row is None]
        changed = 0
        if new:
            new_texts = None if texts is None else [texts[i] for i in new]
            changed += _insert_fresh(conn, project_id, source, *_pick(new, keys, columns), registry, now, new_texts)
            known = [i for i, row in enumerate(stored_rows) if row is not None]
            keys, columns = _pick(known, keys, columns)
            stored_rows = [stored_rows[i] for i in known]
        return changed + _update_stored(conn, project_id, source, keys, columns, stored_rows, read_slots, registry, now)
    final: dict[str, dict[str, object]] = {}
    for i, key in enumerate(keys):
        row = None
        for _, slot, values in columns:
            v = values[i]
            if v is not None:
                if row is None:
                    row = final.get(key)
                    if row is None:
                        row = final[key] = {}
                row[slot] = v
    return _apply(conn, project_id, source, final, registry, now, (read_slots, current))


def _pick(
    rows: list[int], keys: list[str], columns: list[tuple[str, str, ColumnValues]]
) -> tuple[list[str], list[tuple[str, str, ColumnValues]]]:
    """These rows of a chunk's keys and columns."""
    return [keys[i] for i in rows], [(name, slot, [values[i] for i in rows]) for name, slot, values in columns]


def _any_stored(conn: sa.Connection, project_id: int, keys: list[str]) -> bool:
    """Whether any of these users may have a stored row: one probe of the range between the least
    and the greatest key, so a chunk of new users (an export's next ids) costs one index seek instead
    of a probe per key. Both engines compare keys by code point, as Python does (on PostgreSQL the
    key columns are `COLLATE "C"`: UTF-8 bytes sort in code-point order)."""
    marker = "%s" if conn.dialect.name == "postgresql" else "?"
    sql = (
        f"SELECT 1 FROM custom_attributes WHERE project_id = {marker} "
        f"AND user_key BETWEEN {marker} AND {marker} LIMIT 1"
    )
    return conn.exec_driver_sql(sql, (project_id, min(keys), max(keys))).first() is not None


# The users of a chunk reach SQL as one parameter, their keys as a JSON array: one encoded text
# instead of a parameter per key (psycopg dumps a list of 20,000 strings at ~2 µs each; SQLite caps
# the parameters of a statement). On PostgreSQL the keys drive a join, so each is one primary-key
# probe: `user_key = ANY(ARRAY(subquery))` was planned as a scan of the project's rows testing each
# against the whole array (122 s for 20,000 keys against 100,000 rows).


def _read_rows(conn: sa.Connection, project_id: int, keys: list[str], slots: list[str]) -> dict[str, tuple]:
    """The stored rows of these users: {user_key: (stamps, *slot values)}, in one driver-level query."""
    columns = ", ".join(f"c.{name}" for name in ("user_key", "stamps", *slots))
    if conn.dialect.name == "postgresql":
        sql = (
            f"SELECT {columns} FROM json_array_elements_text(%s::json) AS k(key) "
            "JOIN custom_attributes AS c ON c.project_id = %s AND c.user_key = k.key"
        )
        params: tuple = (_encode(keys), project_id)
    else:
        sql = (
            f"SELECT {columns} FROM custom_attributes AS c "
            "WHERE c.project_id = ? AND c.user_key IN (SELECT value FROM json_each(?))"
        )
        params = (project_id, _encode(keys))
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        cursor.execute(sql, params)
        return {row[0]: row[1:] for row in cursor.fetchall()}
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
    history: list[str] | None = None,
) -> int:
    """Insert the rows of users none of whom is stored yet (distinct keys; the caller checked),
    column-wise; every value is new. Returns the number of values written. `history`: each row's
    history text, if it was made beforehand (`new_values_history`).

    The row of an import usually has every column (complete): then the stamps are one text for all
    rows. Both tables take the rows column-wise (`insert_columns`), so no row tuple is built here.
    """
    types = {entry.slot: entry.type for entry in registry.values()}
    slots = [slot for _, slot, _ in columns]
    stored_columns = [
        [None if v is None else (1.0 if v else 0.0) for v in values] if types[slot] == "boolean" else values
        for slot, (_, _, values) in zip(slots, columns, strict=True)
    ]
    changes = history if history is not None else new_values_history(slots, [values for _, _, values in columns])
    if not any(None in values for _, _, values in columns):
        stamps = encode_stamps(dict.fromkeys(slots, (source, now)))
        insert_columns(
            conn, custom_attributes, {"project_id": project_id, "stamps": stamps}, ["user_key", *slots],
            [keys, *stored_columns],
        )  # fmt: skip
        _insert_history(conn, project_id, source, now, keys, changes)
        return len(keys) * len(columns)
    # Some rows lack some values: each row's stamps name its own slots (one text per pattern).
    patterns: dict[tuple[str, ...], str] = {}
    row_stamps, kept = [], []
    for i, row in enumerate(zip(*(values for _, _, values in columns), strict=True)):
        present = tuple(slot for slot, v in zip(slots, row, strict=True) if v is not None)
        if not present:
            continue
        text = patterns.get(present)
        if text is None:
            text = patterns[present] = encode_stamps(dict.fromkeys(present, (source, now)))
        row_stamps.append(text)
        kept.append(i)
    if len(kept) < len(keys):
        keys, columns = _pick(kept, keys, columns)
        stored_columns = [[column[i] for i in kept] for column in stored_columns]
        changes = [changes[i] for i in kept]
    insert_columns(
        conn, custom_attributes, {"project_id": project_id}, ["user_key", *slots, "stamps"],
        [keys, *stored_columns, row_stamps],
    )  # fmt: skip
    _insert_history(conn, project_id, source, now, keys, changes)
    return sum(len(values) - values.count(None) for _, _, values in columns)


def _insert_history(
    conn: sa.Connection, project_id: int, source: str, now: int, keys: list[str], changes: list[str]
) -> None:
    """One `attribute_changes` row per user of this write: its changes as JSON text.

    The rows share one id, time-ordered and unique by its random part: the key is (project_id,
    user_key, id) and a user has one row per write, so the id only orders a user's own writes.
    """
    fixed = {"project_id": project_id, "id": f"{now:013d}-{secrets.token_hex(6)}", "source": source, "changed_at": now}
    insert_columns(conn, attribute_changes, fixed, ["user_key", "changes"], [keys, changes])


def _update_stored(
    conn: sa.Connection,
    project_id: int,
    source: str,
    keys: list[str],
    columns: list[tuple[str, str, ColumnValues]],
    rows: list[tuple],
    read_slots: list[str],
    registry: dict[str, Registered],
    now: int,
) -> int:
    """Write the values of users who have a stored row (distinct keys; `rows` their stored rows as
    `_read_rows` returns them, in the same order). Returns how many values changed.

    The same rules as `_apply`, decided column by column: a value equal to the stored one keeps it
    and takes the new source and time (no history); a different one is changed and goes to the
    user's history row. A re-import of the same file changes no value, so each row only gets new
    stamps; those are few distinct texts (one per earlier write), so they are computed once each and
    written by one statement per text instead of a row update per user.
    """
    if not keys:
        return 0
    types = {entry.slot: entry.type for entry in registry.values()}
    stamp = (source, now)
    new_columns, differs = [], [False] * len(keys)
    for _, slot, values in columns:
        new = [None if v is None else (1.0 if v else 0.0) for v in values] if types[slot] == "boolean" else values
        old = list(map(operator.itemgetter(read_slots.index(slot) + 1), rows))
        diff = map(operator.ne, new, old)
        if None in new:  # a row without a value leaves it unchanged
            diff = (d and v is not None for d, v in zip(diff, new, strict=True))
        differs = list(map(operator.or_, differs, diff))
        new_columns.append(new)
    # New stamps per row: the stored ones with this write's slots restamped, once per distinct case.
    slots = [slot for _, slot, _ in columns]
    complete = not any(None in new for new in new_columns)
    restamped: dict[tuple, str] = {}
    row_stamps = []
    for i, row in enumerate(rows):
        present = tuple(slots)
        if not complete:
            present = tuple(s for s, new in zip(slots, new_columns, strict=True) if new[i] is not None)
        case = (row[0], present)
        text = restamped.get(case)
        if text is None:
            found = decode_stamps(row[0])
            found.update(dict.fromkeys(present, stamp))
            text = restamped[case] = encode_stamps(found)
        row_stamps.append(text)
    unchanged: dict[str, list[str]] = {}
    updates, history_keys, history = [], [], []
    changed = 0
    for i, key in enumerate(keys):
        if not differs[i]:
            unchanged.setdefault(row_stamps[i], []).append(key)
            continue
        row, out, changes = rows[i], [], {}
        for slot, new in zip(slots, new_columns, strict=True):
            old_stored, v = row[read_slots.index(slot) + 1], new[i]
            if v is None:
                out.append(old_stored)
                continue
            if v != old_stored:
                changes[slot] = [typed(old_stored, types[slot]), typed(v, types[slot])]
            out.append(v)
        changed += len(changes)
        updates.append((*out, row_stamps[i], project_id, key))
        history_keys.append(key)
        history.append(_encode(changes))
    _restamp(conn, project_id, unchanged)
    update_rows(conn, custom_attributes, (*slots, "stamps"), ("project_id", "user_key"), updates)
    _insert_history(conn, project_id, source, now, history_keys, history)
    return changed


def _restamp(conn: sa.Connection, project_id: int, keys_by_stamps: dict[str, list[str]]) -> None:
    """Set `stamps` of users whose values this write left as they were, one statement per stamps text
    (a row update per user where the texts are as many as the users)."""
    if len(keys_by_stamps) > 100:
        update_rows(
            conn, custom_attributes, ("stamps",), ("project_id", "user_key"),
            [(stamps, project_id, key) for stamps, keys in keys_by_stamps.items() for key in keys],
        )  # fmt: skip
        return
    for stamps, keys in keys_by_stamps.items():
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(
                "UPDATE custom_attributes AS c SET stamps = %s FROM json_array_elements_text(%s::json) AS k(key) "
                "WHERE c.project_id = %s AND c.user_key = k.key",
                (stamps, _encode(keys), project_id),
            )
        else:
            conn.exec_driver_sql(
                "UPDATE custom_attributes SET stamps = ? WHERE project_id = ? "
                "AND user_key IN (SELECT value FROM json_each(?))",
                (stamps, project_id, _encode(keys)),
            )


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
