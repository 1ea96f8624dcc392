"""rejected_events.message: the reason in words, as the collection answer gave it (the `reason` column
keeps the code the overview groups by)

Revision ID: 0033
Revises: 0032
Create Date: 2026-11-24 22:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0033"
down_revision = "0032"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("rejected_events", sa.Column("message", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rejected_events") as batch:
        batch.drop_column("message")
