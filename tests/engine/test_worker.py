"""The worker in-process: outcome mapping, rate-limit deferral, graceful shutdown, --burst."""

from __future__ import annotations

import threading
import time

import attrs
import redis

from engine.errors import Discard, Permanent, RateLimited, Transient
from engine.queue import TaskQueue
from engine.ratelimit import Limit, RateLimiter
from engine.registry import Registry
from engine.retry import RetryPolicy
from engine.settings import EngineSettings
from engine.worker import Worker
from tests.engine.conftest import TYPES

FAST = RetryPolicy(max_attempts=3, base=0.01, cap=0.02)


def _run_burst(r: redis.Redis, settings: EngineSettings, registry: Registry, **kw) -> Worker:  # type: ignore[no-untyped-def]
    worker = Worker(r, settings, registry, kw.pop("limiter", None), concurrency=kw.pop("concurrency", 2),
                    burst=True, **kw)
    t0 = time.monotonic()
    assert worker.run(install_signals=False) == 0
    print(f"burst run took {time.monotonic() - t0:.2f}s")
    return worker


def test_outcomes_map_to_ack_retry_dead_letter_and_defer(redis_client: redis.Redis, settings: EngineSettings,
                                                         queue: TaskQueue) -> None:
    # Given one task per behaviour
    calls: dict[int, int] = {}
    dead: list[tuple] = []

    def handle(task, ctx) -> None:  # type: ignore[no-untyped-def]
        n = calls[task.campaign_id] = calls.get(task.campaign_id, 0) + 1
        if task.campaign_id == 1:
            return
        if task.campaign_id == 2 and n < 3:
            raise Transient("flaky provider (apikey=SECRET123)")
        if task.campaign_id == 3:
            raise Transient("always down")
        if task.campaign_id == 4:
            raise Permanent("404 not found")
        if task.campaign_id == 5 and n < 4:
            raise RateLimited("slow down", retry_after=0.02)
        if task.campaign_id == 6:
            raise Discard("campaign is gone")
        if task.campaign_id == 7:
            raise ValueError("a bug")

    registry = Registry()
    registry.register("alpha", handle, FAST)
    registry.on_dead_letter(lambda task, reason, error: dead.append((task.campaign_id, reason, error)))
    for cid in range(1, 8):
        queue.enqueue("alpha", cid)
    # When a burst worker drains the queue
    _run_burst(redis_client, settings, registry, queues=["alpha"], task_types=TYPES)
    # Then
    assert calls == {1: 1, 2: 3, 3: 3, 4: 1, 5: 4, 6: 1, 7: 3}  # rate limits spent no attempt
    assert sorted(c for c, _, _ in dead) == [3, 4, 7]
    reasons = {c: reason for c, reason, _ in dead}
    assert reasons[3].startswith("gave up after 3 attempts: Transient: always down")
    assert reasons[4] == "permanent failure: 404 not found"
    entries = queue.dlq_list()
    assert len(entries) == 3 and all(e["reason"] for e in entries)
    stats = queue.stats()
    assert stats["queues"]["alpha"]["ready"] == stats["queues"]["alpha"]["in_flight"] == 0
    assert stats["queues"]["alpha"]["delayed"] == 0


def test_unknown_task_type_in_its_queue_is_dead_lettered(redis_client: redis.Redis, settings: EngineSettings,
                                                         queue: TaskQueue) -> None:
    registry = Registry()
    registry.register("alpha", lambda task, ctx: None)
    queue.enqueue("beta", 1)  # a type the app knows, with no handler in this worker
    hooked: list = []
    registry.on_dead_letter(lambda task, reason, error: hooked.append(reason))
    _run_burst(redis_client, settings, registry, queues=["alpha", "beta"], task_types=TYPES)
    assert hooked == ["no handler registered for task type 'beta'"]


def test_acquire_sleeps_for_short_waits_and_defers_long_ones(redis_client: redis.Redis, settings: EngineSettings,
                                                             queue: TaskQueue) -> None:
    # Given a bucket of 20/s: three tasks wait ~50 ms each (slept), and one API paused for longer than
    # MAX_TOKEN_SLEEP (deferred without spending an attempt)
    limiter = RateLimiter(redis_client, settings, {"fast": Limit(20), "shut": Limit(20)})
    limiter.pause("shut", 1.5)
    seen: list = []

    def handle(task, ctx) -> None:  # type: ignore[no-untyped-def]
        ctx.acquire("shut" if task.campaign_id == 9 else "fast")
        seen.append((task.campaign_id, task.retry_count, time.monotonic()))

    registry = Registry()
    registry.register("alpha", handle, FAST)
    for cid in (1, 2, 3, 9):
        queue.enqueue("alpha", cid)
    t0 = time.monotonic()
    _run_burst(redis_client, settings, registry, limiter=limiter, concurrency=4, queues=["alpha"], task_types=TYPES)
    by_cid = {cid: (retries, t - t0) for cid, retries, t in seen}
    assert sorted(by_cid) == [1, 2, 3, 9]
    assert by_cid[9][0] == 0  # deferred, not retried
    print("done at", {k: round(v[1], 3) for k, v in by_cid.items()})


def test_sigterm_lets_running_handlers_finish_and_releases_the_rest(redis_client: redis.Redis,
                                                                    settings: EngineSettings,
                                                                    queue: TaskQueue) -> None:
    # Given a worker running one slow and one stuck handler
    settings = attrs.evolve(settings, shutdown_grace=0.5)
    started = threading.Event()
    finished: list[int] = []

    def handle(task, ctx) -> None:  # type: ignore[no-untyped-def]
        started.set()
        time.sleep(0.2 if task.campaign_id == 1 else 1.5)
        finished.append(task.campaign_id)

    registry = Registry()
    registry.register("alpha", handle)
    queue.enqueue("alpha", 1)
    queue.enqueue("alpha", 2)
    queue.enqueue("alpha", 3)
    worker = Worker(redis_client, settings, registry, concurrency=2, task_types=TYPES)
    thread = threading.Thread(target=worker.run, kwargs={"install_signals": False})
    thread.start()
    assert started.wait(5)
    time.sleep(0.05)
    # When it is asked to stop
    worker.stop()
    thread.join(10)
    # Then the slow one finished and was acked, the stuck one went back to the front of the queue
    assert finished == [1]
    stats = queue.stats()["queues"]["alpha"]
    assert stats["ready"] == 2 and stats["in_flight"] == 0
    assert worker.left_running
    lease = queue.claim("next", TYPES, 1).leases[0]
    assert lease.task.campaign_id == 2 and lease.task.lease_losses == 1
    assert redis_client.hlen(queue.keys.workers) == 0


def test_heartbeat_registers_the_worker_and_renews_leases(redis_client: redis.Redis, settings: EngineSettings,
                                                          queue: TaskQueue) -> None:
    settings = attrs.evolve(settings, visibility_timeout=0.3)
    release = threading.Event()
    registry = Registry()
    registry.register("alpha", lambda task, ctx: release.wait(5))
    queue.enqueue("alpha", 1)
    worker = Worker(redis_client, settings, registry, concurrency=1, task_types=TYPES)
    thread = threading.Thread(target=worker.run, kwargs={"install_signals": False})
    thread.start()
    time.sleep(1.0)  # three visibility timeouts: only renewals keep the lease
    info = redis_client.hget(queue.keys.workers, worker.worker_id)
    assert info and "alpha:" in info
    assert queue.lapsed() == []
    release.set()
    worker.stop()
    thread.join(10)
    assert queue.stats()["queues"]["alpha"]["in_flight"] == 0
    assert queue.dlq_list() == []
