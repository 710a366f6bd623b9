"""The worker in-process: outcome mapping, rate-limit deferral, graceful shutdown, --burst."""

from __future__ import annotations

import threading
import time

import attrs
import pytest
import redis

from engine.errors import Discard, Permanent, RateLimited, Transient
from engine.queue import TaskQueue
from engine.ratelimit import Limit, RateLimiter
from engine.recovery import Recovery
from engine.registry import Registry
from engine.retry import RetryPolicy
from engine.settings import EngineSettings
from engine.worker import Worker, _Job
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


def _wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what} after {timeout}s"
        time.sleep(0.02)


def test_a_hung_handler_loses_its_task_after_the_time_limit_and_its_late_ack_is_fenced_out(
        redis_client: redis.Redis, settings: EngineSettings, queue: TaskQueue, caplog) -> None:  # type: ignore[no-untyped-def]
    # Given a worker with ONE slot, whose handler hangs on the first start of a task
    unblock = threading.Event()
    starts: list[tuple[int, int, int]] = []

    def handle(task, ctx) -> None:  # type: ignore[no-untyped-def]
        starts.append((task.campaign_id, task.retry_count, task.lease_losses))
        if len(starts) == 1:
            unblock.wait(30)  # hung (the heartbeat keeps renewing its lease)

    registry = Registry()
    registry.register("alpha", handle, RetryPolicy(time_limit=0.3))
    task = queue.enqueue("alpha", 1)
    assert task is not None
    worker = Worker(redis_client, settings, registry, concurrency=1, task_types=TYPES)
    thread = threading.Thread(target=worker.run, kwargs={"install_signals": False})
    caplog.set_level("INFO", logger="engine.worker")
    t0 = time.monotonic()
    thread.start()
    try:
        # When the handler runs past its 0.3 s limit
        _wait_for(lambda: len(starts) == 2, 10, "the task to run again")
        print(f"given up and restarted after {time.monotonic() - t0:.2f}s")
        _wait_for(lambda: queue.stats()["queues"]["alpha"]["in_flight"] == 0, 5, "the second run's ack")
        # Then it went back to its queue as a lease loss, and the freed slot ran it again to completion
        assert starts == [(1, 0, 0), (1, 0, 1)]
        assert not redis_client.exists(queue.keys.dedup("alpha", 1))  # acked: the dedup key is gone
        assert any("ran past its time limit of 0.3s" in r.getMessage() for r in caplog.records)
        # And when the hung handler finally returns, its ack is rejected (fenced) and changes nothing
        caplog.clear()
        unblock.set()
        _wait_for(lambda: any("given up after its time limit" in r.getMessage() for r in caplog.records), 5,
                  "the zombie's ack to be rejected")
        stats = queue.stats()["queues"]["alpha"]
        assert (stats["ready"], stats["in_flight"], stats["delayed"], len(starts)) == (0, 0, 0, 2)
    finally:
        unblock.set()
        worker.stop()
        thread.join(10)
    assert not thread.is_alive() and not worker.left_running


def test_a_handler_that_always_hangs_is_dead_lettered_after_max_lease_losses(
        redis_client: redis.Redis, settings: EngineSettings, queue: TaskQueue) -> None:
    # Given the worker-wide limit (TASK_TIME_LIMIT) of 0.2 s and a handler that never returns in time
    settings = attrs.evolve(settings, task_time_limit=0.2)
    unblock = threading.Event()
    dead: list[tuple] = []
    registry = Registry()
    registry.register("alpha", lambda task, ctx: unblock.wait(30))
    registry.on_dead_letter(lambda task, reason, error: dead.append((task.campaign_id, reason)))
    queue.enqueue("alpha", 5)
    worker = Worker(redis_client, settings, registry, concurrency=2, task_types=TYPES)
    thread = threading.Thread(target=worker.run, kwargs={"install_signals": False})
    thread.start()
    try:
        # When it runs MAX_LEASE_LOSSES + 1 times
        _wait_for(lambda: bool(dead), 20, "the dead letter")
    finally:
        unblock.set()
        worker.stop()
        thread.join(10)
    # Then it is dead-lettered with the reason, not released forever
    assert dead == [(5, f"ran past its time limit of 0.2s; lost its lease {settings.max_lease_losses + 1} times: "
                        "crash loop, hung handler or poison pill")]
    [entry] = queue.dlq_list()
    assert entry["task"]["lease_losses"] == settings.max_lease_losses
    assert queue.stats()["queues"]["alpha"]["in_flight"] == 0
    assert not worker.left_running


def test_many_quick_tasks_are_each_run_once_and_acked_in_batches(redis_client: redis.Redis,
                                                                 settings: EngineSettings, queue: TaskQueue) -> None:
    # Given 300 no-op tasks and a worker with 8 slots whose ack calls are counted
    ran: list[int] = []
    registry = Registry()
    registry.register("alpha", lambda task, ctx: ran.append(task.campaign_id))
    queue.enqueue_many([("alpha", cid) for cid in range(1, 301)])
    worker = Worker(redis_client, settings, registry, concurrency=8, burst=True, task_types=TYPES)
    batches: list[int] = []
    ack_many = worker.queue.ack_many

    def counting(leases):  # type: ignore[no-untyped-def]
        batches.append(len(leases))
        return ack_many(leases)

    worker.queue.ack_many = counting  # type: ignore[method-assign]
    # When it drains them
    assert worker.run(install_signals=False) == 0
    # Then each ran once, every ack landed, nothing is left
    assert sorted(ran) == list(range(1, 301))
    assert sum(batches) == 300
    print(f"{len(batches)} ack calls for 300 tasks, largest batch {max(batches)}")
    stats = queue.stats()["queues"]["alpha"]
    assert (stats["ready"], stats["in_flight"]) == (0, 0)
    assert redis_client.zcard(queue.keys.leases("alpha")) == 0
    assert not redis_client.keys(queue.keys.dedup("alpha", "*"))  # type: ignore[arg-type]


def test_task_time_limit_comes_from_the_environment() -> None:
    assert EngineSettings.from_env({}).task_time_limit == 600.0
    assert EngineSettings.from_env({"TASK_TIME_LIMIT": "45"}).task_time_limit == 45.0
    assert EngineSettings.from_env({"TASK_TIME_LIMIT": "0"}).task_time_limit == 0.0  # no limit
    assert RetryPolicy(time_limit=5).time_limit == 5


def test_a_stopping_worker_stays_alive_and_keeps_its_leases_during_the_grace_period(
        redis_client: redis.Redis, settings: EngineSettings, queue: TaskQueue) -> None:
    # Given a worker running a task that needs longer than LIVENESS_TTL (0.6 s) to finish
    started, release = threading.Event(), threading.Event()
    runs: list[int] = []

    def handle(task, ctx) -> None:  # type: ignore[no-untyped-def]
        runs.append(task.campaign_id)
        started.set()
        release.wait(10)

    registry = Registry()
    registry.register("alpha", handle)
    queue.enqueue("alpha", 1)
    worker = Worker(redis_client, settings, registry, concurrency=2, task_types=TYPES)
    thread = threading.Thread(target=worker.run, kwargs={"install_signals": False})
    thread.start()
    try:
        assert started.wait(5)
        # When it is asked to stop, and more than LIVENESS_TTL passes within SHUTDOWN_GRACE (2 s)
        worker.stop()
        time.sleep(settings.liveness_ttl * 1.5)
        # Then recovery still sees it alive and leaves its task alone
        report = Recovery(redis_client, settings, queue, quiet=0).run_once()
        assert report.dead_workers == [] and report.requeued == 0
        assert redis_client.exists(queue.keys.worker(worker.worker_id))
    finally:
        release.set()
        thread.join(10)
    # And the task finished there, once, and was acked
    assert runs == [1]
    stats = queue.stats()["queues"]["alpha"]
    assert (stats["ready"], stats["in_flight"]) == (0, 0)
    assert not redis_client.exists(queue.keys.worker(worker.worker_id))


@pytest.mark.single_node  # a cluster runs each script on its own, and redis-py reloads a lost one there itself
def test_a_beat_whose_scripts_vanish_between_check_and_call_renews_at_once(
        redis_client: redis.Redis, settings: EngineSettings, queue: TaskQueue, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A pipeline checks the script cache, then runs: a restart in between (a failover, a crash) loses the
    scripts. The beat must load them and renew now, not one HEARTBEAT_INTERVAL later (a Redis pause then
    would find the lease shorter by that much)."""
    registry = Registry()
    registry.register("alpha", lambda task, ctx: None)
    registry.register("beta", lambda task, ctx: None)
    queue.enqueue("alpha", 1)
    queue.enqueue("beta", 1)
    worker = Worker(redis_client, settings, registry, concurrency=2, task_types=TYPES)
    # Leases of two types: their renewals go in one pipeline (on a single node).
    lease, other = queue.claim(worker.worker_id, TYPES, 2).leases
    for held in (lease, other):
        worker._jobs[held.task.task_id] = _Job(lease=held, time_limit=0)
    flushed = []
    original = redis.client.Pipeline.load_scripts

    def load_then_lose(pipe: redis.client.Pipeline) -> None:
        original(pipe)
        if not flushed:
            flushed.append(True)
            redis_client.script_flush()

    monkeypatch.setattr(redis.client.Pipeline, "load_scripts", load_then_lose)
    before = redis_client.pttl(queue.keys.task_lock(lease.task.task_type, lease.task.task_id))
    time.sleep(0.05)
    worker._beat()
    assert flushed, "the fault was not injected"
    assert worker._beat_outage.backoff.failures == 0  # no failure streak began
    assert redis_client.pttl(queue.keys.task_lock(lease.task.task_type, lease.task.task_id)) > before - 50
    assert redis_client.exists(queue.keys.worker(worker.worker_id))
