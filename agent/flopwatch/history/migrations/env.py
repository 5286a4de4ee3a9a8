"""Alembic environment: always handed an open connection by ``flopwatch.history.store.migrate``."""

from alembic import context

from flopwatch.history.schema import VERSION_TABLE

context.configure(
    connection=context.config.attributes["connection"],
    version_table=VERSION_TABLE,
    # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
