"""SQLite: the narrow per-user lookup tables are stored in their key's order (WITHOUT ROWID)

Revision ID: 0031
Revises: 0030
Create Date: 2026-11-24 04:00:00.000000

A rowid table keeps its rows in one B-tree and its primary key in another: user_words, whose row is its key,
was stored twice. Stored in the key's B-tree alone, the 5M-event rebuild's 1.35M user_words and 630k
session_hints rows take 238 MB instead of 378 MB, and their inserts and commit about 1 s less
(docs/benchmarks.md). PostgreSQL has no such storage choice: nothing changes there.
"""

from alembic import op

revision = "0031"
down_revision = "0030"
branch_labels = None
depends_on = None

# Every table this migration changes (a migration keeps its own list).
TABLES = ("user_words", "user_properties", "session_hints", "identity_links")


def _store(with_rowid: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in TABLES:
        # Recreated from the reflected definition, rows and indexes copied over.
        with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_with_rowid": with_rowid}):
            pass


def upgrade() -> None:
    _store(with_rowid=False)


def downgrade() -> None:
    _store(with_rowid=True)
