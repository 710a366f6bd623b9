"""Provider 429s per API, counted fleet-wide in Redis as well as in this process's metrics.

Prometheus sums the per-process counter (``campaign_engine_provider_throttled_total``)
for graphs and alerts; the dashboard has no Prometheus to ask, so every 429
also bumps ``P:ratelimit:{<api>}:throttled`` (in the API's slot, beside its
bucket). One INCR per 429: a 429 is rare, and it already costs a pause.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis

from engine import metrics
from engine.keys import Keys


def record(limiter: Any, api: str) -> None:
    """``api`` answered 429: count it here and in Redis (never fails the caller over the count)."""
    metrics.throttled(api)
    try:
        limiter.redis.incr(limiter.keys.ratelimit(api, "throttled"))
    except redis.RedisError:
        pass


def counts(client: redis.Redis, keys: Keys, apis: Iterable[str]) -> dict[str, int]:
    """429s per API since the counters were created (or last deleted)."""
    names = list(apis)
    if not names:
        return {}
    values = client.mget([keys.ratelimit(api, "throttled") for api in names])
    return {api: int(v or 0) for api, v in zip(names, values)}
