"""One Redis client per process, from settings; warns when Redis could evict our keys."""

from __future__ import annotations

import logging

import redis

from engine.redact import redact_url
from engine.settings import EngineSettings

log = logging.getLogger(__name__)



def connect(settings: EngineSettings, *, check: bool = True) -> redis.Redis:
    """A client with decoded responses. ``rediss://`` URLs use TLS.

    hiredis is picked up by redis-py automatically when installed.
    """
    kwargs: dict[str, object] = {
        "decode_responses": True,
        "health_check_interval": 30,
        "retry_on_timeout": True,
    }
    if not settings.redis_url.startswith("unix:"):
        # TCP only: redis-py 8 refuses the option for a unix socket (the embedded Redis of the demo).
        kwargs["socket_keepalive"] = True
    if settings.redis_password:
        kwargs["password"] = settings.redis_password
    client = redis.Redis.from_url(settings.redis_url, **kwargs)
    if check:
        warn_if_evicting(client)
    return client


def warn_if_evicting(client: redis.Redis) -> str | None:
    """Log a warning when ``maxmemory-policy`` is not ``noeviction`` and return the policy.

    With any eviction policy Redis may silently drop queued tasks or leases
    under memory pressure; recovery would rebuild them from the database, but
    only after the stall threshold.
    """
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
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
