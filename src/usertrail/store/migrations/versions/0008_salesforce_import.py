"""Salesforce import: configured sources and their runs

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22 12:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "salesforce_sources",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("source_id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("login_url", sa.Text(), nullable=False),
        sa.Column("api_version", sa.Text(), nullable=False),
        sa.Column("auth_flow", sa.Text(), nullable=False),
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("consumer_key", sa.Text(), nullable=True),
        sa.Column("audience", sa.Text(), nullable=True),
        sa.Column("secrets", sa.Text(), nullable=False),
        sa.Column("object", sa.Text(), nullable=False),
        sa.Column("match_field", sa.Text(), nullable=False),
        sa.Column("fields", sa.Text(), nullable=False),
        sa.Column("interval_s", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("watermark", sa.Text(), nullable=True),
        sa.Column("next_run_at", sa.BigInteger(), nullable=False),
        sa.Column("lease_until", sa.BigInteger(), nullable=True),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        sa.Column("last_run_id", sa.Text(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "source_id", name=op.f("pk_salesforce_sources")),
    )
    with op.batch_alter_table("salesforce_sources", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_salesforce_sources_next_run_at"), ["next_run_at"], unique=False)

    op.create_table(
        "salesforce_runs",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("source_id", sa.Text(), nullable=False),
        sa.Column("trigger", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=False),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.Column("query", sa.Text(), nullable=True),
        sa.Column("pages", sa.Integer(), nullable=False),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.Column("records_applied", sa.Integer(), nullable=False),
        sa.Column("values_applied", sa.Integer(), nullable=False),
        sa.Column("values_changed", sa.Integer(), nullable=False),
        sa.Column("error_count", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("watermark_before", sa.Text(), nullable=True),
        sa.Column("watermark_after", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("project_id", "run_id", name=op.f("pk_salesforce_runs")),
    )
    with op.batch_alter_table("salesforce_runs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_salesforce_runs_project_id_source_id_run_id"),
            ["project_id", "source_id", "run_id"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("salesforce_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_salesforce_runs_project_id_source_id_run_id"))
    op.drop_table("salesforce_runs")
    with op.batch_alter_table("salesforce_sources", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_salesforce_sources_next_run_at"))
    op.drop_table("salesforce_sources")
