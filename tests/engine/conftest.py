"""Engine test fixtures: settings with short timers and a unique key prefix, a queue, worker processes.

Every engine test that uses Redis runs twice: on one redis-server (``[node]``)
and on a Redis Cluster of 3 masters and 3 replicas (``[cluster]``), where the
keys of each task type live in their own slot. A test that cannot run on a
cluster (it restarts its own server, say) is marked ``single_node``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from engine.queue import TaskQueue
from engine.settings import EngineSettings

ROOT = Path(__file__).resolve().parents[2]
#: Task types of the engine tests (the engine is generic; these are not the app's).
TYPES = ("alpha", "beta")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "redis_mode" in metafunc.fixturenames and not metafunc.definition.get_closest_marker("single_node"):
        metafunc.parametrize("redis_mode", ["node", "cluster"], indirect=True)


@pytest.fixture
def redis_mode(request: pytest.FixtureRequest) -> str:
    """``node`` or ``cluster`` (a test marked single_node is not parametrized: node)."""
    return str(getattr(request, "param", "node"))


@pytest.fixture
def redis_url(request: pytest.FixtureRequest, redis_mode: str) -> str:
    if redis_mode == "cluster":
        return str(request.getfixturevalue("redis_cluster").url)
    return str(request.getfixturevalue("redis_server").url)


@pytest.fixture
def redis_env(redis_url: str, redis_mode: str) -> dict[str, str]:
    """The environment that points a service at the test's Redis (REDIS_CLUSTER on a cluster)."""
    return {"REDIS_URL": redis_url, "REDIS_CLUSTER": "true" if redis_mode == "cluster" else "false"}


def client_for(url: str, cluster: bool) -> redis.Redis:
    """A decoded client of the test's Redis: RedisCluster on a cluster."""
    if cluster:
        return redis.RedisCluster.from_url(url, decode_responses=True)  # type: ignore[return-value]
    return redis.Redis.from_url(url, decode_responses=True)


@pytest.fixture
def redis_client(redis_url: str, redis_mode: str) -> Iterator[redis.Redis]:
    client = client_for(redis_url, redis_mode == "cluster")
    yield client
    client.close()


@pytest.fixture
def settings(redis_url: str, redis_mode: str, key_prefix: str) -> EngineSettings:
    return EngineSettings(
        redis_url=redis_url,
        redis_cluster=redis_mode == "cluster",
        key_prefix=key_prefix,
        visibility_timeout=60.0,  # long on purpose: recovery must not need it
        heartbeat_interval=0.1,
        liveness_ttl=0.6,
        max_lease_losses=3,
        recovery_interval=0.1,
        stall_threshold=0.5,
        producer_interval=0.1,
        max_token_sleep=1.0,
        shutdown_grace=2.0,
        claim_block=0.1,
    )


def beat(r: redis.Redis, queue: TaskQueue, worker_id: str, value: str, px: int = 10_000) -> None:
    """What a worker's heartbeat writes about its liveness: the key and its copy in each task type's slot."""
    r.set(queue.keys.worker(worker_id), value, px=px)
    for t in queue.task_types:
        r.set(queue.keys.liveness(t, worker_id), value, px=px)


@pytest.fixture
def queue(redis_client: redis.Redis, settings: EngineSettings) -> TaskQueue:
    return TaskQueue(redis_client, settings, TYPES)


def proc_env(settings: EngineSettings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(ROOT),
        REDIS_URL=settings.redis_url,
        REDIS_CLUSTER="true" if settings.redis_cluster else "false",
        KEY_PREFIX=settings.key_prefix,
        VISIBILITY_TIMEOUT=str(settings.visibility_timeout),
        HEARTBEAT_INTERVAL=str(settings.heartbeat_interval),
        LIVENESS_TTL=str(settings.liveness_ttl),
        MAX_LEASE_LOSSES=str(settings.max_lease_losses),
        RECOVERY_INTERVAL=str(settings.recovery_interval),
        STALL_THRESHOLD=str(settings.stall_threshold),
        MAX_TOKEN_SLEEP=str(settings.max_token_sleep),
        SHUTDOWN_GRACE=str(settings.shutdown_grace),
        CLAIM_BLOCK=str(settings.claim_block),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it holds; fail the test naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what} after {timeout}s")


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - the child owns it
    try:
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    finally:
        out.close()


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Child processes a test starts; each is killed (by its pid) at the end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(10)
