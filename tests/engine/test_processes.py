"""Real worker processes: SIGKILL recovery, FLUSHALL recovery from the database, duplicate delivery."""

from __future__ import annotations

import datetime as dt
import json
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import pytest
import redis
from sqlalchemy import Engine

from engine.connection import connect
from engine.producer import Producer
from engine.queue import TaskQueue
from engine.recovery import Recovery
from engine.registry import Registry
from engine.settings import EngineSettings
from engine.task import Task
from engine.worker import Worker
from tests.engine.conftest import beat, proc_env, spawn, wait_for
from tests.workflow.helpers import new_campaigns
from workflow.db import make_engine
from workflow.models import Base
from workflow.states import PIPELINE, TASK_TYPES, Stage, Status, expected_position, task_type_for
from workflow.store import CampaignStore, Expect


_wait = wait_for


class _Loop:
    """A recovery loop in a thread, stopped at the end of the test."""

    def __init__(self, recovery: Recovery) -> None:
        self.recovery = recovery
        self.thread = threading.Thread(target=recovery.run, daemon=True)

    def __enter__(self) -> Recovery:
        self.thread.start()
        return self.recovery

    def __exit__(self, *exc: object) -> None:
        self.recovery.stop()
        self.thread.join(10)


def _holder_and_idle_worker(redis_client: redis.Redis, settings: EngineSettings, queue: TaskQueue, procs: list,
                            tmp_path: Path) -> tuple[Task, Any, Any]:
    """Worker process A running one task (its handler holds), worker process B up and idle."""
    starts = f"{settings.key_prefix}:test:starts"
    task = queue.enqueue("alpha", 1)
    assert task is not None
    env = proc_env(settings, CONCURRENCY="1")
    a = spawn(["-m", "tests.engine.worker_proc", "hold"], env, tmp_path / "a.log")
    procs.append(a)
    _wait(lambda: redis_client.llen(starts) == 1, 20, "worker A to start the task")
    b = spawn(["-m", "tests.engine.worker_proc", "hold"], env, tmp_path / "b.log")
    procs.append(b)
    _wait(lambda: redis_client.llen(f"{settings.key_prefix}:test:workers") == 2, 20, "worker B to come up")
    return task, a, b


def test_sigkilled_worker_task_completes_elsewhere_within_the_liveness_ttl(
        redis_client: redis.Redis, settings: EngineSettings, queue: TaskQueue, procs: list, tmp_path: Path) -> None:
    # Given worker A holding a task (its handler sleeps), worker B idle, recovery running,
    # and a visibility timeout far longer than the liveness TTL
    starts = f"{settings.key_prefix}:test:starts"
    task, a, b = _holder_and_idle_worker(redis_client, settings, queue, procs, tmp_path)
    with _Loop(Recovery(redis_client, settings, queue)):
        # When A is SIGKILLed
        killed_at = time.time()
        a.send_signal(signal.SIGKILL)
        a.wait()
        _wait(lambda: redis_client.llen(starts) == 2, 30, "the task to start again")
        second = json.loads(redis_client.lindex(starts, 1))
        recovered_in = second["t"] - killed_at
        _wait(lambda: queue.stats()["queues"]["alpha"]["in_flight"] == 0, 10, "the ack")
    # Then B ran it to completion, well within the liveness TTL's order of magnitude, not the visibility timeout
    print(f"\nrecovery after SIGKILL: {recovered_in:.3f}s (LIVENESS_TTL {settings.liveness_ttl}s, "
          f"HEARTBEAT {settings.heartbeat_interval}s, RECOVERY_INTERVAL {settings.recovery_interval}s, "
          f"VISIBILITY_TIMEOUT {settings.visibility_timeout}s)")
    assert second["task_id"] == task.task_id and second["pid"] == b.pid and not second["first"]
    assert recovered_in < settings.visibility_timeout / 4
    stats = queue.stats()
    assert stats["queues"]["alpha"] == {"key": queue.keys.queue("alpha"), "ready": 0, "in_flight": 0, "delayed": 0}
    assert stats["dead_letters"] == 0
    workers = redis_client.hkeys(queue.keys.workers)
    assert len(workers) == 1 and str(b.pid) in workers[0]  # A was unregistered
    b.send_signal(signal.SIGTERM)
    assert b.wait(10) == 0


def test_a_sigkilled_worker_is_dead_at_once_when_its_named_connections_are_gone(
        redis_client: redis.Redis, settings: EngineSettings, procs: list, tmp_path: Path) -> None:
    # Given a liveness TTL of 30 s (the TTL cannot be what finds the death below), worker A holding a task,
    # worker B idle, and recovery on a named connection that has watched for a while
    settings = attrs.evolve(settings, liveness_ttl=30.0, heartbeat_interval=0.5)
    queue = TaskQueue(redis_client, settings, ("alpha", "beta"))
    starts = f"{settings.key_prefix}:test:starts"
    task, a, b = _holder_and_idle_worker(redis_client, settings, queue, procs, tmp_path)
    recovery = Recovery(connect(settings, client_name="recovery:test"), settings, queue, quiet=0)
    with _Loop(recovery):
        time.sleep(1.0)
        assert recovery.dead_workers() == []  # live workers with open connections are not dead
        # When A is SIGKILLed (its liveness key still has ~30 s to live)
        a.send_signal(signal.SIGKILL)
        a.wait()
        # Then B runs the task long before the TTL could have told
        _wait(lambda: redis_client.llen(starts) == 2, 10, "the task to start again")
        _wait(lambda: queue.stats()["queues"]["alpha"]["in_flight"] == 0, 10, "the ack")
    second = json.loads(redis_client.lindex(starts, 1))
    assert second["task_id"] == task.task_id and second["pid"] == b.pid and not second["first"]
    workers = redis_client.hkeys(queue.keys.workers)
    assert len(workers) == 1 and str(b.pid) in workers[0]  # A was unregistered
    b.send_signal(signal.SIGTERM)
    assert b.wait(10) == 0


def test_without_named_connections_recovery_falls_back_to_the_ttl_and_says_so(
        redis_client: redis.Redis, settings: EngineSettings, queue: TaskQueue, caplog: pytest.LogCaptureFixture) -> None:
    # Given a registered worker that names its connections, and recovery on an unnamed client (as behind a proxy)
    redis_client.hset(queue.keys.workers, "W1", json.dumps({"conn_named": True}))
    beat(redis_client, queue, "W1", "alive", px=60_000)
    recovery = Recovery(redis_client, settings, queue, quiet=0)
    # When it judges twice
    with caplog.at_level("WARNING", logger="engine.recovery"):
        assert recovery.dead_workers() == [] and recovery.dead_workers() == []
    # Then the live worker is not judged dead, and the fallback is logged once
    assert sum("LIVENESS_TTL" in r.getMessage() and "only" in r.getMessage() for r in caplog.records) == 1


def _seeded(sqlite_url: str, n: int) -> tuple[Engine, CampaignStore, list[int]]:
    engine = make_engine(sqlite_url)
    Base.metadata.create_all(engine)
    return engine, CampaignStore(engine), new_campaigns(engine, n)


def _start_source(store: CampaignStore):  # type: ignore[no-untyped-def]
    def source(limit: int) -> list[tuple[str, int]]:
        return [(task_type_for(s.campaign_status, s.processing_stage), s.id)  # type: ignore[misc]
                for s in store.start_due(limit=limit)]
    return source


def _stalled_source(store: CampaignStore, settings: EngineSettings):  # type: ignore[no-untyped-def]
    def source() -> list[tuple[str, int]]:
        return [(t, cid) for cid, t in store.stalled(dt.timedelta(seconds=settings.stall_threshold))]
    return source


def test_flushall_mid_run_rebuilds_from_the_database(redis_client: redis.Redis, settings: EngineSettings,
                                                     sqlite_url: str, procs: list, tmp_path: Path) -> None:
    # Given 20 campaigns started by the producer and two workers advancing them stage by stage
    engine, store, ids = _seeded(sqlite_url, 20)
    queue = TaskQueue(redis_client, settings, TASK_TYPES)
    assert Producer(queue, settings, _start_source(store)).run_once() == 20
    env = proc_env(settings, DATABASE_URL=sqlite_url, CONCURRENCY="2", STAGE_SECONDS="0.05")
    for name in ("w1", "w2"):
        procs.append(spawn(["-m", "tests.engine.worker_proc", "store"], env, tmp_path / f"{name}.log"))
    recovery = Recovery(redis_client, settings, queue, reconcile=_stalled_source(store, settings))
    with _Loop(recovery):
        # When Redis loses everything mid-run
        _wait(lambda: store.counts()["stages"]["recent_sales"] + store.counts()["stages"]["market_data"] > 0,
              30, "progress")
        before = store.counts()
        redis_client.flushall()
        flushed_at = time.monotonic()
        print(f"\nFLUSHALL at {before['stages']}")
        # Then recovery re-enqueues every stalled campaign from the database and all of them finish
        _wait(lambda: store.counts()["campaigns"]["READY_FOR_REVIEW"] == 20, 60, "every campaign to finish")
        print(f"all 20 finished {time.monotonic() - flushed_at:.2f}s after the FLUSHALL")
    for cid in ids:
        triggers = [e["trigger"] for e in store.history(cid)]
        assert triggers == ["start"] + ["advance"] * len(PIPELINE), (cid, triggers)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    assert [p.wait(10) for p in procs] == [0, 0]
    engine.dispose()


def test_duplicate_delivery_is_a_no_op(redis_client: redis.Redis, settings: EngineSettings, sqlite_url: str) -> None:
    # Given a campaign at property_data and its task delivered three times: the same payload twice
    # (same task id) and a second task with its own id (dedup bypassed by hand)
    engine, store, (cid,) = _seeded(sqlite_url, 1)
    store.start_due(limit=10)
    queue = TaskQueue(redis_client, settings, TASK_TYPES)
    task = queue.enqueue("property_data", cid)
    assert task is not None
    key = queue.keys.queue("property_data")
    redis_client.lpush(key, task.to_json())
    redis_client.lpush(key, Task.new("property_data", cid).to_json())
    runs: Counter[str] = Counter()

    def handle(t, ctx) -> None:  # type: ignore[no-untyped-def]
        runs[t.task_id] += 1
        status, stage = expected_position(t.task_type)
        store.apply(t.campaign_id, "advance", expect=Expect(status, stage), task_id=t.task_id,
                    worker_id=ctx.worker_id)

    registry = Registry()
    registry.register("property_data", handle)
    # When a worker drains the queue
    Worker(redis_client, settings, registry, concurrency=3, burst=True, task_types=TASK_TYPES).run(
        install_signals=False)
    # Then the campaign moved exactly once
    history = store.history(cid)
    print(f"\nhandler runs per task id: {dict(runs)}")
    assert [(e["trigger"], e["from_stage"], e["to_stage"]) for e in history] == [
        ("start", "idle", "property_data"), ("advance", "property_data", "active_listings")]
    snap = store.get(cid)
    assert snap is not None and (snap.campaign_status, snap.processing_stage) == (Status.PROCESSING,
                                                                                  Stage.ACTIVE_LISTINGS)
    assert queue.stats()["queues"]["property_data"]["in_flight"] == 0
    engine.dispose()


def test_sigterm_exits_zero_and_releases(redis_client: redis.Redis, settings: EngineSettings, queue: TaskQueue,
                                         procs: list, tmp_path: Path) -> None:
    # Given a worker holding a task whose handler never ends
    settings = attrs.evolve(settings, shutdown_grace=0.3)
    queue.enqueue("alpha", 1)
    starts = f"{settings.key_prefix}:test:starts"
    w = spawn(["-m", "tests.engine.worker_proc", "hold"], proc_env(settings), tmp_path / "w.log")
    procs.append(w)
    _wait(lambda: redis_client.llen(starts) == 1, 20, "the task to start")
    # When SIGTERM arrives, Then it exits 0 after the grace period with the task back in the queue
    w.send_signal(signal.SIGTERM)
    assert w.wait(10) == 0
    stats = queue.stats()["queues"]["alpha"]
    assert (stats["ready"], stats["in_flight"]) == (1, 0)
    assert redis_client.hlen(queue.keys.workers) == 0
