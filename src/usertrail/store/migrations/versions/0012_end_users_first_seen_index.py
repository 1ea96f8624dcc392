"""end_users: index on first seen, for segment counts by signup date

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-22 10:45:00.000000
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("end_users", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_end_users_project_id_first_seen"), ["project_id", "first_seen"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("end_users", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_end_users_project_id_first_seen"))
