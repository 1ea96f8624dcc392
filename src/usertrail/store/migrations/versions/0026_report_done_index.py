"""report_days: a partial index of completion rows in play-instance order, for the items report's
distinct completions

Revision ID: 0026
Revises: 0025
Create Date: 2026-11-22 20:40:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None

DONE_WHERE = "kind = 'done'"  # the same text as store/schema.py's REPORT_DONE_WHERE


def upgrade() -> None:
    op.create_index(
        "ix_report_days_done_instances",
        "report_days",
        ["project_id", "app_type", "object_id", "detail", "day", "last_ts"],
        unique=False,
        sqlite_where=sa.text(DONE_WHERE),
        postgresql_where=sa.text(DONE_WHERE),
    )


def downgrade() -> None:
    op.drop_index("ix_report_days_done_instances", table_name="report_days")
