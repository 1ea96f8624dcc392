"""Engagement reports: the daily rollup, step plays by flow, events by time (filled from existing events)

Revision ID: 0020
Revises: 0019
Create Date: 2026-11-22 12:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

# The events the items and widget reports count (schema.REPORT_EVENTS_WHERE, written out: a migration
# keeps the text it created its index with).
REPORT_EVENTS = (
    "(app_type IN ('bizFlow', 'launcher', 'player', 'resource', 'shoutout', 'survey', 'widgetSearch', 'wt')"
    " OR type = 'search')"
)


def upgrade() -> None:
    op.create_table(
        "report_days",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("app_type", sa.Text(), nullable=False),
        sa.Column("object_id", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("user_key", sa.Text(), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("last_ts", sa.BigInteger(), nullable=False),
        sa.Column("name_ts", sa.BigInteger(), nullable=True),
        sa.Column("name", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint(
            "project_id", "kind", "day", "app_type", "object_id", "detail", "user_key", name=op.f("pk_report_days")
        ),
        sqlite_with_rowid=False,
    )
    with op.batch_alter_table("report_days", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_report_days_project_id_kind_app_type_object_id_user_key_day"),
            ["project_id", "kind", "app_type", "object_id", "user_key", "day"],
            unique=False,
        )
    op.create_table(
        "report_steps",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("user_key", sa.Text(), nullable=False),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("app_type", sa.Text(), nullable=False),
        sa.Column("flow_id", sa.Text(), nullable=False),
        sa.Column("step_id", sa.Text(), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("project_id", "user_key", "event_id", name=op.f("pk_report_steps")),
    )
    with op.batch_alter_table("report_steps", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_report_steps_project_id_app_type_flow_id_ts"),
            ["project_id", "app_type", "flow_id", "ts"],
            unique=False,
        )
    op.create_index(
        "ix_events_report_events",
        "events",
        ["project_id", "ts"],
        unique=False,
        sqlite_where=sa.text(REPORT_EVENTS),
        postgresql_where=sa.text(REPORT_EVENTS),
    )

    # Existing events are rolled up with the same code that rolls up new ones at ingest.
    from usertrail.reports.rollup import rebuild

    conn = op.get_bind()
    for (project_id,) in conn.execute(sa.text("SELECT id FROM projects ORDER BY id")).all():
        rebuild(conn, project_id)


def downgrade() -> None:
    op.drop_index("ix_events_report_events", table_name="events")
    with op.batch_alter_table("report_steps", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_report_steps_project_id_app_type_flow_id_ts"))
    op.drop_table("report_steps")
    with op.batch_alter_table("report_days", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_report_days_project_id_kind_app_type_object_id_user_key_day"))
    op.drop_table("report_days")
