"""A Redis Cluster failover, as the engine's client sees it: every error on the way is an outage.

While a master is down and before its replica is promoted, the surviving
nodes answer every command — also for slots they serve themselves — with
``CLUSTERDOWN The cluster is down`` (cluster-require-full-coverage), and
redis-py raises that as ``ClusterDownError`` once its own retries are spent.
An engine loop that took it for a bug re-raised it: a worker's claim loop
ended the worker ("Redis ... is unavailable: The cluster is down"), a stage
spent an attempt. So the cluster's refusals count as outages, like a refused
connection.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from engine.connection import connect
from engine.errors import is_outage
from engine.keys import Keys
from engine.settings import EngineSettings
from tests.servers import RedisClusterServer, serve_or_fail

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

#: How long the test gives the cluster to promote the replica, in s (node timeout 2 s; ~4 s on loopback).
PROMOTION_WAIT_S = 30.0


def test_a_cluster_that_refuses_commands_is_an_outage() -> None:
    assert is_outage(redis.exceptions.ClusterDownError("The cluster is down"))
    assert is_outage(redis.exceptions.MasterDownError("Link with MASTER is down and replica-serve-stale-data is no"))
    assert is_outage(redis.exceptions.ClusterError("TTL exhausted."))
    # A wrapped one too (a handler's error raised from it)
    try:
        raise RuntimeError("stage failed") from redis.exceptions.ClusterDownError("The cluster is down")
    except RuntimeError as wrapped:
        assert is_outage(wrapped)
    # A wrong command is not
    assert not is_outage(redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"))


@pytest.fixture
def own_cluster() -> Iterator[RedisClusterServer]:
    """A cluster of this test's own: it kills a master (the session's cluster stays whole)."""
    yield from serve_or_fail(RedisClusterServer)


def test_every_error_the_client_sees_through_a_failover_is_an_outage(own_cluster: RedisClusterServer) -> None:
    # Given the engine's client on a cluster, writing to the registry's slot and to two task types' slots
    settings = EngineSettings(redis_url=own_cluster.url, redis_cluster=True, key_prefix="failover")
    client = connect(settings, client_name="test:1:failover")
    keys = Keys("failover")
    names = [keys.workers, keys.queue("alpha"), keys.queue("beta"), keys.queue("gamma")]
    errors: list[BaseException] = []
    writes = 0
    stop = threading.Event()

    def hammer() -> None:
        nonlocal writes
        while not stop.is_set():
            try:
                pipe = client.pipeline(transaction=False)  # a heartbeat: one pipeline over every slot
                for name in names:
                    pipe.set(f"{name}:beat", "1", px=2000)
                pipe.execute()
                for name in names:
                    client.rpush(name, "x")
                writes += 1
            except BaseException as exc:  # noqa: BLE001 - every kind is what the test looks at
                errors.append(exc)
            time.sleep(0.01)

    thread = threading.Thread(target=hammer, daemon=True)
    thread.start()
    try:
        # When the registry's master dies and its replica takes over
        time.sleep(0.5)
        victim = own_cluster.master_of(keys.workers)
        own_cluster.kill(victim)
        deadline = time.monotonic() + PROMOTION_WAIT_S
        while own_cluster.master_of(keys.workers) == victim:
            assert time.monotonic() < deadline, "no replica was promoted"
            time.sleep(0.05)
        promoted = writes
        time.sleep(2.0)
    finally:
        stop.set()
        thread.join(10)
        client.close()
    # Then every error on the way was an outage (a loop backs off and carries on), none a bug
    assert errors, "the failover went unnoticed: no command failed"
    assert [f"{type(e).__name__}: {e}" for e in errors if not is_outage(e)] == []
    # And the client works again after the promotion, with no new client
    assert writes > promoted
