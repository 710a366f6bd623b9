"""hypothesis: random interleavings of queue operations on the real Redis never lose or duplicate a task.

Invariant after every step: every task enqueued and not acknowledged is in
exactly one place — a ready list, a claiming list, an in-flight hash, a delayed
set or the dead letters — and an acknowledged task is in none. Fenced
operations succeed exactly when the caller's token is still the lock's value.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter

import hypothesis.strategies as st
import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine.keys import task_key
from engine.queue import Lease, TaskQueue
from engine.recovery import Recovery
from engine.settings import EngineSettings
from tests.engine.conftest import client_for

TYPES = ("alpha", "beta")
WORKERS = ("w1", "w2")


class QueueMachine(RuleBasedStateMachine):
    url: str = ""
    cluster: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.r = client_for(self.url, self.cluster)
        self.settings = EngineSettings(redis_url=self.url, redis_cluster=self.cluster,
                                       key_prefix=f"h{uuid.uuid4().hex[:10]}", visibility_timeout=60,
                                       max_lease_losses=2)
        self.queue = TaskQueue(self.r, self.settings, TYPES)
        self.recovery = Recovery(self.r, self.settings, self.queue, quiet=0, clock=lambda: 0.0)  # no stall guesses: deterministic
        self.live: set[str] = set()
        self.acked: set[str] = set()
        self.leases: list[Lease] = []

    def teardown(self) -> None:
        keys = list(self.r.scan_iter(match=f"*{self.settings.key_prefix}*", count=1000))
        if keys:
            self.r.delete(*keys)
        self.r.close()

    def _current(self, lease: Lease) -> bool:
        return self.r.get(self.queue.keys.task_lock(lease.task.task_type, lease.task.task_id)) == lease.token

    @rule(task_type=st.sampled_from(TYPES), cid=st.integers(1, 4), delay=st.sampled_from([0.0, 0.0, 60.0]))
    def enqueue(self, task_type: str, cid: int, delay: float) -> None:
        task = self.queue.enqueue(task_type, cid, delay)
        if task is not None:
            self.live.add(task.task_id)

    @rule(worker=st.sampled_from(WORKERS), n=st.integers(1, 3))
    def claim(self, worker: str, n: int) -> None:
        claim = self.queue.claim(worker, TYPES, n)
        assert not claim.rejected
        self.leases += claim.leases

    @rule(worker=st.sampled_from(WORKERS))
    def half_claim(self, worker: str) -> None:
        """Phase 1 only: the worker dies before leasing (its claiming list holds the payload)."""
        self.r.hset(self.queue.keys.workers, worker, "{}")
        for t in TYPES:  # one type's slot per call, as the engine claims
            if self.queue.scripts.claim(keys=[self.queue.keys.claiming(t, worker), self.queue.keys.queue(t)],
                                        args=[1]):
                break

    @precondition(lambda self: self.leases)
    @rule(i=st.integers(0, 100))
    def ack(self, i: int) -> None:
        lease = self.leases.pop(i % len(self.leases))
        current = self._current(lease)
        assert self.queue.ack(lease) == current
        if current:
            self.live.discard(lease.task.task_id)
            self.acked.add(lease.task.task_id)

    @precondition(lambda self: self.leases)
    @rule(i=st.integers(0, 100))
    def renew(self, i: int) -> None:
        lease = self.leases[i % len(self.leases)]
        current = self._current(lease)
        assert self.queue.renew([lease]) == [current]

    @precondition(lambda self: self.leases)
    @rule(i=st.integers(0, 100), delay=st.sampled_from([0.0, 60.0]), spend=st.booleans())
    def retry(self, i: int, delay: float, spend: bool) -> None:
        lease = self.leases.pop(i % len(self.leases))
        current = self._current(lease)
        assert self.queue.retry(lease, delay, spend_attempt=spend) == current

    @precondition(lambda self: self.leases)
    @rule(i=st.integers(0, 100))
    def release(self, i: int) -> None:
        lease = self.leases.pop(i % len(self.leases))
        current = self._current(lease)
        assert self.queue.release(lease) == current

    @precondition(lambda self: self.leases)
    @rule(i=st.integers(0, 100))
    def dead_letter(self, i: int) -> None:
        lease = self.leases.pop(i % len(self.leases))
        current = self._current(lease)
        assert (self.queue.dead_letter(lease, "test") is not None) == current

    @precondition(lambda self: self.leases)
    @rule(i=st.integers(0, 100))
    def expire(self, i: int) -> None:
        """The lease lapses (the worker stays around as a possible zombie)."""
        task = self.leases[i % len(self.leases)].task
        self.r.zadd(self.queue.keys.leases(task.task_type), {task_key(task.task_type, task.task_id): 0})
        self.r.delete(self.queue.keys.task_lock(task.task_type, task.task_id))

    @rule(worker=st.sampled_from(WORKERS))
    def kill_worker(self, worker: str) -> None:
        """Registered, no liveness key: recovery treats it as dead."""
        self.r.hset(self.queue.keys.workers, worker, "{}")

    @rule()
    def recover(self) -> None:
        self.recovery.run_once()

    @rule()
    def promote_all(self) -> None:
        for t in TYPES:
            due = {m: 0 for m in self.r.zrange(self.queue.keys.delayed(t), 0, -1)}
            if due:
                self.r.zadd(self.queue.keys.delayed(t), due)
        self.queue.promote_due()

    @invariant()
    def every_task_in_exactly_one_place(self) -> None:
        k = self.queue.keys
        seen: Counter[str] = Counter()
        for t in TYPES:
            for raw in self.r.lrange(k.queue(t), 0, -1):
                seen[json.loads(raw)["task_id"]] += 1
            for raw in self.r.zrange(k.delayed(t), 0, -1):
                seen[json.loads(raw)["task_id"]] += 1
            for task_id in self.r.hkeys(k.inflight(t)):
                seen[task_id] += 1
        for w in WORKERS:
            for t in TYPES:
                for raw in self.r.lrange(k.claiming(t, w), 0, -1):
                    seen[json.loads(raw)["task_id"]] += 1
        for entry in self.queue.dlq_list():
            seen[entry["task"]["task_id"]] += 1
        dead = {e["task"]["task_id"] for e in self.queue.dlq_list()}
        assert {tid: n for tid, n in seen.items() if n != 1} == {}, "a task is in two places"
        assert set(seen) - dead == self.live - dead, "a task was lost or appeared from nowhere"
        assert not (set(seen) & self.acked), "an acknowledged task came back"

    @invariant()
    def in_flight_tasks_have_a_lease_entry(self) -> None:
        k = self.queue.keys
        leased = {m for t in TYPES for m in self.r.zrange(k.leases(t), 0, -1)}
        for t in TYPES:
            for task_id in self.r.hkeys(k.inflight(t)):
                assert task_key(t, task_id) in leased


@pytest.mark.redis
def test_queue_state_machine(redis_url: str, redis_mode: str) -> None:
    QueueMachine.url = redis_url
    QueueMachine.cluster = redis_mode == "cluster"
    run = QueueMachine.TestCase
    run.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                            suppress_health_check=[HealthCheck.too_slow])
    run().runTest()
