"""Every Lua script, called twice with the same arguments, leaves the state one call leaves and answers the same.

redis-py retries a call whose answer was lost (a timeout, a dropped
connection): the server may have run it already. Each case below sets up the
state a script acts on, calls it once, snapshots every key of the test's
prefix, calls it again with the very same KEYS and ARGV (a replay), and
compares. Scripts whose clock-driven effects cannot repeat to the microsecond
(renew, the limiter) compare with a tolerance, and the limiter only promises
that a replay never grants more than the bucket holds: a replayed reservation
holds a second slot that no caller learns of (one token wasted, never one too many).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import redis

from engine.queue import TaskQueue, new_op_id
from engine.ratelimit import Limit, RateLimiter
from engine.scripts import sources
from engine.settings import EngineSettings
from engine.task import Task
from tests.engine.conftest import TYPES

#: A score (ms or µs on the server clock) may move this much between a call and its replay.
SCORE_TOLERANCE = 5_000_000


def snapshot(r: redis.Redis, prefix: str) -> dict[str, Any]:
    """Every key under ``prefix`` with its type and value (no TTLs; zset scores kept for a tolerant compare)."""
    out: dict[str, Any] = {}
    for key in sorted(r.scan_iter(match=f"*{prefix}*", count=1000)):
        kind = r.type(key)
        if kind == "string":
            value: Any = r.get(key)
        elif kind == "list":
            value = r.lrange(key, 0, -1)
        elif kind == "hash":
            value = r.hgetall(key)
        elif kind == "set":
            value = sorted(r.smembers(key))
        elif kind == "zset":
            value = r.zrange(key, 0, -1, withscores=True)
        else:
            value = None
        out[key] = (kind, value)
    return out


def same_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.keys() != b.keys():
        return False
    for key, (kind, value) in a.items():
        other = b[key][1]
        if kind == "zset":
            if [m for m, _ in value] != [m for m, _ in other]:
                return False
            if any(abs(s1 - s2) > SCORE_TOLERANCE for (_, s1), (_, s2) in zip(value, other)):
                return False
        elif value != other:
            return False
    return True


Case = Callable[[TaskQueue, redis.Redis], tuple[str, list[str], list[Any]]]


def _leased(queue: TaskQueue, cid: int = 1, worker: str = "W1") -> Any:
    queue.enqueue("alpha", cid)
    return queue.claim(worker, TYPES, 1).leases[0]


def case_enqueue(q: TaskQueue, r: redis.Redis) -> tuple[str, list[str], list[Any]]:
    one, two = Task.new("alpha", 1), Task.new("alpha", 2)
    return "enqueue", [q.keys.queue("alpha"), q.keys.delayed("alpha"), q.keys.dedup("alpha", 1),
                       q.keys.dedup("alpha", 2)], [0, one.to_json(), one.task_id, two.to_json(), two.task_id]


def case_claim(q: TaskQueue, r: redis.Redis) -> tuple[str, list[str], list[Any]]:
    for cid in (1, 2, 3):
        q.enqueue("alpha", cid)
    return "claim", [q.keys.claiming("alpha", "W1"), q.keys.queue("alpha")], [2]


def case_lease(q: TaskQueue, r: redis.Redis) -> tuple[str, list[str], list[Any]]:
    task = q.enqueue("alpha", 1)
    assert task is not None
    raw = q.scripts.claim(keys=[q.keys.claiming("alpha", "W1"), q.keys.queue("alpha")], args=[1])[0]
    return "lease", [q.keys.claiming("alpha", "W1"), q.keys.leases("alpha"), q.keys.wtasks("alpha", "W1"), q.keys.inflight("alpha"),
                     q.keys.task_lock(task.task_type, task.task_id)], [60_000, raw, task.task_id, "alpha", "tok:W1"]


def case_ack(q: TaskQueue, r: redis.Redis) -> tuple[str, list[str], list[Any]]:
    lease = _leased(q)
    t = lease.task
    return "ack", [q.keys.leases("alpha"), q.keys.task_lock(t.task_type, t.task_id), q.keys.inflight("alpha"), q.keys.dedup("alpha", 1),
                   q.keys.wtasks("alpha", "W1")], [q.replay_ms, lease.token, t.task_id, "alpha"]


def case_renew(q: TaskQueue, r: redis.Redis) -> tuple[str, list[str], list[Any]]:
    lease = _leased(q)
    t = lease.task
    return "renew", [q.keys.leases("alpha"), q.keys.task_lock(t.task_type, t.task_id)], [60_000, lease.token, f"alpha:{t.task_id}"]


def case_retry(q: TaskQueue, r: redis.Redis) -> tuple[str, list[str], list[Any]]:
    lease = _leased(q)
    t = lease.task
    return "retry", [q.keys.task_lock(t.task_type, t.task_id), q.keys.inflight("alpha"), q.keys.leases("alpha"), q.keys.delayed("alpha"),
                     q.keys.wtasks("alpha", "W1")], [lease.token, t.task_id, "alpha", t.to_json(), 1000, q.replay_ms]


def case_requeue(q: TaskQueue, r: redis.Redis) -> tuple[str, list[str], list[Any]]:
    lease = _leased(q)
    t = lease.task
    return "requeue", [q.keys.task_lock(t.task_type, t.task_id), q.keys.inflight("alpha"), q.keys.leases("alpha"), q.keys.queue("alpha"),
                       q.keys.wtasks("alpha", "W1")], [lease.token, t.task_id, "alpha", t.to_json(), q.replay_ms]


def case_dead_letter(q: TaskQueue, r: redis.Redis) -> tuple[str, list[str], list[Any]]:
    lease = _leased(q)
    t = lease.task
    return "dead_letter", [q.keys.task_lock(t.task_type, t.task_id), q.keys.inflight("alpha"), q.keys.leases("alpha"), q.keys.failed("alpha"),
                           q.keys.dedup("alpha", 1), q.keys.wtasks("alpha", "W1")], \
        [lease.token, t.task_id, "alpha", json.dumps({"id": "e1"}), q.replay_ms]


def case_recover_lapsed(q: TaskQueue, r: redis.Redis) -> tuple[str, list[str], list[Any]]:
    lease = _leased(q)
    t = lease.task
    r.zadd(q.keys.leases("alpha"), {f"alpha:{t.task_id}": 0})
    r.delete(q.keys.task_lock(t.task_type, t.task_id))
    return "recover", [q.keys.task_lock(t.task_type, t.task_id), q.keys.inflight("alpha"), q.keys.leases("alpha"), q.keys.queue("alpha"),
                       q.keys.dedup("alpha", 1)], \
        ["lapsed", t.task_id, "alpha", lease.payload, "requeue", t.to_json(), new_op_id(), q.replay_ms]


def case_recover_dead(q: TaskQueue, r: redis.Redis) -> tuple[str, list[str], list[Any]]:
    lease = _leased(q)
    t = lease.task
    return "recover", [q.keys.task_lock(t.task_type, t.task_id), q.keys.inflight("alpha"), q.keys.leases("alpha"), q.keys.failed("alpha"),
                       q.keys.dedup("alpha", 1), q.keys.wtasks("alpha", "W1"), q.keys.liveness("alpha", "W1")], \
        ["dead", t.task_id, "alpha", lease.payload, "dead", json.dumps({"id": "e2"}), new_op_id(), q.replay_ms,
         lease.token, "", q.server_ms(), 60_000]


def case_unclaim(q: TaskQueue, r: redis.Redis) -> tuple[str, list[str], list[Any]]:
    q.enqueue("alpha", 1)
    raw = q.scripts.claim(keys=[q.keys.claiming("alpha", "W1"), q.keys.queue("alpha")], args=[1])[0]
    return "unclaim", [q.keys.claiming("alpha", "W1"), q.keys.queue("alpha"), q.keys.op("alpha", new_op_id()),
                       q.keys.dedup("alpha", 1), q.keys.liveness("alpha", "W1")], \
        [raw, raw.replace('"retry_count":0', '"retry_count":0,"lease_losses":1'), "", q.replay_ms, "",
         q.server_ms(), 60_000]


def case_reject(q: TaskQueue, r: redis.Redis) -> tuple[str, list[str], list[Any]]:
    r.lpush(q.keys.claiming("alpha", "W1"), "garbage")
    return "reject", [q.keys.claiming("alpha", "W1"), q.keys.failed("alpha"), q.keys.op("alpha", new_op_id())], \
        ["garbage", json.dumps({"id": "e3"}), q.replay_ms]


def case_dlq_requeue(q: TaskQueue, r: redis.Redis) -> tuple[str, list[str], list[Any]]:
    entry = json.dumps({"id": "e4", "task_type": "alpha", "campaign_id": 1})
    r.rpush(q.keys.failed("alpha"), entry)
    task = Task.new("alpha", 1)
    return "dlq_requeue", [q.keys.failed("alpha"), q.keys.queue("alpha"), q.keys.dedup("alpha", 1), q.keys.op("alpha", new_op_id())], \
        [entry, task.to_json(), task.task_id, q.replay_ms]


def case_promote(q: TaskQueue, r: redis.Redis) -> tuple[str, list[str], list[Any]]:
    r.zadd(q.keys.delayed("alpha"), {Task.new("alpha", 1).to_json(): 0, Task.new("alpha", 2).to_json(): 0})
    return "promote", [q.keys.op("alpha", new_op_id()), q.keys.delayed("alpha"), q.keys.queue("alpha")], [100, q.replay_ms]


def case_unregister(q: TaskQueue, r: redis.Redis) -> tuple[str, list[str], list[Any]]:
    r.hset(q.keys.workers, "W1", "{}")
    return "unregister", [q.keys.workers, q.keys.worker("W1")], ["W1", ""]


def case_pause_bucket(q: TaskQueue, r: redis.Redis) -> tuple[str, list[str], list[Any]]:
    api = q.keys.ratelimit("zillow", "paused_until")
    return "pause_bucket", [api, q.keys.ratelimit("zillow", f"op:{new_op_id()}")], [5000, q.replay_ms]


def case_prime_bucket(q: TaskQueue, r: redis.Redis) -> tuple[str, list[str], list[Any]]:
    return "prime_bucket", [q.keys.ratelimit("zillow", "tokens"), q.keys.ratelimit("zillow", "last_refill"),
                            q.keys.ratelimit("zillow", f"op:{new_op_id()}")], [q.replay_ms]


def case_advance_cursor(q: TaskQueue, r: redis.Redis) -> tuple[str, list[str], list[Any]]:
    r.set(q.keys.generation, "g1")
    return "advance_cursor", [q.keys.generation, q.keys.reconciled_until], ["g1", "2026-11-30T20:00:00"]


CASES: list[Case] = [case_advance_cursor, case_enqueue, case_claim, case_lease, case_ack, case_renew, case_retry, case_requeue,
                     case_dead_letter, case_recover_lapsed, case_recover_dead, case_unclaim, case_reject,
                     case_dlq_requeue, case_promote, case_unregister, case_pause_bucket, case_prime_bucket]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__.removeprefix("case_"))
def test_a_replayed_call_leaves_the_same_state_and_gives_the_same_answer(
        case: Case, queue: TaskQueue, redis_client: redis.Redis, key_prefix: str) -> None:
    # Given the state the script acts on
    name, keys, args = case(queue, redis_client)
    script = getattr(queue.scripts, name)
    # When it is called, and the same call is replayed
    first = script(keys=keys, args=args)
    after_one = snapshot(redis_client, key_prefix)
    replay = script(keys=keys, args=args)
    after_two = snapshot(redis_client, key_prefix)
    # Then the replay answered as the first did and changed nothing
    assert replay == first, name
    assert same_state(after_one, after_two), (name, after_one, after_two)
    # (and the first call did something: a case that tests a no-op would prove nothing)
    assert first not in (0, [0], None, []), (name, first)


def test_every_script_has_a_replay_case() -> None:
    names = {c.__name__.removeprefix("case_").removesuffix("_lapsed").removesuffix("_dead") for c in CASES}
    # acquire_token is the one exception: see test_a_replayed_token_request_never_over_grants
    assert set(sources()) - names == {"acquire_token"}


def test_a_replayed_token_request_never_over_grants(redis_client: redis.Redis, settings: EngineSettings) -> None:
    # Given a bucket of 2 tokens that refills at 1 per 100 s (nothing refills during the test)
    limiter = RateLimiter(redis_client, settings, {"api": Limit(rate=0.01, burst=2)})
    sec, usec = redis_client.time()
    redis_client.mset({limiter._bucket("api")[0]: "2", limiter._bucket("api")[1]: str(int(sec) * 10**6 + int(usec))})
    keys = limiter._bucket("api")
    args = [repr(limiter.rate("api")), 2, 1_000_000_000]  # callers wait up to 1000 s: they reserve
    # When one request is replayed, and then a third caller asks
    first = limiter.scripts.acquire_token(keys=keys, args=args)
    replay = limiter.scripts.acquire_token(keys=keys, args=args)
    third = limiter.scripts.acquire_token(keys=keys, args=args)
    # Then the replay took the second token (the caller only learns one grant: one token wasted, never one
    # too many), and the third caller is given the slot after them: the next refill, 100 s on
    assert first[:2] == [1, 0] and replay[:2] == [1, 0]
    assert third[0] == 1 and third[1] + third[2] - first[2] == pytest.approx(100_000_000, abs=2)
