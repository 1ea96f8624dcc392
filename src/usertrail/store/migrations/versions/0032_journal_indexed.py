"""journal_indexed: rows of SQLite's separate journal file already stored, until deleted from it (store/journal.py)

Revision ID: 0032
Revises: 0031
Create Date: 2026-11-24 13:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0032"
down_revision = "0031"
branch_labels = None
depends_on = None


def upgrade() -> None:
    key = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
    op.create_table(
        "journal_indexed",
        sa.Column("project_id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("id", key, nullable=False),
        sa.PrimaryKeyConstraint("project_id", "id", name="pk_journal_indexed"),
        # Its rows are its key: on SQLite one B-tree, not a rowid table beside a key index (as in 0031).
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("journal_indexed")
