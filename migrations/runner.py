"""Run the Alembic migrations from code, from any working directory.

``campaignctl migrate`` and the tests call these instead of the ``alembic``
command: the Config is built here with ``script_location`` pointing at this
package's folder, so an installed copy finds its revisions without an
``alembic.ini`` in the current directory.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from workflow.db import make_engine, normalise_url

#: This package's folder: env.py, script.py.mako and versions/ live here.
HERE = Path(__file__).resolve().parent


def alembic_config(url: str) -> Config:
    """A Config for ``url`` that does not read any file."""
    config = Config()
    config.set_main_option("script_location", str(HERE))
    # ConfigParser interpolates '%': a password containing it must be escaped.
    config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head", *, sql: bool = False) -> None:
    command.upgrade(alembic_config(url), revision, sql=sql)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def head() -> str:
    """The newest revision id in versions/."""
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return str(script.get_current_head())


def current(url: str | None = None, *, engine: Engine | None = None) -> str | None:
    """The revision the database is at, or None for an empty (unmigrated) database."""
    own = engine is None
    engine = engine or make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        if own:
            engine.dispose()
