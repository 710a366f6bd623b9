"""What a handler gets besides its task: the rate limiter, follow-up enqueue, its lease."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from engine import logcontext, metrics
from engine.errors import RateLimited
from engine.ratelimit import wait_for_token
from engine.task import Task

if TYPE_CHECKING:
    from engine.queue import TaskQueue
    from engine.ratelimit import RateLimiter

log = logging.getLogger(__name__)

#: A token wait shorter than this is a granted token, not a wait (the round trip), in s.
SLEPT_AT_LEAST = 0.001


class TaskContext:
    """Per-task helpers; handlers stay free of Redis plumbing.

    ``acquire(api)`` reserves a token and sleeps once until its slot when
    that is at most MAX_TOKEN_SLEEP away, and otherwise raises
    RateLimited(api=None) so the worker defers the task through the delayed
    set without spending an attempt. ``waited`` says how long it has slept.

    ``sleep`` is no longer used: the token wait sleeps on ``lease_lost``, so
    that a lost lease ends it at once; the argument is still accepted.
    """

    def __init__(
        self,
        task: Task,
        worker_id: str,
        *,
        queue: TaskQueue,
        limiter: RateLimiter | None,
        max_token_sleep: float,
        heartbeat: Callable[[], bool] | None = None,
        sleep: Callable[[float], object] | None = None,
        attempt: str | None = None,
    ) -> None:
        self.task = task
        self.worker_id = worker_id
        #: Unique to this lease of this task (the random part of its fencing token): names an owner
        #: that a later attempt of the same task can tell apart (e.g. a send intent's owner).
        self.attempt = attempt or secrets.token_hex(8)
        self._queue = queue
        self._limiter = limiter
        self._max_sleep = max_token_sleep
        self._heartbeat = heartbeat
        del sleep  # accepted, no longer used (see the class docstring)
        #: Set by the worker when a renewal found the lease taken away: the result will not count.
        self.lease_lost = threading.Event()
        #: (seconds spent in finished ``acquire`` calls, monotonic() when the current one began or None),
        #: one tuple so that ``waited``, read from the worker's threads, never sees half an update.
        self._wait: tuple[float, float | None] = (0.0, None)

    def acquire(self, api: str) -> None:
        """Reserve one token of ``api`` and sleep once, until its slot (engine.ratelimit.wait_for_token).

        Raises RateLimited(api=None) when the slot lies beyond MAX_TOKEN_SLEEP
        (nothing reserved; the task is deferred, not retried) or when the lease
        is lost during the sleep (the reservation is forfeit, the result would
        not count anyway).
        """
        if self._limiter is None:
            raise RuntimeError("this worker has no rate limiter")
        logcontext.set_provider(api)
        started = time.monotonic()
        self._wait = (self._wait[0], started)
        try:
            # Calls per provider (for `campaignctl limits`) are counted before the sleep: a Redis round trip
            # between the slot and the call would bunch calls up whenever Redis is slow to answer.
            wait_for_token(self._limiter, api, self._max_sleep, self.lease_lost,
                           on_reserved=lambda: self._limiter.controls.controls.count_call(api))
        except RateLimited as exc:
            metrics.token_wait(api, exc.retry_after, slept=False)  # deferred (or cancelled), not slept
            raise
        finally:
            self._wait = (self._wait[0] + time.monotonic() - started, None)
        slept = time.monotonic() - started
        if slept > SLEPT_AT_LEAST:
            metrics.token_wait(api, slept, slept=True)
        metrics.token_granted(api)

    @property
    def waited(self) -> float:
        """Seconds this task has spent in ``acquire`` so far, the wait in progress included.

        Waiting for a token is not the handler running long: the worker takes
        this off the handler's running time before comparing it with
        TASK_TIME_LIMIT, so a task queued behind a busy bucket is not given up.
        """
        total, since = self._wait
        return total if since is None else total + time.monotonic() - since

    def pause(self, api: str, seconds: float) -> None:
        """Shut ``api``'s bucket for every worker (after a provider 429 with Retry-After)."""
        if self._limiter is not None:
            self._limiter.pause(api, seconds)
            metrics.throttled(api)
            self._limiter.controls.controls.count_throttle(api)  # fleet-wide, for `limits` and the dashboard

    def enqueue(self, task_type: str, campaign_id: int, run_id: int | None = None) -> Task | None:
        """A dedup'ed follow-up task (None when one is already live)."""
        return self._queue.enqueue(task_type, campaign_id, run_id=run_id)

    def heartbeat(self) -> bool:
        """Renew this task's lease now (the worker renews it every heartbeat anyway); False if lost."""
        if self._heartbeat is None:
            return not self.lease_lost.is_set()
        return self._heartbeat()
