"""Database engine from ``DATABASE_URL``, with the locking each backend needs.

SQLite (the embedded default) is shared by several worker processes: WAL mode,
a busy timeout and ``BEGIN IMMEDIATE`` so a transaction takes the write lock up
front instead of failing with "database is locked" half way (NOTES.md measured
this). PostgreSQL URLs are normalised to the psycopg2 driver, the one installed.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

#: File name of the embedded default database, in the working directory.
DEFAULT_SQLITE_FILE = "campaign-engine.db"
#: How long a SQLite writer waits for the lock before giving up, in ms.
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: Pooled connections when the caller does not say how many threads use the engine.
DEFAULT_POOL_SIZE = 5
#: Connections beyond one per handler thread (a poll's own query, a dead-letter hook, a ping), and the
#: overflow allowed above the pool for bursts.
POOL_HEADROOM = 4


def database_url(env: dict[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    url = env.get("DATABASE_URL") or f"sqlite:///{Path.cwd() / DEFAULT_SQLITE_FILE}"
    return normalise_url(url)


def normalise_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg2 here (SQLAlchemy 2.1 would pick psycopg 3)."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg2://" + url[len(plain):]
    return url


def make_engine(url: str | None = None, *, concurrency: int | None = None, **kwargs: object) -> Engine:
    """An engine for ``url``; ``concurrency`` sizes its pool for that many threads using it at once.

    Each handler thread holds at most one connection at a time; a pool smaller
    than the thread count makes threads wait for a connection (and time out,
    which the engine reads as a database outage) though the database is fine.
    """
    url = normalise_url(url or database_url())
    for key, value in pool_options(concurrency).items():
        kwargs.setdefault(key, value)
    if make_url(url).get_backend_name() == "sqlite":
        return _sqlite_engine(url, **kwargs)
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def pool_options(concurrency: int | None) -> dict[str, int]:
    """pool_size/max_overflow for ``concurrency`` threads (the defaults when None)."""
    if concurrency is None:
        return {"pool_size": DEFAULT_POOL_SIZE}
    return {"pool_size": max(DEFAULT_POOL_SIZE, concurrency + POOL_HEADROOM), "max_overflow": POOL_HEADROOM}


def _sqlite_engine(url: str, **kwargs: object) -> Engine:
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        # Let SQLAlchemy, not the driver, issue BEGIN (pysqlite's own handling defers it).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"
