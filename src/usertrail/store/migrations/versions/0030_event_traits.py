"""events.traits: the event's kind and which value columns are set, for the full rebuild (sessions/traits.py)

Revision ID: 0030
Revises: 0029
Create Date: 2026-11-24 01:00:00.000000

Existing rows keep NULL: the rebuild's scan computes their traits from the columns (one column added
without a default is instant on both engines; filling 5M rows would rewrite the table).
"""

import sqlalchemy as sa
from alembic import op

revision = "0030"
down_revision = "0029"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("events", sa.Column("traits", sa.SmallInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_column("traits")
