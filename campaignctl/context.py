"""Per-process handles built from the environment: settings, database, store, Redis.

Built lazily so a command that needs only the database never connects to Redis.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping

import redis
from sqlalchemy import Engine

from engine.connection import connect
from engine.settings import EngineSettings
from workflow.db import database_url, make_engine
from workflow.store import CampaignStore


class AppContext:
    def __init__(self, env: Mapping[str, str] | None = None, *, client_name: str | None = None) -> None:
        self.env: Mapping[str, str] = dict(os.environ if env is None else env)
        #: CLIENT SETNAME of every Redis connection of this process (a worker's id: recovery then sees at
        #: once when its process is gone). Set before ``redis`` is first used.
        self.client_name = client_name
        #: Threads that use the database at once (a worker's concurrency): sizes the pool. Set before ``db``.
        self.db_concurrency: int | None = None

    @functools.cached_property
    def settings(self) -> EngineSettings:
        return EngineSettings.from_env(self.env)

    @functools.cached_property
    def database_url(self) -> str:
        return database_url(dict(self.env))

    @functools.cached_property
    def db(self) -> Engine:
        return make_engine(self.database_url, concurrency=self.db_concurrency)

    @functools.cached_property
    def store(self) -> CampaignStore:
        return CampaignStore(self.db)

    @functools.cached_property
    def redis(self) -> redis.Redis:
        return connect(self.settings, client_name=self.client_name)
