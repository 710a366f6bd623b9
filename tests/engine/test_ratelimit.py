"""The shared token bucket under load from several processes, counted on the Redis clock."""

from __future__ import annotations

import bisect
import time
from pathlib import Path

import redis

from engine.ratelimit import Limit, RateLimiter
from engine.settings import EngineSettings
from tests.engine.conftest import proc_env, spawn

#: Scaled rate of the hammered bucket, in grants per second.
RATE = 50.0
#: How long the processes hammer, in s.
DURATION = 10.0
#: The pause set in the middle of the run, in s.
PAUSE = 1.0


def _over_grants(times: list[float], window: float, rate: float, burst: int) -> int:
    """Windows [t, t+window) starting at each grant that hold more than rate·window + burst grants."""
    bound = rate * window + burst
    over = 0
    for i, start in enumerate(times):
        count = bisect.bisect_left(times, start + window) - i
        if count > bound + 1e-9:
            over += 1
    return over


def test_four_processes_never_exceed_the_bucket_and_a_pause_stops_them_all(
        redis_client: redis.Redis, settings: EngineSettings, procs: list, tmp_path: Path) -> None:
    # Given four processes taking tokens from one bucket (50/s, burst 1) as fast as they are granted
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
    times = sorted(float(x) for x in redis_client.lrange(grants_key, 0, -1))
    # Then no window ever saw more than rate × window + burst grants (server-clock timestamps) ...
    span = times[-1] - times[0]
    report = {w: _over_grants(times, w, RATE, 1) for w in (0.05, 0.1, 0.5, 1.0, 2.0, 5.0, span)}
    print(f"\n{len(times)} grants over {span:.2f}s (ceiling {RATE * span + 1:.0f} without the pause, "
          f"{RATE * (span - PAUSE) + 2:.0f} with it); over-grants per window size: {report}")
    assert all(v == 0 for v in report.values()), report
    # ... and nobody got a token while the bucket was paused
    during = [t for t in times if paused_from <= t < reopen]
    assert during == []
    # (the pause really was in the middle of the hammering)
    assert len([t for t in times if t < paused_from]) >= RATE and [t for t in times if t >= reopen]


def test_acquire_answers_wait_times_and_scales(redis_client: redis.Redis, settings: EngineSettings) -> None:
    import attrs

    scaled = RateLimiter(redis_client, attrs.evolve(settings, rate_scale=10.0), {"api": Limit(rate=1.0, burst=2)})
    first, second, third = (scaled.acquire("api") for _ in range(3))
    assert first.granted and second.granted and not third.granted
    assert 0 < third.wait <= 0.1  # 1/s × 10 = one token per 100 ms
    assert scaled.status()["api"]["rate"] == 10.0
