"""Plan rates and the per-key token buckets the sandbox enforces.

The sandbox plays each provider's rate limit the way the real service does:
per API key, answering the provider's own 429 when a key goes over. The rates
are the plans of CONTRACTS.md (the same the engine's limiter uses), multiplied
by the time scale, in a bucket of capacity 2: one token of tolerance for
network jitter, so a client that paces itself correctly never sees a 429,
and a client that bursts sees one on its third call.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from engine.env import env_rate, parse_rate

#: Plan rate per provider (bucket names shared with the engine's limiter and the stats).
PLAN_RATES: dict[str, str] = {
    "zillow": "10/min",
    "zillow56": "10/min",
    "rentcast": "1/s",
    "bedrock": "8/min",
    "email_verification": "1/s",
    "ses": "10/s",
}
#: Every provider name the sandbox serves, in display order.
PROVIDERS: tuple[str, ...] = tuple(PLAN_RATES)
#: Tokens a fresh bucket holds and the most it can hold, in calls.
CAPACITY = 2.0

def plan_rates(env: Mapping[str, str] | None = None) -> dict[str, float]:
    """Calls per second per provider before scaling; RATE_<PROVIDER> in ``env`` overrides, parsed as for the engine."""
    env = env or {}
    return {p: env_rate(env, f"RATE_{p.upper()}", parse_rate(default)) for p, default in PLAN_RATES.items()}


@dataclass(frozen=True)
class Decision:
    """The limiter's answer for one call."""

    allowed: bool
    #: Seconds until the next token (0 when allowed).
    wait: float
    #: Whole tokens left after this call (for x-ratelimit-remaining).
    remaining: int
    #: Server monotonic time of the decision, in s (the call log's ``t``).
    t: float
    #: Seconds until the bucket is full again (x-ratelimit-reset on a success).
    refill: float = 0.0


class Limits:
    """Token buckets keyed by (provider, api key), all behind one lock (a dict lookup and a few floats)."""

    def __init__(self, rates: Mapping[str, float], time_scale: float = 1.0, capacity: float = CAPACITY) -> None:
        if time_scale <= 0:
            raise ValueError("time scale must be above 0")
        self.time_scale = time_scale
        self.capacity = capacity
        #: Scaled refill rate per provider, in tokens/s.
        self.rates = {p: r * time_scale for p, r in rates.items()}
        self._buckets: dict[tuple[str, str], list[float]] = {}  # -> [tokens, last refill]
        self._lock = threading.Lock()

    def rate(self, provider: str) -> float:
        return self.rates[provider]

    def take(self, provider: str, key: str) -> Decision:
        rate = self.rates[provider]
        with self._lock:
            now = time.monotonic()
            bucket = self._buckets.get((provider, key))
            if bucket is None:
                bucket = self._buckets[(provider, key)] = [self.capacity, now]
            tokens = min(self.capacity, bucket[0] + (now - bucket[1]) * rate)
            bucket[1] = now
            if tokens >= 1.0:
                bucket[0] = tokens - 1.0
                return Decision(True, 0.0, int(math.floor(bucket[0] + 1e-9)), now,
                                (self.capacity - bucket[0]) / rate)
            bucket[0] = tokens
            return Decision(False, (1.0 - tokens) / rate, 0, now)

    def interval(self, provider: str) -> float:
        """Seconds between two calls at the scaled plan rate."""
        return 1.0 / self.rates[provider]

    def reset(self) -> None:
        with self._lock:
            self._buckets.clear()
