"""Keep: the history store (SQLite or PostgreSQL through SQLAlchemy) and what is read back from it.

``schema`` is the tables, ``migrations`` upgrades an old database in place, ``store`` is the sink
that writes ticks, rolls them up and retains them, ``report`` the queries behind ``flopwatch
history`` and ``flopwatch report``. May import: ``model``, ``config``, ``judge``, ``sources``.
"""
