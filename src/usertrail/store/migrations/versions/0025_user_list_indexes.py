"""user_words and user_properties: the user list's search words and analytics-property values, indexed
(filled from existing end users)

Revision ID: 0025
Revises: 0023
Create Date: 2026-11-22 17:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "user_words",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("user_key", sa.Text(), nullable=False),
        sa.Column("word", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "user_key", "word", name=op.f("pk_user_words")),
    )
    op.create_table(
        "user_properties",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("user_key", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "user_key", "name", name=op.f("pk_user_properties")),
    )

    # Existing end users are indexed with the same code that indexes them when their sessions close;
    # the secondary indexes are built after the rows are in (one sort instead of one insert per row).
    from usertrail.store.user_index import rebuild

    conn = op.get_bind()
    for (project_id,) in conn.execute(sa.text("SELECT id FROM projects ORDER BY id")).all():
        rebuild(conn, project_id)
    op.create_index(
        "ix_user_words_project_id_word_user_key", "user_words", ["project_id", "word", "user_key"], unique=False
    )
    op.create_index(
        "ix_user_properties_project_id_name_value_user_key",
        "user_properties",
        ["project_id", "name", "value", "user_key"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_user_properties_project_id_name_value_user_key", table_name="user_properties")
    op.drop_index("ix_user_words_project_id_word_user_key", table_name="user_words")
    op.drop_table("user_properties")
    op.drop_table("user_words")
