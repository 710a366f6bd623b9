"""The shared token bucket: reservations stepped by hand, pauses, the task context's wait, and four processes.

Every figure is read on the Redis server's clock (``Grant.at`` and
``Grant.slot``), so the stepped tests hold on a loaded machine: the spacing of
slots is decided by the script, not by how fast the test runs.
"""

from __future__ import annotations

import bisect
import threading
import time
from pathlib import Path

import attrs
import pytest
import redis

from engine.context import TaskContext
from engine.errors import RateLimited
from engine.queue import TaskQueue
from engine.ratelimit import wait_for_token, Grant, Limit, RateLimiter
from engine.registry import Registry
from engine.retry import RetryPolicy
from engine.settings import EngineSettings
from engine.task import Task
from engine.worker import Worker
from tests.engine.conftest import TYPES, proc_env, spawn

#: Scaled rate of the hammered bucket, in grants per second.
RATE = 50.0
#: How long the processes hammer, in s.
DURATION = 10.0
#: The pause set in the middle of the run, in s.
PAUSE = 1.0
#: Slack when comparing server times: the script rounds each slot up to the µs, in s.
SLOT_TOLERANCE = 3e-6


def _over_grants(times: list[float], window: float, rate: float, burst: int) -> int:
    """Windows [t, t+window) starting at each grant that hold more than rate·window + burst grants."""
    bound = rate * window + burst
    over = 0
    for i, start in enumerate(times):
        count = bisect.bisect_left(times, start + window) - i
        if count > bound + 1e-9:
            over += 1
    return over


def _bucket_state(r: redis.Redis, limiter: RateLimiter, api: str) -> list[str | None]:
    return [r.get(key) for key in limiter._bucket(api)]


def _ctx(queue: TaskQueue, limiter: RateLimiter, max_token_sleep: float) -> TaskContext:
    task = Task.new("alpha", 1)
    return TaskContext(task, "test-worker", queue=queue, limiter=limiter, max_token_sleep=max_token_sleep)


# --- reservations, stepped by hand ------------------------------------------------------------



def _full(limiter: RateLimiter, api: str) -> RateLimiter:
    """The bucket as an idle one is: full, counted from now (a bucket Redis has never seen starts empty)."""
    sec, usec = limiter.redis.time()
    keys = limiter._bucket(api)
    limiter.redis.mset({keys[0]: str(limiter.limits[api].burst), keys[1]: str(int(sec) * 1_000_000 + int(usec))})
    return limiter

def test_each_caller_is_told_its_own_slot_one_interval_apart(redis_client: redis.Redis,
                                                             settings: EngineSettings) -> None:
    # Given an empty-handed bucket of 1 token per second, burst 1
    limiter = RateLimiter(redis_client, settings, {"api": Limit(rate=1.0, burst=1)})
    _full(limiter, "api")
    # When three callers ask, one after the other, each ready to wait up to 10 s
    a, b, c = (limiter.reserve("api", max_wait=10.0) for _ in range(3))
    # Then all three hold a token: the first now, the others at their own slot, 1/rate apart
    assert a.granted and b.granted and c.granted
    assert a.wait == 0 and a.slot == a.at
    assert b.slot - a.slot == pytest.approx(1.0, abs=SLOT_TOLERANCE)
    assert c.slot - b.slot == pytest.approx(1.0, abs=SLOT_TOLERANCE)
    # (each is told how long to sleep from its own call: once, not "one token's wait" and ask again)
    assert b.wait == pytest.approx(1.0 - (b.at - a.at), abs=SLOT_TOLERANCE)
    # And the bucket shows the two promised tokens honestly: tokens below zero
    status = limiter.status()["api"]
    assert status["reserved"] == 2
    assert -2.0 <= status["tokens"] < -1.0
    assert status["wait"] == pytest.approx(c.slot + 1.0 - status["at"], abs=0.01)


def test_a_slot_beyond_max_wait_reserves_nothing(redis_client: redis.Redis, settings: EngineSettings) -> None:
    # Given a bucket of 1/s with two tokens promised (now and in 1 s)
    limiter = RateLimiter(redis_client, settings, {"api": Limit(rate=1.0, burst=1)})
    _full(limiter, "api")
    a, b = (limiter.reserve("api", max_wait=1.5) for _ in range(2))
    assert a.granted and b.granted
    before = _bucket_state(redis_client, limiter, "api")
    # When a third caller will wait at most 1.5 s, and its slot is 2 s after the first
    c = limiter.reserve("api", max_wait=1.5)
    legacy = limiter.acquire("api")  # the non-blocking form: a free token now, or nothing
    # Then neither reserved anything, each learns the wait it would have had, and the bucket is unchanged
    assert not c.granted and not legacy.granted
    assert c.slot - a.slot == pytest.approx(2.0, abs=SLOT_TOLERANCE)
    assert c.wait > 1.5
    assert _bucket_state(redis_client, limiter, "api") == before
    # And the slot it declined is still the next one
    d = limiter.reserve("api", max_wait=10.0)
    assert d.granted and d.slot - a.slot == pytest.approx(2.0, abs=SLOT_TOLERANCE)


def test_a_pause_empties_the_bucket_and_the_waiters_after_it_are_spread(redis_client: redis.Redis,
                                                                        settings: EngineSettings) -> None:
    # Given a full bucket of 10/s with a burst of 5
    limiter = _full(RateLimiter(redis_client, settings, {"api": Limit(rate=10.0, burst=5)}), "api")
    assert limiter.status()["api"]["tokens"] == 5
    # When a provider's 429 pauses it for 2 s, and three callers ask during the pause
    reopen = limiter.pause("api", 2.0)
    grants = [limiter.reserve("api", max_wait=5.0) for _ in range(3)]
    # Then the burst is gone: no one gets a token before the reopen, and the first after it waits 1/rate
    assert all(g.granted for g in grants)
    assert [round(g.slot - reopen, 5) for g in grants] == [0.1, 0.2, 0.3]
    # (the status says paused, with the tokens honestly at -3: three promised, none banked)
    status = limiter.status()["api"]
    assert status["paused_until"] == pytest.approx(reopen, abs=1e-6)
    assert status["tokens"] == pytest.approx(-3.0) and status["reserved"] == 3


def test_a_pause_no_caller_saw_still_empties_the_bucket(redis_client: redis.Redis, settings: EngineSettings) -> None:
    # Given a full bucket of 2/s with a burst of 5, paused for 0.1 s
    limiter = _full(RateLimiter(redis_client, settings, {"api": Limit(rate=2.0, burst=5)}), "api")
    reopen = limiter.pause("api", 0.1)
    # (the status shows it empty before any caller has applied the pause)
    status = limiter.status()["api"]
    assert status["tokens"] == 0 and status["wait"] == pytest.approx(reopen + 0.5 - status["at"], abs=1e-5)
    # When nobody asks until after the reopen, and then five callers want a token at once
    time.sleep(0.2)
    grants = [limiter.acquire("api") for _ in range(5)]
    # Then only what refilled since the reopen is granted, not the full burst the bucket held before
    refilled = (grants[-1].at - reopen) * 2.0
    assert sum(g.granted for g in grants) <= refilled < 5


def test_a_pause_queues_new_slots_behind_the_ones_already_promised(redis_client: redis.Redis,
                                                                    settings: EngineSettings) -> None:
    # Given a bucket of 1/s whose tokens are promised for the next 2 s
    limiter = RateLimiter(redis_client, settings, {"api": Limit(rate=1.0, burst=1)})
    a, _, c = (limiter.reserve("api", max_wait=10.0) for _ in range(3))
    # When a pause reopens the bucket before the last promised slot
    reopen = limiter.pause("api", 0.5)
    assert reopen < c.slot
    d = limiter.reserve("api", max_wait=10.0)
    # Then the next caller queues behind the promised slots (a slot at reopen + 1 s would sit beside one)
    assert d.slot - a.slot == pytest.approx(3.0, abs=SLOT_TOLERANCE)


def test_a_pause_is_applied_once(redis_client: redis.Redis, settings: EngineSettings) -> None:
    # Given a paused bucket of 10/s whose first caller after the pause reserved a slot
    limiter = RateLimiter(redis_client, settings, {"api": Limit(rate=10.0, burst=1)})
    reopen = limiter.pause("api", 2.0)
    first = limiter.reserve("api", max_wait=5.0)
    # When the same pause is seen again by later callers
    later = [limiter.reserve("api", max_wait=5.0) for _ in range(2)]
    # Then they queue behind the first (the pause did not empty the bucket a second time, forgetting it)
    assert first.slot - reopen == pytest.approx(0.1, abs=SLOT_TOLERANCE)
    assert [round(g.slot - first.slot, 5) for g in later] == [0.1, 0.2]


def test_acquire_answers_wait_times_and_scales(redis_client: redis.Redis, settings: EngineSettings) -> None:
    scaled = RateLimiter(redis_client, attrs.evolve(settings, rate_scale=10.0), {"api": Limit(rate=1.0, burst=2)})
    _full(scaled, "api")
    first, second, third = (scaled.acquire("api") for _ in range(3))
    assert first.granted and second.granted and not third.granted
    assert 0 < third.wait <= 0.1  # 1/s × 10 = one token per 100 ms
    assert scaled.status()["api"]["rate"] == 10.0
    assert isinstance(third, Grant) and third.slot == third.at + third.wait


# --- the task context's wait -----------------------------------------------------------------


def test_the_task_context_defers_a_slot_beyond_max_token_sleep(redis_client: redis.Redis, settings: EngineSettings,
                                                               queue: TaskQueue) -> None:
    # Given a bucket of 2/s with its next two tokens promised (now and in 0.5 s)
    limiter = RateLimiter(redis_client, settings, {"api": Limit(rate=2.0, burst=1)})
    _full(limiter, "api")
    first, _ = (limiter.reserve("api", max_wait=5.0) for _ in range(2))
    ctx = _ctx(queue, limiter, max_token_sleep=0.75)
    # When a handler asks for a token it would wait about 1 s for, and its worker sleeps at most 0.75 s
    with pytest.raises(RateLimited) as raised:
        ctx.acquire("api")
    # Then its task is deferred by that wait (nothing to pause), and nothing was slept or reserved
    assert raised.value.api is None and 0.75 < raised.value.retry_after <= 1.0
    assert ctx.waited < 0.5
    assert limiter.reserve("api", max_wait=5.0).slot - first.slot == pytest.approx(1.0, abs=SLOT_TOLERANCE)


def test_the_task_context_sleeps_once_and_reports_the_wait_while_it_lasts(
        redis_client: redis.Redis, settings: EngineSettings, queue: TaskQueue) -> None:
    # Given a bucket of 2/s whose free token was just taken
    limiter = RateLimiter(redis_client, settings, {"api": Limit(rate=2.0, burst=1)})
    _full(limiter, "api")
    assert limiter.reserve("api", max_wait=0).granted
    ctx = _ctx(queue, limiter, max_token_sleep=5.0)
    calls = []
    real_reserve = limiter.reserve
    limiter.reserve = lambda *a, **kw: calls.append(a) or real_reserve(*a, **kw)  # type: ignore[method-assign]
    # When a handler asks for the next token (its slot is about 0.5 s away)
    waiter = threading.Thread(target=ctx.acquire, args=("api",))
    t0 = time.monotonic()
    waiter.start()
    time.sleep(0.25)
    # Then while it sleeps, ctx.waited already counts the sleep (a worker excluding it from the time limit
    # must not give the task up mid-wait) ...
    midway = ctx.waited
    waiter.join(5)
    took = time.monotonic() - t0
    assert 0.15 <= midway <= took
    # ... and once it has the token, the whole wait is counted, after one limiter call
    assert len(calls) == 1
    assert 0.4 <= ctx.waited <= took


def test_a_lost_lease_cancels_the_wait(redis_client: redis.Redis, settings: EngineSettings, queue: TaskQueue) -> None:
    # Given a bucket of 0.5/s whose free token was just taken: the next slot is 2 s away
    limiter = RateLimiter(redis_client, settings, {"api": Limit(rate=0.5, burst=1)})
    _full(limiter, "api")
    first = limiter.reserve("api", max_wait=0)
    ctx = _ctx(queue, limiter, max_token_sleep=5.0)
    # When the worker finds the lease taken away 0.2 s into the handler's wait
    threading.Timer(0.2, ctx.lease_lost.set).start()
    t0 = time.monotonic()
    with pytest.raises(RateLimited) as raised:
        ctx.acquire("api")
    # Then the handler stops waiting at once (its result would not count anyway), without spending an attempt
    assert time.monotonic() - t0 < 1.5
    assert raised.value.api is None and raised.value.retry_after == 0
    assert 0.15 <= ctx.waited < 1.5
    # And its reservation is not handed back (that could put two callers on one slot): the next caller queues after it
    assert limiter.reserve("api", max_wait=10.0).slot - first.slot == pytest.approx(4.0, abs=SLOT_TOLERANCE)


def test_waiting_for_a_token_does_not_count_against_the_time_limit(redis_client: redis.Redis,
                                                                   settings: EngineSettings, queue: TaskQueue) -> None:
    # Given four tasks with a 0.3 s time limit behind a bucket of 4/s: the last waits 0.75 s for its token
    limiter = RateLimiter(redis_client, settings, {"api": Limit(rate=4.0)})
    starts: list[tuple[int, int]] = []

    def handle(task, ctx) -> None:  # type: ignore[no-untyped-def]
        starts.append((task.campaign_id, task.lease_losses))
        ctx.acquire("api")

    registry = Registry()
    registry.register("alpha", handle, RetryPolicy(time_limit=0.3))
    for cid in (1, 2, 3, 4):
        queue.enqueue("alpha", cid)
    # When one worker runs them all at once
    worker = Worker(redis_client, settings, registry, limiter, concurrency=4, burst=True, task_types=TYPES)
    assert worker.run(install_signals=False) == 0
    # Then each ran once: none was given up while it waited for its token
    assert sorted(starts) == [(1, 0), (2, 0), (3, 0), (4, 0)]


# --- four processes --------------------------------------------------------------------------


def test_four_processes_never_exceed_the_bucket_and_a_pause_stops_them_all(
        redis_client: redis.Redis, settings: EngineSettings, procs: list, tmp_path: Path) -> None:
    # Given four processes reserving tokens from one bucket (50/s, burst 1), each sleeping until its slot
    grants_key = f"{settings.key_prefix}:test:grants"
    env = proc_env(settings, RATE=str(RATE), DURATION=str(DURATION))
    for i in range(4):
        procs.append(spawn(["-m", "tests.engine.worker_proc", "bucket"], env, tmp_path / f"h{i}.log"))
    limiter = RateLimiter(redis_client, settings, {"hammer": Limit(rate=RATE, burst=1)})
    # When the bucket is paused once they are hammering (process start-up takes seconds on a loaded machine)
    deadline = time.monotonic() + DURATION
    while redis_client.llen(grants_key) < RATE:
        assert time.monotonic() < deadline, "the four processes took no tokens"
        time.sleep(0.05)
    time.sleep(0.5)
    reopen = limiter.pause("hammer", PAUSE)
    paused_from = reopen - PAUSE
    status = limiter.status()["hammer"]
    assert status["paused_until"] is not None and status["rate"] == RATE
    assert [p.wait(DURATION + 20) for p in procs] == [0, 0, 0, 0]
    grants = [tuple(float(x) for x in g.split(",")) for g in redis_client.lrange(grants_key, 0, -1)]
    times = sorted(slot for _, slot in grants)
    # Then no window ever saw more than rate × window + burst slots (server-clock times) ...
    span = times[-1] - times[0]
    report = {w: _over_grants(times, w, RATE, 1) for w in (0.05, 0.1, 0.5, 1.0, 2.0, 5.0, span)}
    promised = len([slot for slot in times if paused_from <= slot < reopen])
    print(f"\n{len(times)} grants over {span:.2f}s (ceiling {RATE * span + 1:.0f} without the pause, "
          f"{RATE * (span - PAUSE) + 2:.0f} with it, plus {promised} slots promised before it that fell inside it); "
          f"over-grants per window size: {report}")
    assert all(v == 0 for v in report.values()), report
    # ... nobody was given a slot during the pause once it was set (the slots promised before it stand,
    # at most one per process) ...
    assert [(at, slot) for at, slot in grants if at >= paused_from and slot < reopen] == []
    assert promised <= 4
    # ... and the pause really was in the middle of the hammering
    assert len([t for t in times if t < paused_from]) >= RATE and [t for t in times if t >= reopen]


def test_a_caller_that_comes_late_to_its_slot_gives_it_up(redis_client: redis.Redis, settings: EngineSettings) -> None:
    # Given a bucket of 2/s whose token the first caller took, so the second is told a slot 0.5 s away
    limiter = RateLimiter(redis_client, settings, {"api": Limit(rate=2.0 / settings.rate_scale, burst=1)})
    wait_for_token(limiter, "api", 5.0, threading.Event())
    # When the second caller's bookkeeping before the sleep is stuck past its slot (Redis slow to answer)
    with pytest.raises(RateLimited) as late:
        wait_for_token(limiter, "api", 5.0, threading.Event(), on_reserved=lambda: time.sleep(0.8))
    # Then it gives the slot up instead of calling the provider beside the next caller's slot, and its task
    # is deferred (retry_after 0), not retried
    assert late.value.retry_after == 0.0 and "late" in str(late.value)


def test_after_redis_lost_a_bucket_no_new_slot_lands_beside_one_promised_before(
        redis_client: redis.Redis, settings: EngineSettings) -> None:
    """Stepped by hand: callers sleep on promised slots; Redis loses the bucket (FLUSHALL, a failover);
    the next callers must not get slots among the old ones (the provider would see two calls in one
    interval: the chaos suite's Zillow 429 after a flush)."""
    limiter = RateLimiter(redis_client, settings, {"api": Limit(rate=5.0, burst=1)})
    limiter.prime()
    old = [limiter.reserve("api", max_wait=settings.max_token_sleep) for _ in range(4)]
    assert all(g.granted for g in old) and old[-1].slot - old[0].slot == pytest.approx(0.6, abs=0.01)
    # When the bucket's keys are lost while those callers sleep
    redis_client.delete(*limiter._bucket("api"))
    # Then the first caller after the loss is refused (its slot would be MAX_TOKEN_SLEEP away)...
    first = limiter.reserve("api", max_wait=settings.max_token_sleep)
    assert not first.granted and first.slot >= old[-1].slot
    # ...and every later slot lies after every slot promised before the loss, 1/rate apart
    time.sleep(0.25)
    later = [limiter.reserve("api", max_wait=2 * settings.max_token_sleep) for _ in range(2)]
    assert all(g.granted for g in later)
    assert min(g.slot for g in later) >= old[-1].slot + 0.2 - 1e-3
    assert later[1].slot - later[0].slot == pytest.approx(0.2, abs=1e-3)


def test_a_new_fleet_primes_its_buckets_to_open_at_once(redis_client: redis.Redis, settings: EngineSettings) -> None:
    limiter = RateLimiter(redis_client, settings, {"api": Limit(rate=5.0, burst=1), "other": Limit(rate=1.0)})
    # Given buckets with no keys, the first worker of a fleet primes them: they open now, empty
    assert limiter.prime() == ["api", "other"]
    grant = limiter.reserve("api", max_wait=settings.max_token_sleep)
    assert grant.granted and 0.15 < grant.slot - grant.at <= 0.2
    # A bucket that has keys is left alone (priming twice changes nothing)
    assert limiter.prime() == []
    assert limiter.reserve("api", max_wait=settings.max_token_sleep).slot == pytest.approx(grant.slot + 0.2, abs=1e-3)


def test_only_the_first_worker_of_a_fleet_primes(redis_client: redis.Redis, settings: EngineSettings,
                                                 queue: TaskQueue) -> None:
    registry = Registry()
    registry.register("alpha", lambda task, ctx: None)
    limiter = RateLimiter(redis_client, settings, {"api": Limit(rate=5.0)})
    # A worker registered already (a running fleet: Redis may have lost the bucket under sleeping callers)
    redis_client.hset(queue.keys.workers, "other", "{}")
    Worker(redis_client, settings, registry, limiter, concurrency=1, burst=True, task_types=TYPES).run(
        install_signals=False)
    assert not redis_client.exists(limiter._bucket("api")[0])
    # None registered (a fleet starting from nothing): the first worker primes
    redis_client.hdel(queue.keys.workers, "other")
    Worker(redis_client, settings, registry, limiter, concurrency=1, burst=True, task_types=TYPES).run(
        install_signals=False)
    assert redis_client.exists(limiter._bucket("api")[0])
