"""user_change_state and user_changes: the change log of end_users and custom_attributes that keeps
the column-wise segment counter's in-memory copy current (segments/columns.py)

Revision ID: 0027
Revises: 0026
Create Date: 2026-11-22 23:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "user_change_state",
        sa.Column("project_id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("rebuilt_version", sa.BigInteger, nullable=False),
        sa.Column("pruned_version", sa.BigInteger, nullable=False),
        sa.Column("checkpoint_version", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("project_id", name="pk_user_change_state"),
    )
    op.create_table(
        "user_changes",
        sa.Column("project_id", sa.Integer, nullable=False),
        sa.Column("user_key", sa.Text, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("project_id", "user_key", "version", name="pk_user_changes"),
    )
    op.create_index("ix_user_changes_project_id_version", "user_changes", ["project_id", "version"])


def downgrade() -> None:
    op.drop_index("ix_user_changes_project_id_version", table_name="user_changes")
    op.drop_table("user_changes")
    op.drop_table("user_change_state")
