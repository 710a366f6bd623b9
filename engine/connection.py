"""One Redis client per process, from settings; warns when Redis could evict our keys.

Every timeout and retry of the client is set here, explicitly, instead of
being left to whatever the installed redis-py defaults to (5.x has no socket
timeout, so a half-open connection would hang a heartbeat thread for good; 8.x
retries on timeouts): a call without an answer fails after REDIS_SOCKET_TIMEOUT
and is retried REDIS_RETRIES times with jittered exponential backoff. Retrying
is safe because every script is replay-safe (engine/lua: client-made tokens,
tombstones, operation ids). ``client_name`` names every pooled connection
(CLIENT SETNAME), which lets recovery see at once that a worker's process is
gone (engine.recovery).
"""

from __future__ import annotations

import logging

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from engine.redact import redact_url
from engine.settings import REDIS_RETRY_BACKOFF_CAP, EngineSettings

log = logging.getLogger(__name__)

#: First pause before retrying a failed Redis call, in s (doubles up to REDIS_RETRY_BACKOFF_CAP).
REDIS_RETRY_BACKOFF_BASE = 0.05


def client_options(settings: EngineSettings, *, client_name: str | None = None) -> dict[str, object]:
    """The keyword arguments every client of the engine is built with (also for RedisCluster later)."""
    options: dict[str, object] = {
        "decode_responses": True,
        "socket_timeout": settings.redis_socket_timeout,
        "socket_connect_timeout": settings.redis_connect_timeout,
        "health_check_interval": settings.redis_health_check_interval,
        "retry": Retry(ExponentialWithJitterBackoff(cap=REDIS_RETRY_BACKOFF_CAP, base=REDIS_RETRY_BACKOFF_BASE),
                       settings.redis_retries),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
    }
    if client_name:
        options["client_name"] = client_name
    if not settings.redis_url.startswith("unix:"):
        # TCP only: redis-py 8 refuses the option for a unix socket (the embedded Redis of the demo).
        options["socket_keepalive"] = True
    if settings.redis_password:
        options["password"] = settings.redis_password
    return options


def connect(settings: EngineSettings, *, check: bool = True, client_name: str | None = None) -> redis.Redis:
    """A client with decoded responses. ``rediss://`` URLs use TLS; hiredis is used when installed.

    With REDIS_CLUSTER, redis-py's RedisCluster: REDIS_URL names any node (the
    configuration endpoint), the client discovers the shards, follows MOVED
    and ASK, and after a failover refreshes its slot map and retries (the
    same Retry: the replays that causes are safe for the same reason).
    """
    options = client_options(settings, client_name=client_name)
    client: redis.Redis
    if settings.redis_cluster:
        retry = options.pop("retry")
        # Per-node connections must not retry on their own: RedisCluster retries a command after it has
        # refreshed its slot map (a retry on the same dead node would wait out every timeout first).
        options.pop("retry_on_error")
        options.pop("health_check_interval")
        client = redis.RedisCluster.from_url(settings.redis_url, retry=retry, **options)  # type: ignore[assignment]
    else:
        client = redis.Redis.from_url(settings.redis_url, **options)
    if check:
        warn_if_evicting(client)
        if not settings.redis_cluster:
            refuse_cluster_node(client)
    return client


class RedisModeMismatch(redis.RedisError):
    """REDIS_CLUSTER does not match the server: a setting to fix, not an outage to wait out."""


def refuse_cluster_node(client: redis.Redis) -> None:
    """Raise RedisModeMismatch when a single-node client talks to a cluster node (every other key: MOVED)."""
    try:
        enabled = client.info("cluster").get("cluster_enabled")
    except redis.ResponseError:
        return  # INFO refused (a proxy): the first MOVED will say it
    if str(enabled) == "1":
        raise RedisModeMismatch("Redis is a cluster node (cluster_enabled:1): set REDIS_CLUSTER=true")


def is_cluster(client: object) -> bool:
    """Whether ``client`` talks to a Redis Cluster (scripts cannot be pipelined there: one call each)."""
    return isinstance(client, redis.RedisCluster)


def connection_name(client: redis.Redis) -> str | None:
    """The CLIENT SETNAME name of ``client``'s connections, or None when they are not named."""
    if isinstance(client, redis.RedisCluster):
        return str(client.nodes_manager.connection_kwargs.get("client_name") or "") or None
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None) or {}
    name = kwargs.get("client_name")
    return str(name) if name else None


def warn_if_evicting(client: redis.Redis) -> str | None:
    """Log a warning when ``maxmemory-policy`` is not ``noeviction`` and return the policy.

    With any eviction policy Redis may silently drop queued tasks or leases
    under memory pressure; recovery would rebuild them from the database, but
    only after the stall threshold.
    """
    try:
        answer = client.config_get("maxmemory-policy")
        if isinstance(client, redis.RedisCluster) and answer and "maxmemory-policy" not in answer:
            answer = next(iter(answer.values()))  # one answer per node: the parameter group sets them alike
        policy = answer.get("maxmemory-policy")
    except redis.ResponseError:
        # Managed services (ElastiCache) may forbid CONFIG; nothing to check then.
        return None
    except redis.ConnectionError as exc:
        raise redis.ConnectionError(f"cannot reach Redis: {redact_url(str(exc))}") from None
    if policy and policy != "noeviction":
        log.warning(
            "Redis maxmemory-policy is %r: Redis may evict queued tasks and leases; set it to 'noeviction'",
            policy,
        )
    return policy
