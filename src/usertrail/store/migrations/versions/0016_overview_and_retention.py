"""sessions: covering index by start time; events: partial index of page views (the overview page);
retention_settings: per-project retention periods

Revision ID: 0016
Revises: 0012
Create Date: 2026-11-22 12:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0012"
branch_labels = None
depends_on = None

PAGE_VIEWS = "type IN ('page', 'pageChange', 'pageView', 'pageview')"


def upgrade() -> None:
    op.create_table(
        "retention_settings",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("user_days", sa.Integer(), nullable=True),
        sa.Column("playback_days", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"]),
        sa.PrimaryKeyConstraint("project_id", name=op.f("pk_retention_settings")),
    )
    op.create_index(
        "ix_sessions_overview",
        "sessions",
        ["project_id", "start_ts", "status", "is_empty", "user_key", "event_count"],
        unique=False,
    )
    op.create_index(
        "ix_events_page_views",
        "events",
        ["project_id", "ts"],
        unique=False,
        sqlite_where=sa.text(PAGE_VIEWS),
        postgresql_where=sa.text(PAGE_VIEWS),
    )


def downgrade() -> None:
    op.drop_index("ix_events_page_views", table_name="events")
    op.drop_index("ix_sessions_overview", table_name="sessions")
    op.drop_table("retention_settings")
