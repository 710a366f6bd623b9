"""How often and how late a failed task is tried again."""

from __future__ import annotations

import random

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
