"""end_users: indexes for sorting the user list by any standard attribute

Custom attributes sort through user_attributes' value indexes (0013's).

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-22 12:00:00.000000
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

END_USER_COLUMNS = (
    "total_sessions",
    "avg_session_duration_ms",
    "total_session_duration_ms",
    "avg_time_between_sessions_ms",
    "country",
    "region",
    "city",
    "browser_name",
    "browser_version",
)


def upgrade() -> None:
    with op.batch_alter_table("end_users", schema=None) as batch_op:
        for column in END_USER_COLUMNS:
            batch_op.create_index(
                batch_op.f(f"ix_end_users_project_id_{column}_user_key"), ["project_id", column, "user_key"]
            )


def downgrade() -> None:
    with op.batch_alter_table("end_users", schema=None) as batch_op:
        for column in reversed(END_USER_COLUMNS):
            batch_op.drop_index(batch_op.f(f"ix_end_users_project_id_{column}_user_key"))
