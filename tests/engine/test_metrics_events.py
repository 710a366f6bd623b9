"""Metrics counted where the events happen: recovery's causes, outages, a worker's outcomes (real Redis)."""

from __future__ import annotations

import threading

import redis
from prometheus_client import REGISTRY

from engine.errors import Permanent, RateLimited
from engine.loop import Outage
from engine.queue import TaskQueue
from engine.recovery import Recovery
from engine.registry import Registry
from engine.retry import RetryPolicy
from engine.settings import EngineSettings
from engine.worker import Worker
from tests.engine.conftest import TYPES
from tests.engine.test_queue import _expire_lease


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_recovery_counts_leases_by_cause(queue: TaskQueue, redis_client: redis.Redis,
                                         settings: EngineSettings) -> None:
    # Given one task held by a worker that died, and one whose lease lapsed
    dead_before = value("campaign_engine_leases_recovered_total", cause="dead_worker", result="requeued")
    lapsed_before = value("campaign_engine_leases_recovered_total", cause="lease_expired", result="requeued")
    queue.enqueue("alpha", 1)
    queue.claim("dead-worker", TYPES, 1)
    redis_client.hset(queue.keys.workers, "dead-worker", "{}")  # registered, no liveness key
    lapsing = queue.enqueue("beta", 2)
    assert lapsing is not None
    queue.claim("slow-worker", TYPES, 1)
    _expire_lease(redis_client, queue, lapsing)
    # When recovery passes (it has watched for a TTL already: no quiet start)
    Recovery(redis_client, settings, queue, quiet=0).run_once()
    # Then each is counted under its cause
    assert value("campaign_engine_leases_recovered_total", cause="dead_worker", result="requeued") == dead_before + 1
    assert value("campaign_engine_leases_recovered_total", cause="lease_expired",
                 result="requeued") == lapsed_before + 1


def test_an_outage_is_counted_once_when_it_starts() -> None:
    before = value("campaign_engine_outages_total")
    outage = Outage("test dependency", base=0.01, cap=0.01)
    for _ in range(3):
        outage.failed(redis.ConnectionError("down"))
    outage.ok()
    outage.failed(redis.ConnectionError("down again"))
    assert value("campaign_engine_outages_total") == before + 2


def test_a_worker_counts_each_outcome_by_type(queue: TaskQueue, redis_client: redis.Redis,
                                              settings: EngineSettings) -> None:
    # Given handlers that succeed (alpha 1), defer on a 429 (alpha 2, once) and fail for good (beta 3)
    deferred_once = threading.Event()

    def alpha(task, ctx) -> None:  # type: ignore[no-untyped-def]
        if task.campaign_id == 2 and not deferred_once.is_set():
            deferred_once.set()
            raise RateLimited("429", retry_after=0.05)

    def beta(task, ctx) -> None:  # type: ignore[no-untyped-def]
        raise Permanent("bad data")

    registry = Registry()
    registry.register("alpha", alpha)
    registry.register("beta", beta, RetryPolicy(max_attempts=1))
    before = {(t, o): value("campaign_engine_tasks_total", type=t, outcome=o)
              for t in TYPES for o in ("succeeded", "deferred", "dead_lettered")}
    runs_before = value("campaign_engine_task_duration_seconds_count", type="alpha")
    for cid, task_type in ((1, "alpha"), (2, "alpha"), (3, "beta")):
        queue.enqueue(task_type, cid)
    # When a burst worker drains the queues
    Worker(redis_client, settings, registry, queues=TYPES, concurrency=2, burst=True).run(install_signals=False)

    # Then every outcome was counted under its task type
    def delta(t: str, o: str) -> float:
        return value("campaign_engine_tasks_total", type=t, outcome=o) - before[(t, o)]

    assert delta("alpha", "succeeded") == 2
    assert delta("alpha", "deferred") == 1
    assert delta("beta", "dead_lettered") == 1
    assert value("campaign_engine_task_duration_seconds_count", type="alpha") - runs_before == 3
