"""What a handler gets besides its task: the rate limiter, follow-up enqueue, its lease."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from engine import metrics
from engine import logcontext
from engine.errors import RateLimited
from engine.task import Task

if TYPE_CHECKING:
    from engine.queue import TaskQueue
    from engine.ratelimit import RateLimiter

log = logging.getLogger(__name__)


class TaskContext:
    """Per-task helpers; handlers stay free of Redis plumbing.

    ``acquire(api)`` sleeps for a token when the wait is short (at most
    MAX_TOKEN_SLEEP) and otherwise raises RateLimited(api=None) so the worker
    defers the task through the delayed set without spending an attempt.
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
    ) -> None:
        self.task = task
        self.worker_id = worker_id
        self._queue = queue
        self._limiter = limiter
        self._max_sleep = max_token_sleep
        self._heartbeat = heartbeat
        self._sleep = sleep or threading.Event().wait
        #: Set by the worker when a renewal found the lease taken away: the result will not count.
        self.lease_lost = threading.Event()

    def acquire(self, api: str) -> None:
        """Block until one token of ``api`` is ours; loops only because another worker may take it first."""
        if self._limiter is None:
            raise RuntimeError("this worker has no rate limiter")
        logcontext.set_provider(api)
        while True:
            grant = self._limiter.acquire(api)
            if grant.granted:
                metrics.token_granted(api)
                self._limiter.controls.controls.count_call(api)  # calls per provider, for `campaignctl limits`
                return
            metrics.token_wait(api, grant.wait, slept=grant.wait <= self._max_sleep)
            if grant.wait > self._max_sleep:
                raise RateLimited(f"{api}: next token in {grant.wait:.3f}s", retry_after=grant.wait, api=None)
            self._sleep(grant.wait)

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
