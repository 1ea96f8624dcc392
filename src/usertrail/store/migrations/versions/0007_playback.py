"""Session Playback: recordings, chunks, per-project quota and key version

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22 08:20:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "playback_projects",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("quota", sa.Integer(), nullable=False),
        sa.Column("quota_anchor", sa.BigInteger(), nullable=False),
        sa.Column("period_start", sa.BigInteger(), nullable=False),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("project_id", name=op.f("pk_playback_projects")),
    )
    op.create_table(
        "playback_recordings",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("user_key", sa.Text(), nullable=False),
        sa.Column("recording_id", sa.Text(), nullable=False),
        sa.Column("env", sa.Text(), nullable=False),
        sa.Column("session_hint", sa.Text(), nullable=True),
        sa.Column("started_at", sa.BigInteger(), nullable=False),
        sa.Column("last_chunk_at", sa.BigInteger(), nullable=True),
        sa.Column("first_ts", sa.BigInteger(), nullable=True),
        sa.Column("last_ts", sa.BigInteger(), nullable=True),
        sa.Column("chunk_count", sa.Integer(), nullable=False),
        sa.Column("event_count", sa.Integer(), nullable=False),
        sa.Column("raw_bytes", sa.BigInteger(), nullable=False),
        sa.Column("stored_bytes", sa.BigInteger(), nullable=False),
        sa.Column("urls", sa.Text(), nullable=False),
        sa.Column("browser", sa.Text(), nullable=True),
        sa.Column("counted", sa.Boolean(), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "user_key", "recording_id", name=op.f("pk_playback_recordings")),
    )
    with op.batch_alter_table("playback_recordings", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_playback_recordings_project_id_started_at"), ["project_id", "started_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_playback_recordings_project_id_recording_id"), ["project_id", "recording_id"], unique=False
        )
    op.create_table(
        "playback_chunks",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("user_key", sa.Text(), nullable=False),
        sa.Column("recording_id", sa.Text(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("blob_key", sa.Text(), nullable=False),
        sa.Column("event_count", sa.Integer(), nullable=False),
        sa.Column("raw_bytes", sa.Integer(), nullable=False),
        sa.Column("stored_bytes", sa.Integer(), nullable=False),
        sa.Column("first_ts", sa.BigInteger(), nullable=True),
        sa.Column("last_ts", sa.BigInteger(), nullable=True),
        sa.Column("received_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "user_key", "recording_id", "seq", name=op.f("pk_playback_chunks")),
    )


def downgrade() -> None:
    op.drop_table("playback_chunks")
    with op.batch_alter_table("playback_recordings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_playback_recordings_project_id_recording_id"))
        batch_op.drop_index(batch_op.f("ix_playback_recordings_project_id_started_at"))
    op.drop_table("playback_recordings")
    op.drop_table("playback_projects")
