"""The queue's Lua operations on a real Redis: dedup, claim, fencing, lease losses, the DLQ."""

from __future__ import annotations

import json
import time

import pytest
import redis

from engine.keys import task_key
from engine.queue import TaskQueue
from engine.recovery import Recovery
from engine.retry import RetryPolicy
from engine.task import Task
from tests.engine.conftest import TYPES


def _expire_lease(r: redis.Redis, queue: TaskQueue, task: Task) -> None:
    """Make a lease lapse now: the deadline in the past and the lock gone (what time would do)."""
    r.zadd(queue.keys.leases(task.task_type), {task_key(task.task_type, task.task_id): 0})
    r.delete(queue.keys.task_lock(task.task_type, task.task_id))


def test_enqueue_is_deduplicated_per_type_and_campaign(queue: TaskQueue) -> None:
    first = queue.enqueue("alpha", 1)
    assert first is not None
    assert queue.enqueue("alpha", 1) is None
    assert queue.enqueue("beta", 1) is not None
    assert queue.enqueue("alpha", 2) is not None
    assert queue.stats()["queues"]["alpha"]["ready"] == 2


def test_claim_lease_ack_frees_the_dedup(queue: TaskQueue, redis_client: redis.Redis) -> None:
    # Given a task
    task = queue.enqueue("alpha", 7)
    assert task is not None
    # When a worker claims and acks it
    claim = queue.claim("w1", TYPES, 5)
    assert [lease.task.task_id for lease in claim.leases] == [task.task_id]
    lease = claim.leases[0]
    assert redis_client.get(queue.keys.task_lock(task.task_type, task.task_id)) == lease.token
    assert queue.stats()["queues"]["alpha"]["in_flight"] == 1
    assert queue.ack(lease)
    # Then nothing is left and the campaign may get a new task of that type (a replayed ack answers as the first)
    assert queue.ack(lease)
    stats = queue.stats()["queues"]["alpha"]
    assert (stats["ready"], stats["in_flight"], stats["delayed"]) == (0, 0, 0)
    assert redis_client.zcard(queue.keys.leases("alpha")) == 0
    assert redis_client.scard(queue.keys.wtasks("alpha", "w1")) == 0
    assert queue.enqueue("alpha", 7) is not None


def test_delayed_retry_keeps_the_dedup_and_counts_the_attempt(queue: TaskQueue) -> None:
    queue.enqueue("alpha", 3)
    lease = queue.claim("w1", TYPES, 1).leases[0]
    assert queue.retry(lease, 0.05)
    assert queue.enqueue("alpha", 3) is None  # still live, in the delayed set
    assert queue.promote_due() == 0
    time.sleep(0.1)
    assert queue.promote_due() == 1
    again = queue.claim("w1", TYPES, 1).leases[0]
    assert again.task.task_id == lease.task.task_id and again.task.retry_count == 1
    assert queue.retry(again, 0.0, spend_attempt=False)
    queue.promote_due()
    assert queue.claim("w1", TYPES, 1).leases[0].task.retry_count == 1


def test_zombie_cannot_ack_or_renew_after_its_lease_is_taken(queue: TaskQueue, redis_client: redis.Redis,
                                                              settings) -> None:  # type: ignore[no-untyped-def]
    # Given worker A holding a task whose lease lapses, and recovery giving it to worker B
    task = queue.enqueue("alpha", 1)
    assert task is not None
    zombie = queue.claim("A", TYPES, 1).leases[0]
    _expire_lease(redis_client, queue, task)
    report = Recovery(redis_client, settings, queue, quiet=0).run_once()
    assert report.requeued == 1
    current = queue.claim("B", TYPES, 1).leases[0]
    assert current.task.retry_count == 0 and current.task.lease_losses == 1  # a lost lease spends no attempt
    # When the zombie wakes up, Then its renew, retry, release and ack change nothing
    assert queue.renew([zombie]) == [False]
    assert not queue.retry(zombie, 0)
    assert not queue.release(zombie)
    assert queue.dead_letter(zombie, "zombie") is None
    assert not queue.ack(zombie)
    assert queue.stats()["queues"]["alpha"]["in_flight"] == 1
    assert redis_client.get(queue.keys.task_lock(task.task_type, task.task_id)) == current.token
    # And the real holder still can
    assert queue.renew([current]) == [True]
    assert queue.ack(current)


def test_batched_ack_settles_the_held_leases_and_rejects_the_stale_one(
        queue: TaskQueue, redis_client: redis.Redis, settings) -> None:  # type: ignore[no-untyped-def]
    # Given worker A holding three tasks, one of which lapsed and is now held by worker B
    for cid in (1, 2, 3):
        queue.enqueue("alpha", cid)
    held = queue.claim("A", TYPES, 3).leases
    assert len(held) == 3
    stale = held[1]
    _expire_lease(redis_client, queue, stale.task)
    assert Recovery(redis_client, settings, queue, quiet=0).run_once().requeued == 1
    current = queue.claim("B", TYPES, 1).leases[0]
    assert current.task.task_id == stale.task.task_id
    # When A acks all three in one call
    assert queue.ack_many(held) == [True, False, True]
    # Then the two it still held are settled, dedup freed, and B's lease is untouched
    stats = queue.stats()["queues"]["alpha"]
    assert (stats["ready"], stats["in_flight"]) == (0, 1)
    assert redis_client.get(queue.keys.task_lock(stale.task.task_type, stale.task.task_id)) == current.token
    assert redis_client.zrange(queue.keys.leases("alpha"), 0, -1) == [task_key("alpha", stale.task.task_id)]
    # (A's set keeps only the stale member; a lapsed lease's recovery cannot know its holder, A clears it on exit)
    assert redis_client.smembers(queue.keys.wtasks("alpha", "A")) == {task_key("alpha", stale.task.task_id)}
    assert queue.enqueue("alpha", 1) is not None and queue.enqueue("alpha", 3) is not None
    assert queue.enqueue("alpha", 2) is None  # B's task is still live
    # And a repeated ack (redis-py replaying the call) changes nothing and answers as the first did
    assert queue.ack_many(held) == [True, False, True]
    assert queue.ack_many([current]) == [True]
    assert queue.ack_many([]) == []


def test_a_task_that_keeps_losing_its_lease_is_dead_lettered(queue: TaskQueue, redis_client: redis.Redis,
                                                             settings) -> None:  # type: ignore[no-untyped-def]
    task = queue.enqueue("beta", 9)
    assert task is not None
    recovery = Recovery(redis_client, settings, queue, quiet=0)
    hooked: list[tuple] = []
    for _ in range(settings.max_lease_losses + 1):
        claim = queue.claim("crashy", TYPES, 1)
        assert len(claim.leases) == 1
        _expire_lease(redis_client, queue, task)
        report = recovery.run_once()
    assert report.dead_lettered == 1
    entries = queue.dlq_list()
    assert len(entries) == 1
    assert entries[0]["reason"] == f"lost its lease {settings.max_lease_losses + 1} times: crash loop, hung handler or poison pill"
    assert entries[0]["task"]["task_id"] == task.task_id and entries[0]["task_type"] == "beta"
    assert queue.stats()["queues"]["beta"] == {"key": queue.keys.queue("beta"), "ready": 0, "in_flight": 0,
                                                "delayed": 0}
    assert queue.enqueue("beta", 9) is not None  # dead-lettering freed the dedup
    del hooked


def test_poison_payloads_land_in_failed_tasks_and_a_fixed_one_can_be_requeued(
        queue: TaskQueue, redis_client: redis.Redis) -> None:
    # Given garbage pushed straight onto a queue list, between two good tasks
    good = queue.enqueue("alpha", 1)
    poison = [
        "not json at all",
        json.dumps([1, 2, 3]),
        json.dumps({"task_id": "x", "campaign_id": 5, "task_type": "alpha"}),  # fields missing
        json.dumps({"task_id": "y", "campaign_id": 6, "task_type": "gamma", "retry_count": 0, "enqueued_at": 1}),
        "x" * 5000,
        json.dumps({"task_id": "z", "campaign_id": True, "task_type": "alpha", "retry_count": 0, "enqueued_at": 1}),
    ]
    for raw in poison:
        redis_client.lpush(queue.keys.queue("alpha"), raw)
    queue.enqueue("alpha", 2)
    # When a worker claims everything
    leases, rejected = [], []
    while True:
        claim = queue.claim("w1", TYPES, 3)
        leases += claim.leases
        rejected += claim.rejected
        if not claim.leases and not claim.rejected:
            break
    # Then the good tasks are leased, every poison payload is dead-lettered with its reason
    assert sorted(lease.task.campaign_id for lease in leases) == [1, 2]
    assert good is not None
    entries = queue.dlq_list()
    assert len(entries) == len(poison) == len(rejected)
    reasons = " | ".join(e["reason"] for e in entries)
    for expected in ("not JSON", "not an object", "has no 'retry_count'", "unknown task type 'gamma'",
                     "5000 bytes", "campaign_id must be int"):
        assert expected in reasons, (expected, reasons)
    assert redis_client.llen(queue.keys.claiming("alpha", "w1")) == 0
    # When the one with a usable type and campaign is requeued
    fixable = next(e for e in entries if e["campaign_id"] == 5)
    result = queue.dlq_requeue(fixable["id"])
    assert result["requeued"] == [fixable["id"]]
    # Then a fresh, valid task for campaign 5 is ready and the entry is gone
    lease = queue.claim("w1", TYPES, 1).leases[0]
    assert (lease.task.task_type, lease.task.campaign_id, lease.task.retry_count) == ("alpha", 5, 0)
    assert len(queue.dlq_list()) == len(poison) - 1
    assert queue.dlq_requeue(None)["unusable"]  # the rest cannot be rebuilt
    assert queue.dlq_purge() == len(poison) - 1
    assert queue.dlq_list() == []


def test_dead_worker_claiming_list_is_requeued(queue: TaskQueue, redis_client: redis.Redis,
                                               settings) -> None:  # type: ignore[no-untyped-def]
    # Given a worker that died between phase 1 (claim.lua) and phase 2 (lease.lua)
    queue.enqueue("alpha", 1)
    queue.enqueue("alpha", 2)
    redis_client.hset(queue.keys.workers, "dead", "{}")
    queue.scripts.claim(keys=[queue.keys.claiming("alpha", "dead"), queue.keys.queue("alpha")], args=[5])
    lease = queue.claim("dead", TYPES, 0).leases  # count 0 leases what is already in the claiming list
    assert len(lease) == 2
    queue.ack(lease[0])
    redis_client.lpush(queue.keys.claiming("beta", "dead"), queue.enqueue("beta", 3).to_json())  # type: ignore[union-attr]
    redis_client.rpop(queue.keys.queue("beta"))
    # When recovery runs (the worker has no liveness key)
    report = Recovery(redis_client, settings, queue, quiet=0).run_once()
    # Then its leased and claimed tasks are back at the front, and it is unregistered
    assert report.dead_workers == ["dead"] and report.requeued == 2
    assert redis_client.hlen(queue.keys.workers) == 0
    stats = queue.stats()["queues"]
    assert stats["alpha"]["ready"] == 1 and stats["beta"]["ready"] == 1
    assert stats["alpha"]["in_flight"] == 0


def test_requeued_tasks_go_to_the_front(queue: TaskQueue) -> None:
    for cid in (1, 2, 3):
        queue.enqueue("alpha", cid)
    lease = queue.claim("w1", TYPES, 1).leases[0]
    assert lease.task.campaign_id == 1  # FIFO
    assert queue.release(lease)
    assert queue.claim("w1", TYPES, 1).leases[0].task.campaign_id == 1


def test_duplicate_payload_of_a_live_task_is_not_leased_twice(queue: TaskQueue, redis_client: redis.Redis) -> None:
    task = queue.enqueue("alpha", 1)
    assert task is not None
    redis_client.lpush(queue.keys.queue("alpha"), task.to_json())  # the same payload delivered twice
    claim = queue.claim("w1", TYPES, 5)
    assert len(claim.leases) == 1
    assert queue.ack(claim.leases[0])
    assert queue.stats()["queues"]["alpha"] == {"key": queue.keys.queue("alpha"), "ready": 0, "in_flight": 0,
                                                 "delayed": 0}


def test_retry_policy_full_jitter_is_bounded() -> None:
    policy = RetryPolicy(max_attempts=3, base=1.0, cap=5.0)
    for n in range(10):
        assert 0 <= policy.backoff(n) <= min(5.0, 2**n)
    assert not policy.exhausted(0) and not policy.exhausted(1) and policy.exhausted(2)


def test_payloads_claimed_but_not_leased_come_first_at_the_next_claim(queue: TaskQueue, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Stepped: claim.lua moved a beta payload into the worker's claiming list, then the lease call failed
    (Redis went away). Alpha always has work, so a claim that visited types in order would never reach
    beta's leftover while the worker lives; it must come first."""
    queue.enqueue("beta", 1)
    for cid in range(2, 5):
        queue.enqueue("alpha", cid)
    original = queue._lease

    def lease_fails(worker_id: str, task_type: str, raws):  # type: ignore[no-untyped-def]
        raise redis.ConnectionError("gone")

    monkeypatch.setattr(queue, "_lease", lease_fails)
    with pytest.raises(redis.ConnectionError):
        queue.claim("W1", ["beta"], 1)
    monkeypatch.setattr(queue, "_lease", original)
    assert queue.redis.llen(queue.keys.claiming("beta", "W1")) == 1
    # When the worker claims one task from alpha then beta
    [lease] = queue.claim("W1", ["alpha", "beta"], 1).leases
    # Then it is the leftover, not alpha's next task
    assert lease.task.task_type == "beta" and lease.task.campaign_id == 1
    assert queue.redis.llen(queue.keys.claiming("beta", "W1")) == 0
    # and afterwards alpha comes first again
    assert queue.claim("W1", ["alpha", "beta"], 1).leases[0].task.task_type == "alpha"
