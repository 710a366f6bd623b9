"""Races found by stepping two actors by hand against a real redis-server (issue 11's findings 1, 2, 3, 5, 6, 7, 8).

Each test drives the actors through the queue API one step at a time, in the
order that broke the engine before these fixes, and then checks that nobody
took a live holder's task, that nothing ran twice, and that no attempt was
spent on an infrastructure fault.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from engine.connection import connect, connection_name
from engine.producer import Producer
from engine.queue import Judgement, TaskQueue
from engine.recovery import Recovery
from engine.registry import Registry
from engine.retry import RetryPolicy
from engine.settings import EngineSettings
from engine.task import Task
from engine.worker import Worker
from tests.engine.conftest import TYPES, beat, client_for, wait_for
from tests.servers import RedisServer, free_port


def _lapse(r: redis.Redis, queue: TaskQueue, task: Task) -> None:
    """What time does to a lease nobody renews: the deadline passes and the lock expires."""
    r.zadd(queue.keys.leases(task.task_type), {f"{task.task_type}:{task.task_id}": 0})
    r.delete(queue.keys.task_lock(task.task_type, task.task_id))


_wait = wait_for


# -- finding 1: two recovery loops ------------------------------------------------------------


@pytest.mark.parametrize("losses", [0, 3], ids=["requeue-branch", "dead-letter-branch"])
def test_finding_1_a_late_recovery_loop_never_takes_the_fresh_lease(
        queue: TaskQueue, redis_client: redis.Redis, settings: EngineSettings, losses: int) -> None:
    # Given a task whose lease lapsed (with `losses` earlier losses: on the second branch the next one dead-letters)
    queue.enqueue("alpha", 1)
    first = queue.claim("W1", TYPES, 1).leases[0]
    redis_client.hset(queue.keys.inflight("alpha"), first.task.task_id,
                      first.payload.replace('"enqueued_at"', f'"lease_losses":{losses},"enqueued_at"')
                      if losses else first.payload)
    _lapse(redis_client, queue, first.task)
    # And two recovery loops R1 and R2 that both saw it lapsed
    seen_by_r1 = queue.lapsed()
    seen_by_r2 = queue.lapsed()
    assert seen_by_r1 == seen_by_r2 == [("alpha", first.task.task_id)]
    # When R2 takes it back, W2 leases it, and only then R1 acts on what it saw
    assert queue.recover_lapsed(*seen_by_r2[0]).action in ("requeued", "dead")
    if losses:  # dead-lettered by R2: put a fresh copy in flight to play W2's part
        queue.dlq_requeue(None)
    second = queue.claim("W2", TYPES, 1).leases[0]
    late = queue.recover_lapsed(*seen_by_r1[0])
    # Then R1 does nothing: W2 keeps its lease and settles the task, and nothing is in the DLQ twice
    assert late.action == "skipped"
    assert redis_client.get(queue.keys.task_lock(second.task.task_type, second.task.task_id)) == second.token
    assert queue.ack(second)
    assert len(queue.dlq_list()) == 0


def test_finding_1_two_recovery_loops_judging_one_dead_worker_take_each_task_once(
        queue: TaskQueue, redis_client: redis.Redis, settings: EngineSettings) -> None:
    # Given a dead worker (no liveness key) that held two tasks
    redis_client.hset(queue.keys.workers, "W1", "{}")
    for cid in (1, 2):
        queue.enqueue("alpha", cid)
    held = queue.claim("W1", TYPES, 2).leases
    r1 = Recovery(redis_client, settings, queue, quiet=0)
    r2 = Recovery(redis_client, settings, queue, quiet=0)
    # When both judge it dead, R2 recovers it, W2 leases both tasks, then R1 acts on its verdict
    [v1], [v2] = r1.dead_workers(), r2.dead_workers()
    assert sum(s.action == "requeued" for s in r2.recover_worker(v2)) == 2
    now_held = queue.claim("W2", TYPES, 2).leases
    late = r1.recover_worker(v1)
    # Then R1 takes nothing, and W2 acks both
    assert all(s.action == "skipped" for s in late)
    assert queue.ack_many(now_held) == [True, True]
    assert {lease.task.task_id for lease in held} == {lease.task.task_id for lease in now_held}


# -- finding 2: judged dead, then beats again; outages longer than the TTL --------------------------


def test_finding_2_a_worker_that_beats_between_verdict_and_move_keeps_its_task(
        queue: TaskQueue, redis_client: redis.Redis, settings: EngineSettings) -> None:
    # Given a worker whose liveness key lapsed while it was slow, holding one claimed and one leased task
    redis_client.hset(queue.keys.workers, "W1", "{}")
    queue.enqueue("alpha", 1)
    lease = queue.claim("W1", TYPES, 1).leases[0]
    queue.enqueue("beta", 2)
    queue.scripts.claim(keys=[queue.keys.claiming("beta", "W1"), queue.keys.queue("beta")], args=[1])
    recovery = Recovery(redis_client, settings, queue, quiet=0)
    # When recovery judges it dead, and the worker beats again before recovery moves anything
    [verdict] = recovery.dead_workers()
    beat(redis_client, queue, "W1", "beat again")
    settled = recovery.recover_worker(verdict)
    # Then nothing was taken: the lease is its own, the claimed payload stays, and it stays registered
    assert all(s.action == "skipped" for s in settled)
    assert redis_client.get(queue.keys.task_lock(lease.task.task_type, lease.task.task_id)) == lease.token
    assert redis_client.llen(queue.keys.claiming("beta", "W1")) == 1
    assert redis_client.hexists(queue.keys.workers, "W1")
    assert queue.ack(lease)


def test_finding_2_a_verdict_made_before_a_redis_stall_is_void_after_it(
        queue: TaskQueue, redis_client: redis.Redis, settings: EngineSettings) -> None:
    # Given a verdict "W1 is dead" made at some server time
    redis_client.hset(queue.keys.workers, "W1", "{}")
    queue.enqueue("alpha", 1)
    lease = queue.claim("W1", TYPES, 1).leases[0]
    at_ms = queue.server_ms()
    # When the recovery scripts run later than the stall guard allows (Redis stalled in between)
    stale = Judgement("W1", "", at_ms - int(settings.stall_guard * 1000) - 1000, int(settings.stall_guard * 1000))
    # Then they refuse to act on it
    assert queue.recover_held(stale, "alpha", lease.task.task_id).action == "skipped"
    assert queue.recover_claiming("W1", stale) == []
    fresh = Judgement("W1", "", queue.server_ms(), int(settings.stall_guard * 1000))
    assert queue.recover_held(fresh, "alpha", lease.task.task_id).action == "requeued"


def test_finding_2_a_new_server_run_id_means_no_verdicts_for_one_ttl(
        queue: TaskQueue, redis_client: redis.Redis, settings: EngineSettings) -> None:
    # Given a recovery loop that saw Redis under one run id and a registered worker without liveness key
    recovery = Recovery(redis_client, settings, queue, quiet=0)
    assert recovery.dead_workers() == []
    redis_client.hset(queue.keys.workers, "W1", "{}")
    # When Redis comes back as another server (a restart or a failover)
    recovery._server_run_id = "a-server-that-is-gone"
    # Then nobody is judged dead until one LIVENESS_TTL has passed
    assert recovery.dead_workers() == []
    recovery.quiet_until = 0
    assert [v.worker_id for v in recovery.dead_workers()] == ["W1"]


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test alone: it is SIGSTOPped."""
    server = RedisServer(port=free_port()).start()
    try:
        yield server
    finally:
        server.cleanup()


def test_finding_2_a_redis_stall_longer_than_the_liveness_ttl_costs_no_running_task(
        own_redis: RedisServer, key_prefix: str) -> None:
    import signal

    # Given a worker running a task on a Redis whose server is stopped for 3 liveness TTLs, with recovery looping
    settings = EngineSettings(redis_url=own_redis.url, key_prefix=key_prefix, visibility_timeout=60,
                              heartbeat_interval=0.1, liveness_ttl=0.6, recovery_interval=0.1, claim_block=0.1,
                              redis_socket_timeout=10)
    worker_id = "stall-test:1:w"
    client = connect(settings, client_name=worker_id)
    runs: list[Task] = []
    release = threading.Event()
    registry = Registry()
    registry.register("alpha", lambda task, ctx: (runs.append(task), release.wait(20)))
    queue = TaskQueue(client, settings, TYPES)
    queue.enqueue("alpha", 1)
    worker = Worker(client, settings, registry, concurrency=1, task_types=TYPES, worker_id=worker_id)
    threading.Thread(target=worker.run, kwargs={"install_signals": False}, daemon=True).start()
    recovery = Recovery(connect(settings, client_name="recovery:stall-test"), settings, queue, quiet=0)
    loop = threading.Thread(target=recovery.run, daemon=True)
    loop.start()
    try:
        _wait(lambda: len(runs) == 1, 10, "the task to start")
        time.sleep(1.0)  # recovery has looked at the live worker a few times
        # When Redis stops answering for longer than LIVENESS_TTL, then comes back
        assert own_redis.proc is not None
        own_redis.proc.send_signal(signal.SIGSTOP)
        time.sleep(3 * settings.liveness_ttl)
        own_redis.proc.send_signal(signal.SIGCONT)
        time.sleep(4 * settings.liveness_ttl)
        release.set()
        _wait(lambda: queue.stats()["queues"]["alpha"]["in_flight"] == 0, 10, "the ack")
    finally:
        release.set()
        recovery.stop()
        worker.stop()
        loop.join(10)
    # Then the task ran once, was acknowledged by its holder, and no attempt or lease loss was charged
    assert len(runs) == 1
    assert queue.stats()["queues"]["alpha"] == {"key": queue.keys.queue("alpha"), "ready": 0, "in_flight": 0,
                                                "delayed": 0}
    assert client.get(queue.keys.dedup("alpha", 1)) is None


# -- finding 3: replayed calls ------------------------------------------------------------------


def test_finding_3_a_replayed_lease_call_leases_under_the_token_the_worker_knows(
        queue: TaskQueue, redis_client: redis.Redis) -> None:
    # Given a payload in a worker's claiming list
    task = queue.enqueue("alpha", 1)
    assert task is not None
    claiming = queue.keys.claiming("alpha", "W1")
    raw = queue.scripts.claim(keys=[claiming, queue.keys.queue("alpha")], args=[1])[0]
    keys = [claiming, queue.keys.leases("alpha"), queue.keys.wtasks("alpha", "W1"), queue.keys.inflight("alpha"),
            queue.keys.task_lock(task.task_type, task.task_id)]
    args = [60_000, raw, task.task_id, "alpha", "tok1:W1"]
    # When lease.lua is called twice with the same arguments (redis-py replaying after a lost answer)
    first = queue.scripts.lease(keys=keys, args=args)
    replay = queue.scripts.lease(keys=keys, args=args)
    # Then both answers say leased, under the token the worker made
    assert first == replay == [1]
    assert redis_client.get(queue.keys.task_lock(task.task_type, task.task_id)) == "tok1:W1"


def test_finding_3_a_replayed_dead_letter_still_reports_it_so_the_failure_hook_runs(
        queue: TaskQueue, redis_client: redis.Redis) -> None:
    queue.enqueue("alpha", 1)
    lease = queue.claim("W1", TYPES, 1).leases[0]
    assert queue.dead_letter(lease, "permanent failure: bad address") is not None
    assert queue.dead_letter(lease, "permanent failure: bad address") is not None  # the replay
    assert len(queue.dlq_list()) == 1


def test_finding_3_the_client_sets_timeouts_and_retries_explicitly(settings: EngineSettings) -> None:
    client = connect(settings, check=False, client_name="w:1:x")
    if settings.redis_cluster:
        # The cluster client retries (after refreshing its slot map); each node's connections do not.
        assert isinstance(client, redis.RedisCluster)
        assert client.retry.get_retries() == settings.redis_retries
        kwargs = client.nodes_manager.connection_kwargs
    else:
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["health_check_interval"] == settings.redis_health_check_interval
        assert kwargs["retry"].get_retries() == settings.redis_retries
    assert kwargs["socket_timeout"] == settings.redis_socket_timeout
    assert kwargs["socket_connect_timeout"] == settings.redis_connect_timeout
    assert kwargs["client_name"] == "w:1:x"
    assert connection_name(client) == "w:1:x"
    # A replayed call must find the first call's trace: the window covers every retry of one call
    assert settings.replay_window > (settings.redis_retries + 1) * settings.redis_socket_timeout


# -- finding 5: dedup lives exactly as long as its task -------------------------------------------


def test_finding_5_the_dedup_key_never_expires_while_its_task_lives(
        queue: TaskQueue, redis_client: redis.Redis) -> None:
    task = queue.enqueue("alpha", 1)
    assert task is not None
    dedup = queue.keys.dedup("alpha", 1)

    def no_expiry() -> bool:
        return redis_client.get(dedup) == task.task_id and redis_client.pttl(dedup) == -1

    assert no_expiry()  # queued
    lease = queue.claim("W1", TYPES, 1).leases[0]
    assert no_expiry()  # leased
    assert queue.retry(lease, 3600.0)
    assert no_expiry()  # delayed for an hour (a backlog, a quota deferral)
    redis_client.zadd(queue.keys.delayed("alpha"), {lease.payload.replace('"retry_count":0', '"retry_count":1'): 0},
                      xx=True)
    queue.promote_due()
    lease = queue.claim("W1", TYPES, 1).leases[0]
    assert queue.release(lease)
    assert no_expiry()  # requeued
    assert queue.enqueue("alpha", 1) is None  # reconcile cannot add a second live task
    lease = queue.claim("W1", TYPES, 1).leases[0]
    assert queue.ack(lease)
    assert redis_client.get(dedup) is None  # gone with its task


# -- finding 6 (engine part): the run id travels with the task ------------------------------------


def test_finding_6_the_run_id_survives_lease_retry_requeue_and_recovery(
        queue: TaskQueue, redis_client: redis.Redis) -> None:
    queue.enqueue("alpha", 1, run_id=7)
    lease = queue.claim("W1", TYPES, 1).leases[0]
    assert lease.task.run_id == 7
    assert queue.retry(lease, 0.0)
    queue.promote_due()
    lease = queue.claim("W1", TYPES, 1).leases[0]
    _lapse(redis_client, queue, lease.task)
    assert queue.recover_lapsed("alpha", lease.task.task_id).action == "requeued"
    again = queue.claim("W2", TYPES, 1).leases[0]
    assert (again.task.run_id, again.task.retry_count, again.task.lease_losses) == (7, 1, 1)
    # A payload without a run id (made before run ids existed) is still accepted
    legacy = json.dumps({"task_id": "old", "campaign_id": 2, "task_type": "beta", "retry_count": 0,
                         "enqueued_at": 1.0})
    assert Task.from_json(legacy, TYPES).run_id is None


# -- finding 7: the producer starts nothing while Redis is unreachable -----------------------------


def test_finding_7_the_producer_starts_no_campaign_while_redis_is_down(settings: EngineSettings) -> None:
    down = EngineSettings(redis_url=f"redis://127.0.0.1:{free_port()}/0", key_prefix=settings.key_prefix,
                          redis_retries=0, redis_connect_timeout=0.5)
    started: list[int] = []

    def source(limit: int) -> list[tuple[str, int]]:
        started.append(limit)  # the database would move `limit` campaigns to PROCESSING here
        return [("alpha", 1)]

    producer = Producer(TaskQueue(connect(down, check=False), down, TYPES), down, source)
    with pytest.raises(redis.ConnectionError):
        producer.run_once()
    assert started == []


# -- finding 8: the heartbeat only renews -------------------------------------------------------


def test_finding_8_a_slow_dead_letter_hook_does_not_stop_the_heartbeat(
        redis_client: redis.Redis, settings: EngineSettings) -> None:
    # Given a worker whose task runs past its time limit, and a dead-letter hook that takes 3 liveness TTLs
    liveness_seen: list[bool] = []
    registry = Registry()
    release = threading.Event()
    registry.register("alpha", lambda task, ctx: release.wait(20), RetryPolicy(time_limit=0.2))
    checker = client_for(settings.redis_url, settings.redis_cluster)

    def slow_hook(task: Task | None, reason: str, error: str | None) -> None:
        for _ in range(int(3 * settings.liveness_ttl / 0.05)):
            liveness_seen.append(bool(checker.exists(queue.keys.worker(worker.worker_id))))
            time.sleep(0.05)

    registry.on_dead_letter(slow_hook)
    queue = TaskQueue(redis_client, settings, TYPES)
    # (max_lease_losses is 3 in these settings: the 4th time limit dead-letters; start it at 3 losses)
    redis_client.lpush(queue.keys.queue("alpha"), Task("t1", 1, "alpha", lease_losses=settings.max_lease_losses).to_json())
    worker = Worker(redis_client, settings, registry, concurrency=1, task_types=TYPES)
    thread = threading.Thread(target=worker.run, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    try:
        _wait(lambda: len(liveness_seen) >= int(3 * settings.liveness_ttl / 0.05), 20, "the hook to finish")
    finally:
        release.set()
        worker.stop()
        thread.join(10)
    # Then the worker's liveness key was there all along
    assert liveness_seen and all(liveness_seen)
    assert len(queue.dlq_list()) == 1
