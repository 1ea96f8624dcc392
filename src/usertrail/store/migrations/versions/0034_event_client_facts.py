"""events: the client's screen, time zone, iframe flag and WalkMe recorder versions as columns

Revision ID: 0034
Revises: 0033
Create Date: 2026-11-24 22:30:00.000000

Existing rows keep NULL (their payload still holds the values): columns added without a default are
instant on both engines. Journal rows written before this revision are padded when indexed
(store/events.py, `current_row`).
"""

import sqlalchemy as sa
from alembic import op

revision = "0034"
down_revision = "0033"
branch_labels = None
depends_on = None

COLUMNS = (
    ("screen_width", sa.Integer),
    ("screen_height", sa.Integer),
    ("tz_offset", sa.Integer),
    ("in_iframe", sa.Boolean),
    ("lib_version", sa.Text),
    ("pe_version", sa.Text),
)


def upgrade() -> None:
    for name, type_ in COLUMNS:
        op.add_column("events", sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        for name, _ in COLUMNS:
            batch.drop_column(name)
