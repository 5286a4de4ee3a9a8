"""Alembic migrations of the history database; run by ``store.migrate`` when a store opens."""
