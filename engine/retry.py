"""How often and how late a failed task is tried again; how long to wait while a service is down."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import attrs

#: Attempts (first run included) before a task type's task is dead-lettered.
DEFAULT_MAX_ATTEMPTS = 5
#: First retry delay before jitter, in s.
DEFAULT_BASE = 2.0
#: Longest retry delay before jitter, in s.
DEFAULT_CAP = 300.0


@attrs.frozen
class RetryPolicy:
    """Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And Jitter").

    Full jitter spreads the retries of many tasks that failed together (a
    provider outage) over the whole window instead of sending them back in
    lockstep.
    """

    max_attempts: int = attrs.field(default=DEFAULT_MAX_ATTEMPTS, validator=attrs.validators.ge(1))
    base: float = attrs.field(default=DEFAULT_BASE, validator=attrs.validators.ge(0))
    cap: float = attrs.field(default=DEFAULT_CAP, validator=attrs.validators.ge(0))
    #: Seconds a handler of this type may run before the worker gives the task up as a lease loss
    #: (0: no limit); None: the worker's TASK_TIME_LIMIT setting.
    time_limit: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(0)))

    def exhausted(self, retry_count: int) -> bool:
        """Whether a task that failed with ``retry_count`` earlier failures has no attempt left."""
        return retry_count + 1 >= self.max_attempts

    def backoff(self, retry_count: int, rng: random.Random | None = None) -> float:
        """Seconds before the next attempt: uniform in [0, min(cap, base·2^retry_count)]."""
        ceiling = min(self.cap, self.base * (2 ** min(retry_count, 62)))
        return (rng or random).uniform(0, ceiling)


@attrs.define
class OutageBackoff:
    """Waits between tries at something that is down, growing with how long it has been down.

    The ceiling of the next wait is the length of the failure streak so far,
    at least ``base`` and at most ``cap``; the wait is drawn from
    [ceiling/2, ceiling] ("equal jitter": spread out, yet never so short that
    the tries of one loop stop backing off). Tries then come after about
    base, 2·base, 4·base, ... — exponential backoff whose memory is the
    streak's clock instead of a failure counter. That matters to a worker:
    its handler threads hit one database outage together and share one
    schedule (a counter would race to the cap within a second), and a task
    deferred by an outage needs no counter of its own in its payload.

    Not thread-safe on its own (engine.loop.Outage holds a lock around it).
    """

    base: float = attrs.field(validator=attrs.validators.gt(0))
    cap: float = attrs.field(validator=attrs.validators.gt(0))
    clock: Callable[[], float] = time.monotonic
    rng: random.Random | None = None
    #: clock() at the first failure of the current streak; None while things work.
    since: float | None = None
    #: Failures in the current streak.
    failures: int = 0

    def failure(self) -> float:
        """Count a failure; returns the seconds to wait before the next try."""
        now = self.clock()
        if self.since is None:
            self.since = now
        self.failures += 1
        ceiling = min(self.cap, max(self.base, now - self.since))
        return ceiling * (self.rng or random).uniform(0.5, 1.0)

    def success(self) -> tuple[float, int] | None:
        """End the streak; returns (how long it lasted in s, failures in it), or None if there was none."""
        if self.since is None:
            return None
        streak = (self.clock() - self.since, self.failures)
        self.since, self.failures = None, 0
        return streak
