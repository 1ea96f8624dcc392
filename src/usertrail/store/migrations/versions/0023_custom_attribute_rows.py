"""custom attributes as one row per end user: typed slots, stamps, and one history row per write

Revision ID: 0023
Revises: 0020
Create Date: 2026-11-22 14:40:00.000000

Moves `user_attributes` (one row per value) into `custom_attributes` (one row per end user, each
attribute in the slot the registry now assigns it) and `attribute_history` (one row per change)
into `attribute_changes` (one row per end user and write: the changes with the same time and
source), then drops the old tables. The downgrade moves the rows back.
"""

from __future__ import annotations

import itertools

import msgspec
import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0020"
branch_labels = None
depends_on = None

SLOTS_PER_KIND = 100
BATCH = 5_000


def _kind(type_: str) -> str:
    return "n" if type_ in ("number", "boolean") else "t"


def _stored(value, type_: str):
    if type_ == "boolean" and isinstance(value, bool):
        return 1.0 if value else 0.0
    return value


def _decode(text: str | None):
    return None if text is None else msgspec.json.decode(text)


def _create_new_tables() -> None:
    op.create_table(
        "custom_attributes",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("user_key", sa.Text(), nullable=False),
        *(sa.Column(f"t{i}", sa.Text(), nullable=True) for i in range(SLOTS_PER_KIND)),
        *(sa.Column(f"n{i}", sa.Float(), nullable=True) for i in range(SLOTS_PER_KIND)),
        sa.Column("stamps", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "user_key", name=op.f("pk_custom_attributes")),
    )
    op.create_table(
        "attribute_changes",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("user_key", sa.Text(), nullable=False),
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("changed_at", sa.BigInteger(), nullable=False),
        sa.Column("changes", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "user_key", "id", name=op.f("pk_attribute_changes")),
    )
    with op.batch_alter_table("attribute_changes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_attribute_changes_project_id_changed_at"), ["project_id", "changed_at"], unique=False
        )


def _assign_slots(conn: sa.Connection) -> dict[tuple[int, str], tuple[str, str]]:
    """Give every registered attribute a slot (in order of registration); {(project, name): (slot, type)}."""
    rows = conn.execute(
        sa.text("SELECT project_id, name, type FROM attribute_registry ORDER BY project_id, created_at, name")
    ).all()
    slots: dict[tuple[int, str], tuple[str, str]] = {}
    for project_id, group in itertools.groupby(rows, key=lambda r: r[0]):
        counters = {"t": 0, "n": 0}
        for _, name, type_ in group:
            kind = _kind(type_)
            slots[(project_id, name)] = (f"{kind}{counters[kind]}", type_)
            counters[kind] += 1
    for (project_id, name), (slot, _) in slots.items():
        conn.execute(
            sa.text("UPDATE attribute_registry SET slot = :slot WHERE project_id = :p AND name = :n"),
            {"slot": slot, "p": project_id, "n": name},
        )
    return slots


def _move_values(conn: sa.Connection, slots: dict) -> None:
    rows = conn.execute(
        sa.text(
            "SELECT project_id, user_key, name, value, source, updated_at FROM user_attributes "
            "ORDER BY project_id, user_key, updated_at, name"
        )
    )
    columns = [f"t{i}" for i in range(SLOTS_PER_KIND)] + [f"n{i}" for i in range(SLOTS_PER_KIND)]
    insert = sa.text(
        f"INSERT INTO custom_attributes (project_id, user_key, {', '.join(columns)}, stamps) "
        f"VALUES (:project_id, :user_key, {', '.join(':' + c for c in columns)}, :stamps)"
    )
    batch: list[dict] = []
    for (project_id, user_key), group in itertools.groupby(rows, key=lambda r: (r[0], r[1])):
        row: dict = dict.fromkeys(columns)
        stamps: dict[tuple[str, int], list[str]] = {}
        for _, _, name, value, source, updated_at in group:
            slot, type_ = slots[(project_id, name)]
            row[slot] = _stored(msgspec.json.decode(value), type_)
            stamps.setdefault((source, updated_at), []).append(slot)
        row.update(project_id=project_id, user_key=user_key)
        row["stamps"] = msgspec.json.encode([[s, at, names] for (s, at), names in stamps.items()]).decode()
        batch.append(row)
        if len(batch) >= BATCH:
            conn.execute(insert, batch)
            batch = []
    if batch:
        conn.execute(insert, batch)


def _move_history(conn: sa.Connection, slots: dict) -> None:
    """One row per (user, time, source): that write's changes, first old and last new value per slot."""
    rows = conn.execute(
        sa.text(
            "SELECT project_id, user_key, id, name, old_value, new_value, source, changed_at FROM attribute_history "
            "ORDER BY project_id, user_key, changed_at, source, id"
        )
    )
    insert = sa.text(
        "INSERT INTO attribute_changes (project_id, user_key, id, source, changed_at, changes) "
        "VALUES (:project_id, :user_key, :id, :source, :changed_at, :changes)"
    )
    batch: list[dict] = []
    for (project_id, user_key, changed_at, source), group in itertools.groupby(
        rows, key=lambda r: (r[0], r[1], r[7], r[6])
    ):
        changes: dict[str, list] = {}
        first_id = None
        for _, _, id_, name, old, new, _, _ in group:
            first_id = first_id or id_
            slot, _ = slots[(project_id, name)]
            if slot in changes:
                changes[slot][1] = _decode(new)
            else:
                changes[slot] = [_decode(old), _decode(new)]
        changes = {slot: pair for slot, pair in changes.items() if pair[0] != pair[1]}
        if changes:
            batch.append(
                {"project_id": project_id, "user_key": user_key, "id": first_id, "source": source,
                 "changed_at": changed_at, "changes": msgspec.json.encode(changes).decode()}
            )  # fmt: skip
        if len(batch) >= BATCH:
            conn.execute(insert, batch)
            batch = []
    if batch:
        conn.execute(insert, batch)


def upgrade() -> None:
    conn = op.get_bind()
    with op.batch_alter_table("attribute_registry", schema=None) as batch_op:
        batch_op.add_column(sa.Column("slot", sa.Text(), nullable=True))
    _create_new_tables()
    slots = _assign_slots(conn)
    _move_values(conn, slots)
    _move_history(conn, slots)
    with op.batch_alter_table("attribute_registry", schema=None) as batch_op:
        batch_op.alter_column("slot", existing_type=sa.Text(), nullable=False)
        batch_op.create_unique_constraint(batch_op.f("uq_attribute_registry_project_id_slot"), ["project_id", "slot"])
    op.drop_table("attribute_history")
    op.drop_table("user_attributes")


def downgrade() -> None:
    conn = op.get_bind()
    op.create_table(
        "user_attributes",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("user_key", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("value_num", sa.Float(), nullable=True),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "user_key", "name", name=op.f("pk_user_attributes")),
    )
    op.create_index(
        op.f("ix_user_attributes_project_id_name_value"), "user_attributes", ["project_id", "name", "value"]
    )
    op.create_index(
        op.f("ix_user_attributes_project_id_name_value_num_user_key"),
        "user_attributes",
        ["project_id", "name", "value_num", "user_key"],
        sqlite_where=sa.text("value_num IS NOT NULL"),
        postgresql_where=sa.text("value_num IS NOT NULL"),
    )
    op.create_table(
        "attribute_history",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("user_key", sa.Text(), nullable=False),
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("old_value", sa.Text(), nullable=True),
        sa.Column("new_value", sa.Text(), nullable=True),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("changed_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "user_key", "id", name=op.f("pk_attribute_history")),
    )
    op.create_index(
        op.f("ix_attribute_history_project_id_name_changed_at"),
        "attribute_history",
        ["project_id", "name", "changed_at"],
    )
    op.create_index(
        op.f("ix_attribute_history_project_id_name_new_value_changed_at_user_key"),
        "attribute_history",
        ["project_id", "name", "new_value", "changed_at", "user_key"],
    )
    registry = {
        (p, slot): (name, type_)
        for p, name, type_, slot in conn.execute(sa.text("SELECT project_id, name, type, slot FROM attribute_registry"))
    }
    values = []
    for row in conn.execute(sa.text("SELECT * FROM custom_attributes")).mappings():
        stamps = {slot: (s, at) for s, at, group in msgspec.json.decode(row["stamps"]) for slot in group}
        for slot, (source, at) in stamps.items():
            name, type_ = registry[(row["project_id"], slot)]
            value = row[slot]
            if value is None:
                continue
            typed = (value != 0) if type_ == "boolean" else value
            values.append(
                {"project_id": row["project_id"], "user_key": row["user_key"], "name": name,
                 "value": msgspec.json.encode(typed).decode(), "value_num": value if type_ == "number" else None,
                 "source": source, "updated_at": at}
            )  # fmt: skip
    if values:
        conn.execute(
            sa.text(
                "INSERT INTO user_attributes (project_id, user_key, name, value, value_num, source, updated_at) "
                "VALUES (:project_id, :user_key, :name, :value, :value_num, :source, :updated_at)"
            ),
            values,
        )
    history = []
    for row in conn.execute(sa.text("SELECT * FROM attribute_changes")).mappings():
        for n, (slot, (old, new)) in enumerate(msgspec.json.decode(row["changes"]).items()):
            history.append(
                {"project_id": row["project_id"], "user_key": row["user_key"], "id": f"{row['id']}-{n:03d}",
                 "name": registry[(row["project_id"], slot)][0],
                 "old_value": None if old is None else msgspec.json.encode(old).decode(),
                 "new_value": None if new is None else msgspec.json.encode(new).decode(),
                 "source": row["source"], "changed_at": row["changed_at"]}
            )  # fmt: skip
    if history:
        conn.execute(
            sa.text(
                "INSERT INTO attribute_history (project_id, user_key, id, name, old_value, new_value, source, "
                "changed_at) VALUES (:project_id, :user_key, :id, :name, :old_value, :new_value, :source, :changed_at)"
            ),
            history,
        )
    op.drop_table("attribute_changes")
    op.drop_table("custom_attributes")
    with op.batch_alter_table("attribute_registry", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_attribute_registry_project_id_slot"), type_="unique")
        batch_op.drop_column("slot")
