"""Alembic environment: one connection, batch mode for SQLite, the models as target.

``render_as_batch=True`` in both ``configure`` calls (offline and online): SQLite
cannot ALTER most things, and batch mode rebuilds the table instead (NOTES.md).
The URL is the Config's ``sqlalchemy.url`` (set by migrations.runner) or, when
the ``alembic`` command is used directly, ``DATABASE_URL``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from workflow.db import database_url, make_engine, normalise_url
from workflow.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return normalise_url(config.get_main_option("sqlalchemy.url") or database_url())


def run_migrations_offline() -> None:
    """Emit SQL to stdout (``--sql``). Revisions that read data (the backfill) refuse this mode."""
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    given = config.attributes.get("connection")
    if given is not None:
        _run(given)
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            if connection.dialect.name == "sqlite":
                # A batch rebuild drops and re-creates a table; with foreign keys on,
                # SQLite would cascade that DROP into the rows that reference it.
                # The pragma only works outside a transaction, hence the raw connection.
                connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
