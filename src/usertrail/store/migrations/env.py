"""Alembic environment: runs usertrail's migrations on the connection handed in by `migrate()`."""

from alembic import context

from usertrail.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through usertrail.store.database.migrate() or `usertrail migrate`")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
