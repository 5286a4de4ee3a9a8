"""Alembic migrations of the history database; run by ``history.store.migrate`` when a store opens."""
