"""segment counts: covering indexes for standard-attribute ranges, custom values and attribute changes

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-22 11:10:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("end_users", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_end_users_project_id_total_sessions_last_seen_first_seen"),
            ["project_id", "total_sessions", "last_seen", "first_seen"],
            unique=False,
        )
    if op.get_bind().dialect.name == "postgresql":
        # PostgreSQL only: the same key, now covering user_key (SQLite: see store/schema.py).
        op.drop_index("ix_user_attributes_project_id_name_value", table_name="user_attributes")
        op.create_index(
            "ix_user_attributes_project_id_name_value",
            "user_attributes",
            ["project_id", "name", "value"],
            postgresql_include=["user_key"],
        )
    with op.batch_alter_table("user_attributes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_user_attributes_project_id_name_value_num_user_key"),
            ["project_id", "name", "value_num", "user_key"],
            unique=False,
            sqlite_where=sa.text("value_num IS NOT NULL"),
            postgresql_where=sa.text("value_num IS NOT NULL"),
        )
    with op.batch_alter_table("attribute_history", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_attribute_history_project_id_name_new_value_changed_at_user_key"),
            ["project_id", "name", "new_value", "changed_at", "user_key"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("attribute_history", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_attribute_history_project_id_name_new_value_changed_at_user_key"))
    with op.batch_alter_table("user_attributes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_user_attributes_project_id_name_value_num_user_key"))
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_user_attributes_project_id_name_value", table_name="user_attributes")
        op.create_index("ix_user_attributes_project_id_name_value", "user_attributes", ["project_id", "name", "value"])
    with op.batch_alter_table("end_users", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_end_users_project_id_total_sessions_last_seen_first_seen"))
