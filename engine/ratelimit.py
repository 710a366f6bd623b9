"""The shared token bucket per external API, on the Redis server's clock.

One Lua call per acquisition answers "granted" or "wait N µs"; the worker
sleeps exactly that long (or defers the task) instead of polling. Every
worker process shares the bucket, so the limit holds for the whole fleet, and
``pause`` shuts the bucket for everyone when a provider answers 429.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs
import redis

from engine.controls import ControlCache, Controls
from engine.keys import Keys
from engine.scripts import Scripts
from engine.settings import EngineSettings


@attrs.frozen
class Limit:
    """``rate`` in calls per second (before RATE_SCALE), ``burst`` the bucket size in calls."""

    rate: float = attrs.field(validator=attrs.validators.gt(0))
    burst: int = attrs.field(default=1, validator=attrs.validators.ge(1))


@attrs.frozen
class Grant:
    granted: bool
    #: Seconds to wait before asking again (0 when granted).
    wait: float
    #: The server time of the decision, in s (for audits that count grants per window).
    at: float = 0.0


class UnknownAPI(KeyError):
    """No limit is configured for this API name."""


class RateLimiter:
    """Token buckets for the configured APIs; rates are multiplied by ``settings.rate_scale``."""

    def __init__(self, client: redis.Redis, settings: EngineSettings, limits: Mapping[str, Limit]) -> None:
        self.redis = client
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.limits = dict(limits)
        self.scripts = Scripts(client)
        #: Rates an operator overrode at runtime (``campaignctl limits --set``), re-read every few seconds.
        self.controls = ControlCache(Controls(client, settings.key_prefix))

    def rate(self, api: str) -> float:
        """Scaled rate in calls per second (an operator's runtime override wins over the configured one)."""
        configured = self._limit(api).rate
        override = self.controls.rate(api)
        return (configured if override is None else override) * self.settings.rate_scale

    def _limit(self, api: str) -> Limit:
        try:
            return self.limits[api]
        except KeyError:
            raise UnknownAPI(f"no rate limit configured for API {api!r}; known: {', '.join(self.limits)}") from None

    def _bucket(self, api: str) -> list[str]:
        return [self.keys.ratelimit(api, "tokens"), self.keys.ratelimit(api, "last_refill"),
                self.keys.ratelimit(api, "paused_until")]

    def acquire(self, api: str) -> Grant:
        """Take one token now, or say how long to wait. Never blocks."""
        limit = self._limit(api)
        granted, wait_us, now_us = self.scripts.acquire_token(
            keys=self._bucket(api), args=[repr(self.rate(api)), limit.burst]
        )
        return Grant(bool(granted), int(wait_us) / 1e6, int(now_us) / 1e6)

    def pause(self, api: str, seconds: float) -> float:
        """Shut the bucket for every worker for ``seconds``; returns when it reopens (server time, s)."""
        self._limit(api)
        ms = max(1, math.ceil(seconds * 1000))
        reopen = self.scripts.pause_bucket(keys=[self.keys.ratelimit(api, "paused_until")], args=[ms])
        return int(reopen) / 1e6

    def status(self) -> dict[str, dict[str, Any]]:
        """Per API: rate (scaled, /s), burst, tokens now, paused until (server time, s, or None)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        for api in self.limits:
            for key in self._bucket(api):
                pipe.get(key)
        values = pipe.execute()
        sec, usec = values[0]
        now = int(sec) + int(usec) / 1e6
        out = {}
        for i, (api, limit) in enumerate(self.limits.items()):
            tokens_raw, last_raw, paused_raw = values[1 + 3 * i: 4 + 3 * i]
            rate = self.rate(api)
            tokens = float(limit.burst)
            if tokens_raw is not None and last_raw is not None:
                tokens = min(limit.burst, float(tokens_raw) + max(0.0, now - int(last_raw) / 1e6) * rate)
            paused_until = int(paused_raw) / 1e6 if paused_raw is not None else None
            if paused_until is not None and paused_until <= now:
                paused_until = None
            out[api] = {
                "rate": rate,
                "burst": limit.burst,
                "tokens": round(tokens, 3),
                "paused_until": paused_until,
                "paused_for": round(paused_until - now, 3) if paused_until else 0.0,
            }
        return out
