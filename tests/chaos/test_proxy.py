"""The chaos suite's Redis endpoint (tests/chaos/proxy.py) against two real redis-servers.

The failover fault and invariant 9 rely on it: it must forward faithfully,
keep one server connection per client (CLIENT SETNAME names stay visible and
a dead client's connection goes with it), and on a switch cut every
connection and send new ones to the new backend.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from tests.chaos.proxy import RedisProxy
from tests.servers import RedisServer


@pytest.fixture
def two_servers() -> Iterator[tuple[RedisServer, RedisServer]]:
    a, b = RedisServer(appendonly=False).start(), RedisServer(appendonly=False).start()
    try:
        yield a, b
    finally:
        a.cleanup()
        b.cleanup()


def _names(server: RedisServer) -> list[str]:
    with redis.Redis(port=server.port, decode_responses=True) as r:
        return sorted(c["name"] for c in r.client_list() if c["name"])


def _wait(cond, timeout: float = 2.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_the_proxy_forwards_and_keeps_each_clients_own_connection(two_servers: tuple[RedisServer, RedisServer]) -> None:
    a, _ = two_servers
    proxy = RedisProxy(("127.0.0.1", a.port)).start()
    try:
        # Given a client named like a worker, talking through the proxy
        r = redis.Redis.from_url(proxy.url, client_name="vm:4242:ab", socket_timeout=2)
        big = b"x" * 3_000_000
        r.set("k", big)
        assert r.get("k") == big
        # Then the server sees the client's own name
        assert _names(a) == ["vm:4242:ab"]
        # When the client goes away, its server connection goes too (crash detection by name still works)
        r.close()
        assert _wait(lambda: _names(a) == [])
    finally:
        proxy.stop()


def test_a_switch_cuts_every_connection_and_moves_new_ones(two_servers: tuple[RedisServer, RedisServer]) -> None:
    a, b = two_servers
    redis.Redis(port=b.port).set("where", "b")
    proxy = RedisProxy(("127.0.0.1", a.port)).start()
    try:
        r = redis.Redis.from_url(proxy.url, client_name="vm:1:x", socket_timeout=2, decode_responses=True)
        r.set("where", "a")
        # When the endpoint points nowhere, connections are cut and new ones refused
        assert proxy.switch(None) == 1
        assert _wait(lambda: _names(a) == [])
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(proxy.url, socket_timeout=2, retry_on_error=[], retry=None).ping()
        # When it points at the new backend, clients reconnect there
        proxy.switch(("127.0.0.1", b.port))
        assert r.get("where") == "b"
        assert _names(b) == ["vm:1:x"]
    finally:
        proxy.stop()
