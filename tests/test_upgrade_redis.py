"""``campaignctl upgrade-redis`` (engine.upgrade): a Redis of the single-tag layout moved to the per-type one.

The old layout is written by hand, with the literal key names the old engine
used (``{P}:queue:<T>``, ``{P}:task_lock:<id>``, …), so these tests do not
depend on any code of the old engine. The payloads are real tasks
(engine.task), some of them with retries and lease losses, so "untouched"
means something.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import redis

from engine import upgrade
from engine.queue import TaskQueue
from engine.settings import EngineSettings
from engine.task import Task
from engine.upgrade import ClusterRefused, WorkersAlive, old_layout_present, upgrade_layout
from tests.servers import RedisClusterServer, serve_or_fail
from workflow.states import TASK_TYPES

ROOT = Path(__file__).resolve().parent.parent
CAMPAIGNCTL = str(Path(sys.executable).parent / "campaignctl")
#: Worker ids as engine.identity makes them (host:pid:random): the old holder of the in-flight tasks, the
#: worker that claimed without leasing, and one still alive.
HOLDER, CLAIMER, LIVE = "box-1:4242:a1b2c3d4", "box-2:4243:0badcafe", "box-9:77:feedbeef"


def task(task_type: str, campaign_id: int, at: float, **extra: Any) -> Task:
    return Task(f"t{campaign_id:04d}{task_type[:4]}", campaign_id, task_type, enqueued_at=at, **extra)


@attrs.define
class OldLayout:
    """What was written under the old names, to check where each piece ends up."""

    prefix: str
    ready: dict[str, list[Task]]
    delayed: dict[str, dict[Task, float]]
    inflight: dict[str, list[Task]]
    #: The claiming list of worker CLAIMER, in the order it claimed (first claimed first).
    claimed: list[str]
    dead_letters: list[str]

    @property
    def tag(self) -> str:
        return "{" + self.prefix + "}"

    def tasks(self) -> list[Task]:
        out = [t for ts in self.ready.values() for t in ts] + [t for ts in self.inflight.values() for t in ts]
        out += [t for d in self.delayed.values() for t in d]
        return out + [Task.from_json(raw) for raw in self.claimed if _is_task(raw)]


def _is_task(raw: str) -> bool:
    try:
        Task.from_json(raw, TASK_TYPES)
    except ValueError:
        return False
    return True


def write_old_layout(r: redis.Redis, prefix: str) -> OldLayout:
    """Every kind of key the old engine wrote, under its old name."""
    tag = "{" + prefix + "}"
    ready = {"property_data": [task("property_data", 1, 1.0), task("property_data", 2, 2.0),
                               task("property_data", 3, 3.0)],
             "email_creation": [task("email_creation", 10, 10.0, retry_count=1)]}
    delayed = {"market_data": {task("market_data", 20, 20.0, retry_count=2): 5_000.0,
                               task("market_data", 21, 21.0, retry_count=1): 9_000.0}}
    inflight = {"property_data": [task("property_data", 4, 4.0), task("property_data", 5, 5.0, retry_count=2,
                                                                       lease_losses=1, run_id=3)],
                "home_analysis": [task("home_analysis", 30, 30.0)]}
    claimed = [task("market_data", 22, 22.0).to_json(), task("property_data", 6, 6.0).to_json(),
               "not json {", json.dumps({"task_type": "no_such_stage", "campaign_id": 9}), "[1, 2]"]
    dead = [json.dumps({"id": "d1", "task_type": "property_data", "campaign_id": 40, "reason": "4xx"}),
            json.dumps({"id": "d2", "task_type": None, "campaign_id": None, "reason": "malformed payload"}),
            json.dumps({"id": "d3", "task_type": "market_data", "campaign_id": 41, "reason": "retries exhausted"}),
            "a dead letter that is not JSON",
            json.dumps({"id": "d5", "task_type": "property_data", "campaign_id": 42, "reason": "4xx"}),
            json.dumps({"id": "d6", "task_type": "no_such_stage", "campaign_id": 43, "reason": "old stage"})]
    pipe = r.pipeline(transaction=True)
    for t, ts in ready.items():
        pipe.lpush(f"{tag}:queue:{t}", *(x.to_json() for x in ts))  # LPUSH: the oldest ends up rightmost
    for t, by_task in delayed.items():
        pipe.zadd(f"{tag}:delayed:{t}", {x.to_json(): due for x, due in by_task.items()})
    for t, ts in inflight.items():
        pipe.hset(f"{tag}:inflight:{t}", mapping={x.task_id: x.to_json() for x in ts})
        for x in ts:
            pipe.set(f"{tag}:task_lock:{x.task_id}", f"a1b2c3d4e5f60718:{HOLDER}", px=60_000)
            pipe.zadd(f"{tag}:leases", {f"{t}:{x.task_id}": 1_000})
            pipe.sadd(f"{tag}:wtasks:{HOLDER}", f"{t}:{x.task_id}")
    pipe.lpush(f"{tag}:claiming:{CLAIMER}", *claimed)  # claim.lua moved RIGHT -> LEFT: the first claimed is rightmost
    live = [x for ts in ready.values() for x in ts] + [x for d in delayed.values() for x in d]
    live += [x for ts in inflight.values() for x in ts] + [Task.from_json(c) for c in claimed[:2]]
    for x in live:
        pipe.set(f"{tag}:dedup:{x.task_type}:{x.campaign_id}", x.task_id)
    pipe.rpush(f"{tag}:failed_tasks", *dead)
    pipe.set(f"{tag}:op:0123456789abcdef", "1", px=60_000)
    pipe.hset(f"{tag}:workers", HOLDER, json.dumps({"id": HOLDER, "queues": ["property_data"]}))
    pipe.set(f"{tag}:generation", "g-1")
    pipe.set(f"{tag}:reconciled_until", "1700000000.5")
    pipe.rpush(f"{tag}:pending_hooks", json.dumps({"task": json.loads(ready["property_data"][0].to_json()),
                                                   "reason": "4xx", "error": None}))
    pipe.sadd(f"{prefix}:controls:paused", "market_data")
    pipe.hset(f"{prefix}:controls:rates", mapping={"zillow": "0.15"})
    pipe.hset(f"{prefix}:controls:plans", mapping={"zillow": "0.1666"})
    pipe.hset(f"{prefix}:stats:calls", mapping={"zillow": 7, "rentcast": 3})
    pipe.hset(f"{prefix}:stats:throttled", mapping={"zillow": 1})
    pipe.set(f"{prefix}:ratelimit:{{zillow}}:tokens", "2.5")
    pipe.execute()
    return OldLayout(prefix, ready, delayed, inflight, claimed, dead)


def our_keys(r: redis.Redis, prefix: str) -> set[str]:
    return {k if isinstance(k, str) else k.decode() for k in r.scan_iter(match=f"*{prefix}*", count=1000)}


@pytest.fixture
def raw_client(redis_url: str) -> Iterator[redis.Redis]:
    """Bytes in, bytes out: DUMP answers are not text."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def dump(raw: redis.Redis, prefix: str) -> dict[str, tuple[bytes | None, bool]]:
    """Every key of the test: its serialized value, and whether it has a TTL."""
    return {k: (raw.dump(k), raw.pttl(k) > 0) for k in sorted(our_keys(raw, prefix))}


# -- the move ---------------------------------------------------------------------------


def test_every_payload_lands_exactly_once_and_nothing_old_remains(redis_client: redis.Redis,
                                                                  key_prefix: str) -> None:
    # Given a Redis the old engine left: queued, delayed, in flight (locks, leases), claimed, dedup, dead letters
    r, p = redis_client, key_prefix
    old = write_old_layout(r, p)
    assert sorted(old_layout_present(r, p, TASK_TYPES)) == sorted([
        f"{{{p}}}:queue:property_data", f"{{{p}}}:queue:email_creation", f"{{{p}}}:delayed:market_data",
        f"{{{p}}}:inflight:property_data", f"{{{p}}}:inflight:home_analysis", f"{{{p}}}:leases"])
    # When it is upgraded
    report = upgrade_layout(r, p, TASK_TYPES)
    # Then every task payload is in exactly one new ready list or delayed set, byte for byte (retries untouched)
    found: Counter[Any] = Counter()
    for t in TASK_TYPES:
        found.update(r.lrange(f"{{{p}:{t}}}:queue", 0, -1))
        found.update(r.zrange(f"{{{p}:{t}}}:delayed", 0, -1))
    assert found == Counter(x.to_json() for x in old.tasks())
    # And the front of each ready list (its right end, where workers take) holds what was claimed, then what
    # was in flight (oldest first), then the old ready list in its order
    pd = old.ready["property_data"]
    a, b = old.inflight["property_data"]
    assert r.lrange(f"{{{p}:property_data}}:queue", 0, -1) == [
        pd[2].to_json(), pd[1].to_json(), pd[0].to_json(), b.to_json(), a.to_json(), old.claimed[1]]
    assert r.lrange(f"{{{p}:market_data}}:queue", 0, -1) == [old.claimed[0]]
    assert r.lrange(f"{{{p}:home_analysis}}:queue", 0, -1) == [old.inflight["home_analysis"][0].to_json()]
    assert dict(r.zrange(f"{{{p}:market_data}}:delayed", 0, -1, withscores=True)) == {  # type: ignore[arg-type]
        x.to_json(): due for x, due in old.delayed["market_data"].items()}
    # And every dedup key has its new name and the same task id
    for x in old.tasks():
        assert r.get(f"{{{p}:{x.task_type}}}:dedup:{x.campaign_id}") == x.task_id
    # And dead letters of a known type moved to their type, in order; the rest stayed, with the claimed
    # payloads that name no known type after them, each with its reason
    d = old.dead_letters
    assert r.lrange(f"{{{p}:property_data}}:failed_tasks", 0, -1) == [d[0], d[4]]
    assert r.lrange(f"{{{p}:market_data}}:failed_tasks", 0, -1) == [d[2]]
    untyped = r.lrange(f"{{{p}}}:failed_tasks", 0, -1)
    assert untyped[:3] == [d[1], d[3], d[5]]
    entries = [json.loads(e) for e in untyped[3:]]
    assert [e["task"] for e in entries] == [old.claimed[4], old.claimed[3], old.claimed[2]]
    assert all(e["worker_id"] == CLAIMER and "upgrade-redis" in e["reason"] for e in entries)
    assert [e["task_type"] for e in entries] == [None, "no_such_stage", None]
    assert "unknown task type 'no_such_stage'" in entries[1]["reason"] and "not JSON" in entries[2]["reason"]
    # And the controls carry the registry's tag
    assert r.smembers(f"{{{p}}}:controls:paused") == {"market_data"}
    assert r.hgetall(f"{{{p}}}:controls:rates") == {"zillow": "0.15"}
    assert r.hgetall(f"{{{p}}}:stats:calls") == {"zillow": "7", "rentcast": "3"}
    # And nothing of the old layout is left: only the new keys, the registry's and the rate-limit bucket
    new = {f"{{{p}:{t}}}:{k}" for t in ("property_data", "market_data", "home_analysis", "email_creation")
           for k in ("queue",)} | {f"{{{p}:market_data}}:delayed"}
    new |= {f"{{{p}:{x.task_type}}}:dedup:{x.campaign_id}" for x in old.tasks()}
    new |= {f"{{{p}:property_data}}:failed_tasks", f"{{{p}:market_data}}:failed_tasks"}
    new |= {f"{{{p}}}:{k}" for k in ("failed_tasks", "workers", "generation", "reconciled_until", "pending_hooks",
                                     "controls:paused", "controls:rates", "controls:plans", "stats:calls",
                                     "stats:throttled")}
    new |= {f"{p}:ratelimit:{{zillow}}:tokens"}
    assert our_keys(r, p) == new
    assert old_layout_present(r, p, TASK_TYPES) == []
    # And the report says what moved
    # (ready 4, delayed 2, in flight 3, claimed 5, dedup keys 11, typed dead letters 3, control entries 6;
    # task_lock 3 keys, leases, wtasks and op 1 each)
    assert report.moved == 4 + 2 + 3 + 5 + 11 + 3 + 6 and report.dropped == 3 + 1 + 1 + 1
    assert not report.left and not report.dry_run


def test_what_the_new_layout_already_holds_is_merged_not_overwritten(redis_client: redis.Redis,
                                                                       key_prefix: str) -> None:
    # Given an old layout, and new keys a new-version service already wrote (started before the upgrade)
    r, p = redis_client, key_prefix
    old = write_old_layout(r, p)
    fresh = task("property_data", 50, 50.0).to_json()
    first_due = next(iter(old.delayed["market_data"]))
    r.lpush(f"{{{p}:property_data}}:queue", fresh)
    r.zadd(f"{{{p}:market_data}}:delayed", {first_due.to_json(): 1_000.0})
    r.set(f"{{{p}:property_data}}:dedup:1", "a-newer-task")
    r.rpush(f"{{{p}:property_data}}:failed_tasks", "new-dead-letter")
    r.sadd(f"{{{p}}}:controls:paused", "property_data")
    r.hset(f"{{{p}}}:controls:rates", mapping={"zillow": "0.5"})
    r.hset(f"{{{p}}}:stats:calls", mapping={"zillow": 2, "bedrock": 1})
    # When it is upgraded
    report = upgrade_layout(r, p, TASK_TYPES)
    # Then the old tasks, older, are taken before the new one (right of it); a task in both sets keeps the
    # earlier due time; a dedup key the new layout already had wins (its task is live there)
    queue = r.lrange(f"{{{p}:property_data}}:queue", 0, -1)
    assert queue[0] == fresh and len(queue) == 7
    assert r.zscore(f"{{{p}:market_data}}:delayed", first_due.to_json()) == 1_000.0
    assert r.get(f"{{{p}:property_data}}:dedup:1") == "a-newer-task"
    assert not r.exists(f"{{{p}}}:dedup:property_data:1")
    dedup = next(s for s in report.steps if s.kind == upgrade.DEDUP and s.task_type == "property_data")
    assert "1 whose new key already existed" in dedup.note
    # And old dead letters go ahead of the newer ones; paused is the union, an override set anew wins,
    # counters add up
    d = old.dead_letters
    assert r.lrange(f"{{{p}:property_data}}:failed_tasks", 0, -1) == [d[0], d[4], "new-dead-letter"]
    assert r.smembers(f"{{{p}}}:controls:paused") == {"market_data", "property_data"}
    assert r.hgetall(f"{{{p}}}:controls:rates") == {"zillow": "0.5"}
    assert r.hgetall(f"{{{p}}}:stats:calls") == {"zillow": "9", "rentcast": "3", "bedrock": "1"}


@pytest.mark.parametrize("new_length", [1, 5])
def test_a_ready_list_merge_keeps_fifo_whichever_list_is_longer(redis_client: redis.Redis, key_prefix: str,
                                                               new_length: int) -> None:
    # Given an old ready list of 3 and a new one of 1 (the old list is moved) or 5 (the new one is)
    r, p = redis_client, key_prefix
    r.lpush(f"{{{p}}}:queue:recent_sales", "old1", "old2", "old3")
    r.lpush(f"{{{p}:recent_sales}}:queue", *(f"new{i}" for i in range(1, new_length + 1)))
    # When upgraded
    upgrade_layout(r, p, TASK_TYPES)
    # Then taken from the right: the old ones first, oldest first, then the new ones, oldest first
    taken = list(reversed(r.lrange(f"{{{p}:recent_sales}}:queue", 0, -1)))
    assert taken == ["old1", "old2", "old3"] + [f"new{i}" for i in range(1, new_length + 1)]
    assert not r.exists(f"{{{p}}}:queue:recent_sales")


def test_keys_of_an_unknown_task_type_are_left_and_reported(redis_client: redis.Redis, key_prefix: str) -> None:
    # Given an old queue and dedup key of a type this application does not have
    r, p = redis_client, key_prefix
    r.lpush(f"{{{p}}}:queue:no_such_stage", "x", "y")
    r.set(f"{{{p}}}:dedup:no_such_stage:5", "x")
    # When upgraded
    report = upgrade_layout(r, p, TASK_TYPES)
    # Then nothing moved, and both are reported as left where they are
    assert report.nothing_to_do
    assert [(s.source, s.entries) for s in report.left] == [
        (f"{{{p}}}:queue:no_such_stage", 2), (f"{{{p}}}:dedup:no_such_stage:*", 1)]
    assert r.llen(f"{{{p}}}:queue:no_such_stage") == 2


# -- dry run, second run, interruption ---------------------------------------------------------


def test_a_dry_run_changes_nothing_and_counts_what_a_run_moves(redis_client: redis.Redis, raw_client: redis.Redis,
                                                               key_prefix: str) -> None:
    # Given an old layout
    r, p = redis_client, key_prefix
    write_old_layout(r, p)
    before = dump(raw_client, p)
    # When planned
    plan = upgrade_layout(r, p, TASK_TYPES, dry_run=True)
    # Then not a byte changed
    assert dump(raw_client, p) == before
    # And the plan counts per key what the run then moves
    counts = {(s.kind, s.source, s.target): s.entries for s in plan.steps}
    assert counts[("ready", f"{{{p}}}:queue:property_data", f"{{{p}:property_data}}:queue")] == 3
    assert counts[("in flight", f"{{{p}}}:inflight:property_data", f"{{{p}:property_data}}:queue")] == 2
    assert counts[("claiming", f"{{{p}}}:claiming:{CLAIMER}", f"{{{p}:<type>}}:queue")] == 5
    assert counts[("dead letters", f"{{{p}}}:failed_tasks", f"{{{p}:property_data}}:failed_tasks")] == 2
    assert counts[("drop", f"{{{p}}}:task_lock:*", "")] == 3
    done = upgrade_layout(r, p, TASK_TYPES)
    assert [(s.kind, s.source, s.target, s.entries) for s in done.steps] == [
        (s.kind, s.source, s.target, s.entries) for s in plan.steps]
    assert all(s.done == (s.keys if s.kind in ("drop", "dedup") else s.entries) for s in done.steps), done.steps


def test_a_second_run_finds_nothing_and_changes_nothing(redis_client: redis.Redis, raw_client: redis.Redis,
                                                        key_prefix: str) -> None:
    r, p = redis_client, key_prefix
    write_old_layout(r, p)
    upgrade_layout(r, p, TASK_TYPES)
    after = dump(raw_client, p)
    again = upgrade_layout(r, p, TASK_TYPES)
    assert again.nothing_to_do and again.moved == 0 and not again.left
    assert dump(raw_client, p) == after


class Interrupted(Exception):
    pass


def normalized(r: redis.Redis, prefix: str) -> dict[str, Any]:
    """Every key's content, with the prefix and the made-up parts of the upgrade's dead-letter entries blanked."""
    read = {"list": lambda k: r.lrange(k, 0, -1), "zset": lambda k: r.zrange(k, 0, -1, withscores=True),
            "hash": r.hgetall, "set": lambda k: sorted(r.smembers(k)), "string": r.get}
    out: dict[str, Any] = {}
    for key in our_keys(r, prefix):
        value: Any = read[str(r.type(key))](key)
        if key.endswith("}:failed_tasks"):
            value = [json.dumps(dict(json.loads(v), id="-", at=0)) if v.startswith('{"id": "') and '"at": ' in v
                     else v for v in value]
        out[key.replace(prefix, "P")] = value
    return out


@pytest.mark.parametrize("after", [1, 3, 4, 6, 9])
def test_an_interrupted_run_finishes_the_same_when_run_again(redis_client: redis.Redis, key_prefix: str,
                                                             monkeypatch: pytest.MonkeyPatch, after: int) -> None:
    # Given the same old layout under two prefixes, one upgraded in one go
    r = redis_client
    whole, cut = key_prefix + "a", key_prefix + "b"
    write_old_layout(r, whole)
    write_old_layout(r, cut)
    upgrade_layout(r, whole, TASK_TYPES)
    # When the other's run stops after some keys (a Ctrl-C, a lost connection) and is started again
    real = upgrade._Upgrade._do
    calls = {"n": 0}

    def stop_after(self: Any, step: upgrade.Step) -> upgrade.Step:
        calls["n"] += 1
        if calls["n"] > after:
            raise Interrupted
        return real(self, step)

    monkeypatch.setattr(upgrade._Upgrade, "_do", stop_after)
    with pytest.raises(Interrupted):
        upgrade_layout(r, cut, TASK_TYPES)
    monkeypatch.setattr(upgrade._Upgrade, "_do", real)
    upgrade_layout(r, cut, TASK_TYPES)
    # Then both end the same
    assert normalized(r, cut) == normalized(r, whole)


# -- refusals -------------------------------------------------------------------------------


def test_refuses_while_a_worker_is_alive_unless_forced(redis_client: redis.Redis, raw_client: redis.Redis,
                                                       key_prefix: str) -> None:
    # Given an old layout and a worker still beating (its liveness key lives)
    r, p = redis_client, key_prefix
    write_old_layout(r, p)
    r.set(f"{{{p}}}:worker:{LIVE}", "beat", px=60_000)
    before = dump(raw_client, p)
    # When upgraded without --force: refused, nothing changed
    with pytest.raises(WorkersAlive) as refused:
        upgrade_layout(r, p, TASK_TYPES)
    assert refused.value.worker_ids == (LIVE,) and "--force" in str(refused.value)
    assert dump(raw_client, p) == before
    # And a dry run shows the plan and the live worker
    assert upgrade_layout(r, p, TASK_TYPES, dry_run=True).live_workers == (LIVE,)
    # And with force it runs; the liveness key is the registry's, left alone
    assert upgrade_layout(r, p, TASK_TYPES, force=True).moved > 0
    assert r.exists(f"{{{p}}}:worker:{LIVE}") and old_layout_present(r, p, TASK_TYPES) == []


def test_nothing_to_do_is_not_refused_for_live_workers(redis_client: redis.Redis, key_prefix: str) -> None:
    # Given an upgraded Redis on which the new version's workers now run
    r, p = redis_client, key_prefix
    r.set(f"{{{p}}}:worker:w-new", "beat", px=60_000)
    # Then a run finds nothing to do and says so, rather than refusing
    assert upgrade_layout(r, p, TASK_TYPES).nothing_to_do


# -- with the engine ---------------------------------------------------------------------------


def test_a_task_queue_claims_and_acks_every_upgraded_task(redis_client: redis.Redis, redis_url: str,
                                                          key_prefix: str) -> None:
    # Given an old layout, upgraded
    r, p = redis_client, key_prefix
    old = write_old_layout(r, p)
    upgrade_layout(r, p, TASK_TYPES)
    queue = TaskQueue(r, EngineSettings(redis_url=redis_url, key_prefix=p), TASK_TYPES)
    # And the delayed tasks due now (their due times were kept; these are in the future)
    r.zadd(f"{{{p}:market_data}}:delayed", {x.to_json(): 0 for x in old.delayed["market_data"]}, xx=True)
    assert queue.promote_due() == 2
    # When a worker of the new version claims (one at a time, to see the order) and acks until nothing is left
    taken: list[Task] = []
    while True:
        claim = queue.claim("box-7:7:00c0ffee", list(TASK_TYPES), 1)
        assert not claim.rejected, claim.rejected
        if not claim.leases:
            break
        assert all(queue.ack_many(claim.leases))
        taken += [lease.task for lease in claim.leases]
    # Then it took every task exactly once, untouched: the claimed one first, then those in flight (oldest
    # first), then the ready ones in their order
    assert Counter(t.to_json() for t in taken) == Counter(t.to_json() for t in old.tasks())
    assert [t.campaign_id for t in taken if t.task_type == "property_data"] == [6, 4, 5, 1, 2, 3]
    assert queue.stats()["queues"]["property_data"] == {"key": f"{{{p}:property_data}}:queue", "ready": 0,
                                                        "in_flight": 0, "delayed": 0}
    # And each ack dropped its moved dedup key: the campaigns take new tasks again
    assert all(queue.enqueue(t.task_type, t.campaign_id) is not None for t in old.tasks())
    # And the dead letters are all listed: of a known type and of none
    assert len(queue.dlq_list()) == 3 + 3 + 3


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisClusterServer]:
    yield from serve_or_fail(lambda: RedisClusterServer(masters=3, replicas=0))


def test_refuses_a_cluster_client_before_touching_anything(redis_cluster: RedisClusterServer,
                                                           key_prefix: str) -> None:
    # Given a Redis Cluster client (the old layout never ran there; its keys would all sit in one slot)
    client = redis.RedisCluster.from_url(redis_cluster.url, decode_responses=True)
    try:
        client.rpush(f"{{{key_prefix}}}:queue:property_data", "x")
        # Then the start-up check still answers, and the upgrade refuses with the reason
        assert old_layout_present(client, key_prefix, TASK_TYPES) == [f"{{{key_prefix}}}:queue:property_data"]
        with pytest.raises(ClusterRefused, match="full sweep rebuilds every task from the database"):
            upgrade_layout(client, key_prefix, TASK_TYPES)
        assert client.lrange(f"{{{key_prefix}}}:queue:property_data", 0, -1) == ["x"]
    finally:
        client.close()


# -- the command ------------------------------------------------------------------------------


@pytest.fixture
def cli_env(redis_url: str, key_prefix: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "RATE_", "LOG_", "KEY_PREFIX"))}
    env.update(PYTHONPATH=str(ROOT), REDIS_URL=redis_url, KEY_PREFIX=key_prefix,
               DATABASE_URL=f"sqlite:///{tmp_path / 'campaigns.db'}", COLUMNS="220")
    return env


def campaignctl(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CAMPAIGNCTL, *argv], check=False, env=env, capture_output=True, text=True, timeout=60)


def test_the_command_plans_moves_and_then_finds_nothing(redis_client: redis.Redis, raw_client: redis.Redis,
                                                        key_prefix: str, cli_env: dict[str, str]) -> None:
    r, p = redis_client, key_prefix
    write_old_layout(r, p)
    before = dump(raw_client, p)
    # A dry run: a table of what moves, exit 0, nothing changed
    done = campaignctl(cli_env, "upgrade-redis", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert f"{{{p}}}:queue:property_data" in done.stdout and f"{{{p}:property_data}}:queue" in done.stdout
    assert "dry run: nothing changed" in done.stdout and "run without --dry-run" in done.stdout
    assert dump(raw_client, p) == before
    # The run, as JSON
    done = campaignctl(cli_env, "upgrade-redis", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["prefix"] == p and not doc["dry_run"] and doc["moved"] > 0 and doc["dropped_keys"] == 6
    assert {s["kind"] for s in doc["steps"]} == {"ready", "delayed", "in flight", "claiming", "dedup",
                                                 "dead letters", "drop", "control"}
    assert old_layout_present(r, p, TASK_TYPES) == []
    # A second run: nothing to do, and it says so
    done = campaignctl(cli_env, "upgrade-redis")
    assert done.returncode == 0 and "nothing to upgrade" in done.stdout, done


def test_the_command_refuses_live_workers_with_exit_1_until_forced(redis_client: redis.Redis, key_prefix: str,
                                                                   cli_env: dict[str, str]) -> None:
    r, p = redis_client, key_prefix
    write_old_layout(r, p)
    r.set(f"{{{p}}}:worker:{LIVE}", "beat", px=60_000)
    done = campaignctl(cli_env, "upgrade-redis")
    assert done.returncode == 1 and done.stdout == ""
    line, = done.stderr.strip().splitlines()
    assert line.startswith("campaignctl upgrade-redis: 1 live worker(s)") and "--force" in line
    assert old_layout_present(r, p, TASK_TYPES)
    done = campaignctl(cli_env, "upgrade-redis", "--force")
    assert done.returncode == 0 and "ran anyway (--force)" in done.stdout, done
    assert old_layout_present(r, p, TASK_TYPES) == []


def test_the_command_refuses_a_cluster_and_bad_arguments_with_exit_2(redis_client: redis.Redis,
                                                                     raw_client: redis.Redis, key_prefix: str,
                                                                     redis_cluster: RedisClusterServer,
                                                                     cli_env: dict[str, str]) -> None:
    r, p = redis_client, key_prefix
    write_old_layout(r, p)
    before = dump(raw_client, p)
    # A cluster: one line saying why there is nothing to do there
    done = campaignctl(dict(cli_env, REDIS_CLUSTER="true", REDIS_URL=redis_cluster.url), "upgrade-redis")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    line, = done.stderr.strip().splitlines()
    assert line.startswith("campaignctl upgrade-redis: REDIS_CLUSTER=true") and "full sweep" in line
    # REDIS_CLUSTER=true against the single node: the setting is wrong, as for every command
    done = campaignctl(dict(cli_env, REDIS_CLUSTER="true"), "upgrade-redis")
    assert done.returncode == 2 and "unset REDIS_CLUSTER" in done.stderr and len(done.stderr.splitlines()) == 1
    for argv in (["--nope"], ["--dry-run", "extra"], ["--force=yes"]):
        done = campaignctl(cli_env, "upgrade-redis", *argv)
        assert done.returncode == 2 and "Traceback" not in done.stderr, (argv, done)
    assert dump(raw_client, p) == before


def test_services_refuse_to_start_on_the_old_layout_until_it_is_upgraded(
        redis_client: redis.Redis, key_prefix: str, cli_env: dict[str, str]) -> None:
    # Given a Redis the old version ran on, and a migrated database
    write_old_layout(redis_client, key_prefix)
    assert campaignctl(cli_env, "migrate").returncode == 0
    # When a service of this version starts, it refuses in one line naming the command (it would never see that work)
    for argv in (["producer", "--once"], ["recovery", "--once"], ["worker", "--burst"]):
        done = campaignctl(cli_env, *argv)
        assert done.returncode == 1, (argv, done.stdout, done.stderr)
        lines = [line for line in done.stderr.splitlines() if "old single-tag key layout" in line]
        assert lines and "campaignctl upgrade-redis" in lines[0] and "Traceback" not in done.stderr, done.stderr
    # And once upgraded it starts
    assert campaignctl(cli_env, "upgrade-redis", "--force").returncode == 0
    done = campaignctl(cli_env, "producer", "--once")
    assert done.returncode == 0, done.stderr
