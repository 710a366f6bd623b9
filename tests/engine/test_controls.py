"""Runtime controls: a paused queue is not claimed; a rate override reaches the limiter; calls and 429s counted."""

from __future__ import annotations

import redis

from engine.context import TaskContext
from engine.controls import Controls
from engine.queue import TaskQueue
from engine.ratelimit import Limit, RateLimiter
from engine.registry import Registry
from engine.settings import EngineSettings
from engine.worker import Worker
from tests.engine.conftest import TYPES


def test_a_paused_queue_is_not_claimed_until_resumed(redis_client: redis.Redis, settings: EngineSettings) -> None:
    # Given one task in each queue and the first queue paused
    ran: list[str] = []
    registry = Registry()
    for t in TYPES:
        registry.register(t, lambda task, ctx: ran.append(task.task_type))
    queue = TaskQueue(redis_client, settings, TYPES)
    queue.enqueue("alpha", 1)
    queue.enqueue("beta", 1)
    controls = Controls(redis_client, settings.key_prefix)
    assert controls.pause("alpha") and not controls.pause("alpha")
    # When a burst worker runs
    Worker(redis_client, settings, registry, concurrency=1, burst=True, task_types=TYPES).run(install_signals=False)
    # Then only the other queue's task ran; the paused one still waits
    assert ran == ["beta"]
    assert queue.stats()["queues"]["alpha"]["ready"] == 1
    # And after resume it runs
    assert controls.resume("alpha")
    Worker(redis_client, settings, registry, concurrency=1, burst=True, task_types=TYPES).run(install_signals=False)
    assert ran == ["beta", "alpha"]


def test_a_rate_override_reaches_the_limiter_and_calls_and_429s_are_counted(
        redis_client: redis.Redis, settings: EngineSettings) -> None:
    limiter = RateLimiter(redis_client, settings, {"api": Limit(rate=1.0)})
    controls = Controls(redis_client, settings.key_prefix)
    controls.set_rate("api", 5.0)
    limiter.controls.refresh = 0
    assert limiter.rate("api") == 5.0 * settings.rate_scale
    assert limiter.status()["api"]["rate"] == 5.0 * settings.rate_scale
    assert controls.clear_rate("api") and limiter.rate("api") == 1.0 * settings.rate_scale
    queue = TaskQueue(redis_client, settings, TYPES)
    task = queue.enqueue("alpha", 7)
    ctx = TaskContext(task, "w", queue=queue, limiter=limiter, max_token_sleep=5)
    ctx.acquire("api")
    ctx.pause("api", 0.01)
    assert controls.counters() == {"calls": {"api": 1}, "throttled": {"api": 1}}
