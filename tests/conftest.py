"""Shared fixtures: a real redis-server and PostgreSQL per test session, SQLite per test.

The servers start on the first test that needs them and stop at the end of the
session. A missing server binary fails the test that needed it (never a skip),
so CI cannot go green by not running.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import Engine

from tests.servers import PostgresServer, RedisClusterServer, RedisServer, serve_or_fail
from workflow.db import make_engine
from workflow.models import Base
from workflow.store import CampaignStore


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    yield from serve_or_fail(RedisServer)


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServer]:
    """A Redis Cluster of 3 masters and 3 replicas on loopback, for the session (started on first use)."""
    yield from serve_or_fail(RedisClusterServer)


@pytest.fixture
def key_prefix() -> str:
    """A unique key prefix per test, so tests never see each other's keys."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    yield from serve_or_fail(PostgresServer)


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    """A fresh, empty PostgreSQL database for this test."""
    return pg_server.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def sqlite_url(tmp_path) -> str:  # type: ignore[no-untyped-def]
    return f"sqlite:///{tmp_path / 'campaigns.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Runs the test once on SQLite (the embedded default) and once on PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def db_engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def store(db_engine: Engine) -> CampaignStore:
    return CampaignStore(db_engine)
