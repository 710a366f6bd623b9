"""Runtime controls an operator sets in Redis, and the per-provider call counters.

An operator must be able to react to a provider without a redeploy: stop a
queue's consumers (``pause``), change a provider's rate when its plan changed
(``override``), and see how many calls and 429s each provider got. These
live in Redis so every worker of the fleet sees the same answer; workers read
them through ``ControlCache``, at most once per ``CONTROL_REFRESH`` seconds,
so a control costs nothing on the hot path.

Keys (P = key prefix), under the worker registry's hash tag (engine/keys.py),
so an override's two hashes change in one transaction on Redis Cluster too:

=================================  ======  ===============================================
``{P}:controls:paused``            set     task types whose consumers claim nothing
``{P}:controls:rates``             hash    api -> rate the limiter grants instead, calls/s (float,
                                           before RATE_SCALE; the plan rate × RATE_HEADROOM)
``{P}:controls:plans``             hash    api -> the plan rate the operator gave, calls/s (shown)
``{P}:stats:calls``                hash    api -> rate-limit grants (calls made), since reset
``{P}:stats:throttled``            hash    api -> bucket pauses after a provider's 429
=================================  ======  ===============================================

(Before the per-type layout these had no tag: ``P:controls:paused``, …;
``campaignctl upgrade-redis`` renames them.)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection

import redis

log = logging.getLogger(__name__)

#: How long a worker trusts its copy of the controls before reading them again, in s.
CONTROL_REFRESH = 2.0


class ControlKeys:
    """Key names of the controls for one key prefix."""

    def __init__(self, prefix: str) -> None:
        tag = "{" + prefix + "}"
        self.paused = f"{tag}:controls:paused"
        self.rates = f"{tag}:controls:rates"
        self.plans = f"{tag}:controls:plans"
        self.calls = f"{tag}:stats:calls"
        self.throttled = f"{tag}:stats:throttled"


class Controls:
    """Read and change the controls (the CLI and the dashboard use this)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.keys = ControlKeys(prefix)

    def pause(self, task_type: str) -> bool:
        """Stop every worker from claiming ``task_type``; False when it was already paused."""
        return bool(self.redis.sadd(self.keys.paused, task_type))

    def resume(self, task_type: str) -> bool:
        """Let workers claim ``task_type`` again; False when it was not paused."""
        return bool(self.redis.srem(self.keys.paused, task_type))

    def paused(self) -> set[str]:
        return set(self.redis.smembers(self.keys.paused))

    def set_rate(self, api: str, per_second: float, plan: float | None = None) -> None:
        """The limiter grants ``api`` ``per_second`` calls per second (before RATE_SCALE) until cleared.

        ``plan`` is the provider's plan rate the operator gave (shown by ``limits``).
        """
        if not per_second > 0:
            raise ValueError(f"a rate must be above 0, got {per_second!r}")
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.keys.rates, api, repr(float(per_second)))
        pipe.hset(self.keys.plans, api, repr(float(plan if plan is not None else per_second)))
        pipe.execute()

    def clear_rate(self, api: str) -> bool:
        """Back to the configured rate; False when there was no override."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(self.keys.rates, api)
        pipe.hdel(self.keys.plans, api)
        return bool(pipe.execute()[0])

    def rates(self) -> dict[str, float]:
        """Overriding limiter rates per API, calls per second."""
        return self._floats(self.keys.rates)

    def plans(self) -> dict[str, float]:
        """The plan rates the operator gave per API, calls per second."""
        return self._floats(self.keys.plans)

    def _floats(self, key: str) -> dict[str, float]:
        out = {}
        for api, raw in self.redis.hgetall(key).items():
            try:
                out[api] = float(raw)
            except ValueError:
                log.warning("ignoring unreadable rate override %r for %s", raw, api)
        return out

    def counters(self) -> dict[str, dict[str, int]]:
        """``{"calls": {api: n}, "throttled": {api: n}}`` since the last reset."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.calls)
        pipe.hgetall(self.keys.throttled)
        calls, throttled = pipe.execute()
        return {"calls": {k: int(v) for k, v in calls.items()},
                "throttled": {k: int(v) for k, v in throttled.items()}}

    def reset_counters(self) -> None:
        self.redis.delete(self.keys.calls, self.keys.throttled)

    def count_call(self, api: str) -> None:
        self.redis.hincrby(self.keys.calls, api, 1)

    def count_throttle(self, api: str) -> None:
        self.redis.hincrby(self.keys.throttled, api, 1)


class ControlCache:
    """A worker's copy of the controls, re-read at most every ``refresh`` seconds.

    A Redis error keeps the last copy (an outage must not pause or unpause
    anything); the worker's own outage handling deals with Redis being down.
    """

    def __init__(self, controls: Controls, refresh: float = CONTROL_REFRESH) -> None:
        self.controls = controls
        self.refresh = refresh
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._paused: frozenset[str] = frozenset()
        self._rates: dict[str, float] = {}

    def _fresh(self) -> None:
        now = time.monotonic()
        if now - self._read_at < self.refresh:
            return
        with self._lock:
            if now - self._read_at < self.refresh:
                return
            self._read_at = now
            try:
                pipe = self.controls.redis.pipeline(transaction=False)
                pipe.smembers(self.controls.keys.paused)
                pipe.hgetall(self.controls.keys.rates)
                paused, rates = pipe.execute()
            except redis.RedisError:
                return
            self._paused = frozenset(paused)
            parsed = {}
            for api, raw in rates.items():
                try:
                    parsed[api] = float(raw)
                except ValueError:
                    continue
            self._rates = parsed

    def active(self, queues: Collection[str]) -> list[str]:
        """``queues`` without the paused ones, in their order."""
        self._fresh()
        return [q for q in queues if q not in self._paused]

    def rate(self, api: str) -> float | None:
        """The overriding limiter rate of ``api`` (calls per second, before RATE_SCALE), or None."""
        self._fresh()
        return self._rates.get(api)
