"""The shared token bucket per external API, on the Redis server's clock; it reserves.

One Lua call per token: the caller is told its own slot — the server time its
token becomes its own — and sleeps once until then (``wait_for_token``).
Tokens may go below zero: each one under zero is promised to a caller asleep
until its slot, and the slots of a busy bucket lie 1/rate apart, so callers
neither poll nor wake together. A caller whose slot lies beyond the longest
wait it accepts (MAX_TOKEN_SLEEP for a task) reserves nothing and defers its
task. Every worker process shares the bucket, so the limit holds for the whole
fleet, and ``pause`` shuts the bucket for everyone when a provider answers
429: the bucket empties and refills from the reopen time, so the callers after
it are spread at the rate instead of taking a full burst at once.

Never an over-grant: the slots handed out, counted on the server clock, never
put more than rate × window + burst tokens in any window.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import attrs
import redis
from redis.exceptions import NoScriptError

from engine.controls import ControlCache, Controls
from engine.errors import RateLimited
from engine.keys import Keys
from engine.scripts import Scripts
from engine.settings import EngineSettings

#: Microseconds per second: the scripts count server time in µs.
US = 1_000_000
#: How long paused_until outlives the reopen beyond a refill from empty to full, in ms.
PAUSE_LINGER_SLACK = 1000


@attrs.frozen
class Limit:
    """``rate`` in calls per second (before RATE_SCALE), ``burst`` the bucket size in calls."""

    rate: float = attrs.field(validator=attrs.validators.gt(0))
    burst: int = attrs.field(default=1, validator=attrs.validators.ge(1))


class Grant(NamedTuple):
    """The limiter's answer to one caller (a named tuple: one is built per token, cheaply).

    Granted: a token is the caller's from ``slot`` on (at once when ``wait``
    is 0). Refused: nothing was reserved, and ``wait`` says how far off the
    caller's slot would have been.
    """

    granted: bool
    #: Seconds from the decision until the token is (or would be) the caller's.
    wait: float
    #: The server time of the decision, in s (for audits that count grants per window).
    at: float = 0.0

    @property
    def slot(self) -> float:
        """Server time (s) the token is, or would be, the caller's: what an audit of grants counts."""
        return self.at + self.wait


class UnknownAPI(KeyError):
    """No limit is configured for this API name."""


#: A caller that comes to its reserved slot later than this gives the slot up (its task is deferred), in s.
LATE_SLOT = 0.1


@attrs.frozen
class _Bucket:
    """The script arguments of one API's bucket, built once: a token costs one call and little else."""

    keys: tuple[str, str, str]
    #: Scaled rate in tokens per second, as the script reads it.
    rate: str
    burst: int


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
        self._acquire_token = self.scripts.acquire_token
        self._buckets: dict[str, _Bucket] = {}

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

    def _args(self, api: str) -> _Bucket:
        """The bucket's script arguments, rebuilt only when its rate changes (an operator's runtime override)."""
        rate = repr(self.rate(api))
        bucket = self._buckets.get(api)
        if bucket is None or bucket.rate != rate:
            keys = self._bucket(api)
            bucket = self._buckets[api] = _Bucket((keys[0], keys[1], keys[2]), rate, self._limit(api).burst)
        return bucket

    def reserve(self, api: str, max_wait: float) -> Grant:
        """Reserve ``api``'s next token if it is ours within ``max_wait`` seconds. Never blocks.

        Granted with ``wait`` > 0: the token is held for the caller, who must
        not use it before ``wait`` seconds have passed (``wait_for_token``
        sleeps them). Refused: nothing is held, so a caller that gives up
        costs the others nothing.
        """
        b = self._args(api)
        max_wait_us = max(0, int(max_wait * US))
        fresh_us = self.fresh_us
        try:
            granted, wait_us, now_us = self.redis.evalsha(self._acquire_token.sha, 3, *b.keys, b.rate, b.burst,
                                                          max_wait_us, fresh_us)
        except NoScriptError:  # a restarted or flushed script cache: the Script loads it again
            granted, wait_us, now_us = self._acquire_token(keys=b.keys, args=(b.rate, b.burst, max_wait_us, fresh_us))
        return Grant(granted == 1, wait_us / US, now_us / US)

    @property
    def fresh_us(self) -> int:
        """How long after its first call a bucket without keys opens, µs (see acquire_token.lua): the longest
        wait any caller is ever promised, so the slots promised before Redis lost the keys have all passed."""
        return max(0, int(self.settings.max_token_sleep * US))

    def prime_if_fleet_starts(self) -> list[str]:
        """``prime()`` when no worker is registered (a fleet starting from nothing: nobody sleeps on a slot).

        Queue workers call it before their first heartbeat, polling workers at
        their start. Raises redis.RedisError like any call.
        """
        if self.redis.hlen(self.keys.workers):
            return []
        return self.prime()

    def prime(self) -> list[str]:
        """Open now the buckets that have no keys (a fleet starting from nothing); returns the APIs primed.

        Only for the first worker of a fleet (no worker registered): a bucket
        without keys otherwise opens MAX_TOKEN_SLEEP after its first call, in
        case Redis lost it while callers still slept on its slots.
        """
        primed = []
        replay_ms = max(1, int(self.settings.replay_window * 1000))
        for api in self.limits:
            keys = self._bucket(api)
            if self.scripts.prime_bucket(keys=[keys[0], keys[1], self.keys.ratelimit(api, f"op:{secrets.token_hex(8)}")],
                                         args=[replay_ms]):
                primed.append(api)
        return primed

    def acquire(self, api: str) -> Grant:
        """Take one token now, or say how long until one would be ours (reserving nothing). Never blocks."""
        return self.reserve(api, 0.0)

    def pause(self, api: str, seconds: float) -> float:
        """Shut the bucket for every worker for ``seconds``; returns when it reopens (server time, s).

        The bucket reopens empty and refills at the rate from then on (see
        acquire_token.lua): the callers waiting for it get slots 1/rate apart.
        """
        limit = self._limit(api)
        ms = max(1, math.ceil(seconds * 1000))
        replay_ms = max(1, int(self.settings.replay_window * 1000))
        linger_ms = math.ceil(limit.burst / self.rate(api) * 1000) + PAUSE_LINGER_SLACK
        reopen = self.scripts.pause_bucket(
            keys=[self.keys.ratelimit(api, "paused_until"), self.keys.ratelimit(api, f"op:{secrets.token_hex(8)}")],
            args=[ms, replay_ms, linger_ms])
        return int(reopen) / US

    def status(self) -> dict[str, dict[str, Any]]:
        """Per API, on the server clock: rate (scaled, /s), burst, tokens now (below 0: promised to callers
        asleep until their slot), reserved (how many), wait (s a caller asking now would sleep), paused until
        (server time, s, or None) and paused for (s), at (the server time of the answer, s)."""
        sec, usec = self.redis.time()  # apart: a cluster pipeline refuses TIME
        now = int(sec) * US + int(usec)
        pipe = self.redis.pipeline(transaction=False)
        for api in self.limits:
            for key in self._bucket(api):
                pipe.get(key)
        values = [None, *pipe.execute()]
        out = {}
        for i, (api, limit) in enumerate(self.limits.items()):
            tokens_raw, last_raw, paused_raw = values[1 + 3 * i: 4 + 3 * i]
            rate = self.rate(api)
            tokens, last = bucket_at(tokens_raw, last_raw, paused_raw, now, rate, limit.burst,
                                     0 if tokens_raw is not None else self.fresh_us)
            paused = int(paused_raw) if paused_raw is not None and int(paused_raw) > now else None
            out[api] = {
                "rate": rate,
                "burst": limit.burst,
                "tokens": round(tokens, 3),
                "reserved": math.ceil(-tokens) if tokens < 0 else 0,
                "wait": round(slot_wait(tokens, last, now, rate) / US, 6),
                "paused_until": paused / US if paused is not None else None,
                "paused_for": round((paused - now) / US, 3) if paused is not None else 0.0,
                "at": now / US,
            }
        return out


def bucket_at(tokens_raw: str | None, last_raw: str | None, paused_raw: str | None, now: int, rate: float,
              burst: int, fresh: int = 0) -> tuple[float, int]:
    """(tokens, the server time in µs they are counted at) of a bucket at ``now`` (µs), as acquire_token.lua
    sees it: a pause not yet applied empties it until the reopen (or the last promised slot), and it refills
    at ``rate``/s up to ``burst`` from then on. Tokens below zero are promised; a later time is a reopen.
    A bucket without keys is empty and opens ``fresh`` µs after its first call (here: after ``now``)."""
    tokens = float(tokens_raw) if tokens_raw is not None else 0.0
    last = int(last_raw) if last_raw is not None else now + fresh
    paused = int(paused_raw) if paused_raw is not None else 0
    if paused > last:
        last = max(paused, last + math.ceil(max(0.0, -tokens) / rate * US))
        tokens = 0.0
    if now > last:
        return min(float(burst), tokens + (now - last) * rate / US), now
    return tokens, last


def slot_wait(tokens: float, last: int, now: int, rate: float) -> int:
    """µs from ``now`` until the next token of a bucket holding ``tokens`` at ``last`` is free for a new caller."""
    return max(0, last - now) + math.ceil(max(0.0, 1.0 - tokens) / rate * US)


def wait_for_token(limiter: RateLimiter, api: str, max_sleep: float, cancel: threading.Event,
                   on_reserved: Callable[[], object] | None = None) -> None:
    """Reserve ``api``'s next token and sleep once, until it is ours: the one way a task waits for a token.

    A slot more than ``max_sleep`` seconds away reserves nothing and raises
    RateLimited(api=None, retry_after=<that wait>): the task is deferred, which
    never counts as a retry. ``cancel`` (the task's lost lease, a poller's
    shutdown) ends the sleep at once with RateLimited(retry_after=0). A
    reservation given up that way is not handed back: its slot lies among
    slots promised to others, and returning it would let the next caller take
    a slot beside the last one promised — two tokens in one interval, an
    over-grant. One token wasted on a rare event is the cheaper side.

    Nothing may stand between the slot and the provider call: ``on_reserved``
    (bookkeeping that talks to Redis) runs before the sleep, never after it.
    And a caller that comes to its slot more than LATE_SLOT late (frozen by
    SIGSTOP, a GC pause, a Redis stall in ``on_reserved``) gives it up too
    (RateLimited, retry_after 0: deferred): its slot is gone, and calling now
    would land beside the slots promised to the callers after it.
    """
    if cancel.is_set():
        raise RateLimited(f"{api}: not waiting for a token, the task is cancelled", retry_after=0.0, api=None)
    grant = limiter.reserve(api, max_sleep)
    due = time.monotonic() + grant.wait
    if not grant.granted:
        raise RateLimited(f"{api}: next token in {grant.wait:.3f}s", retry_after=grant.wait, api=None)
    if on_reserved is not None:
        on_reserved()
    remaining = due - time.monotonic()
    if remaining > 0 and cancel.wait(remaining):
        raise RateLimited(f"{api}: the wait for a token was cancelled", retry_after=0.0, api=None)
    late = time.monotonic() - due
    if late > LATE_SLOT:
        raise RateLimited(f"{api}: came to its token {late:.3f}s late; giving the slot up", retry_after=0.0, api=None)
