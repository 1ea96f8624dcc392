"""End-user keys and event ids compare byte-wise on PostgreSQL (COLLATE "C"), as on SQLite

Revision ID: 0028
Revises: 0027
Create Date: 2026-11-23 02:40:00.000000
"""

from alembic import op

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None

# Every column of schema.KEY_TEXT when this migration was written (a migration keeps its own list).
COLUMNS = (
    ("attribute_changes", "user_key"),
    ("custom_attributes", "user_key"),
    ("end_users", "user_key"),
    ("events", "user_key"),
    ("events", "event_id"),
    ("identity_links", "user_key"),
    ("identity_links", "person_key"),
    ("pending_users", "user_key"),
    ("playback_chunks", "user_key"),
    ("playback_recording_assets", "user_key"),
    ("playback_recordings", "user_key"),
    ("report_days", "user_key"),
    ("report_steps", "user_key"),
    ("scim_users", "user_key"),
    ("segment_changes", "user_key"),
    ("segment_members", "user_key"),
    ("session_hints", "user_key"),
    ("sessions", "user_key"),
    ("user_changes", "user_key"),
    ("user_properties", "user_key"),
    ("user_words", "user_key"),
)


def upgrade() -> None:
    # SQLite already compares text byte-wise; PostgreSQL re-builds the indexes on these columns.
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in COLUMNS:
        op.execute(f'ALTER TABLE {table} ALTER COLUMN {column} TYPE text COLLATE "C"')


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in COLUMNS:
        op.execute(f'ALTER TABLE {table} ALTER COLUMN {column} TYPE text COLLATE pg_catalog."default"')
