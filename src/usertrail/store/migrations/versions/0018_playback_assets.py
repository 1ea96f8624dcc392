"""Session Playback assets: stored assets, the per-project URL cache, each recording's assets

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-22 14:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "playback_assets",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.Text(), nullable=False),
        sa.Column("content_type", sa.Text(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("refs", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "sha256", name=op.f("pk_playback_assets")),
    )
    op.create_table(
        "playback_asset_urls",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("url_hash", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("sha256", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("fetched_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "url_hash", name=op.f("pk_playback_asset_urls")),
    )
    op.create_table(
        "playback_recording_assets",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("user_key", sa.Text(), nullable=False),
        sa.Column("recording_id", sa.Text(), nullable=False),
        sa.Column("url_hash", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("env", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("sha256", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "project_id", "user_key", "recording_id", "url_hash", name=op.f("pk_playback_recording_assets")
        ),
    )
    with op.batch_alter_table("playback_recording_assets", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_playback_recording_assets_status_created_at"), ["status", "created_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_playback_recording_assets_project_id_recording_id"),
            ["project_id", "recording_id"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("playback_recording_assets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_playback_recording_assets_project_id_recording_id"))
        batch_op.drop_index(batch_op.f("ix_playback_recording_assets_status_created_at"))
    op.drop_table("playback_recording_assets")
    op.drop_table("playback_asset_urls")
    op.drop_table("playback_assets")
