"""ingest_journal: accepted requests waiting to be indexed into events (collect/indexer.py)

Revision ID: 0029
Revises: 0028
Create Date: 2026-11-23 09:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0029"
down_revision = "0028"
branch_labels = None
depends_on = None


def upgrade() -> None:
    key = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
    op.create_table(
        "ingest_journal",
        sa.Column("project_id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("id", key, nullable=False),
        sa.Column("received_at", sa.BigInteger, nullable=False),
        sa.Column("events", sa.Integer, nullable=False),
        sa.Column("record", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("project_id", "id", name="pk_ingest_journal"),
    )
    op.create_index("ix_ingest_journal_id", "ingest_journal", ["id"])
    if op.get_bind().dialect.name == "postgresql":
        # Records arrive zstd-compressed: PostgreSQL's own TOAST compression would only spend CPU.
        op.execute("ALTER TABLE ingest_journal ALTER COLUMN record SET STORAGE EXTERNAL")


def downgrade() -> None:
    op.drop_index("ix_ingest_journal_id", table_name="ingest_journal")
    op.drop_table("ingest_journal")
