"""Rate limiter benchmark: our limiter against raw EVALSHA and the `limits` library, plus over-grants.

    .venv/bin/python -m bench.ratelimit            # ~1.5 min
    .venv/bin/python -m bench.ratelimit --seconds 2 --skip-celery

For each contender, 1 and then 4 processes call acquire in a tight loop for
``--seconds`` against the same throwaway redis-server:

* ours: engine.ratelimit.RateLimiter.acquire on one bucket of ``--rate``/s,
  burst 1 (the engine's default);
* raw EVALSHA of ``return 1`` — one round trip through the Lua engine, the
  floor any Redis-side limiter pays;
* limits: the `limits` library's Redis moving window (``hit``) at the same rate.

The rate is far below what the callers can ask for, so most calls are
refusals and every grant is contended: calls/s is the cost of an acquisition
attempt, grants/s must sit at the rate. Every grant is logged with the
client's send and receive times; a grant definitely fell inside a window when
it was sent after the window opened and answered before it closed. Counting
only those gives a lower bound of the grants in each window, so any window
holding more than ``rate × window + burst`` of them is a proven over-grant.

Then the Celery demonstration: its ``rate_limit="10/s"`` is enforced per
worker, so two workers run the task at about 20/s.

The last line is ``headline: limiter calls/s vs raw EVALSHA (4 procs) ratio=…``.
"""

from __future__ import annotations

import argparse
import bisect
import json
import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench import common

#: Windows in which over-grants are counted, in s.
WINDOWS = (0.1, 0.5, 1.0)
#: Lead time given to child processes so they all start calling together, in s.
START_LEAD = 1.5
#: Advertised Celery rate limit of the demonstration task, per second.
CELERY_RATE = 10.0
#: Steady running time measured in the Celery demonstration, per worker count, in s.
CELERY_SECONDS = 8.0


@dataclass
class Row:
    name: str
    procs: int
    calls_per_s: float
    grants_per_s: float
    allowed_per_s: float
    over_grants: int
    worst: str
    most_in_100ms: float


# --- one calling process ---------------------------------------------------------------------


def _make_call(kind: str, url: str, rate: float, prefix: str) -> Callable[[], object]:
    """A zero-argument acquire for ``kind``: returns a Grant (ours) or whether it granted (others)."""
    import redis

    if kind == "ours":
        from engine.ratelimit import Limit, RateLimiter
        from engine.settings import EngineSettings

        settings = EngineSettings(redis_url=url, key_prefix=prefix)
        client = redis.Redis.from_url(url, decode_responses=True)
        limiter = RateLimiter(client, settings, {"bench": Limit(rate=rate, burst=1)})
        return lambda: limiter.acquire("bench")
    if kind == "evalsha":
        client = redis.Redis.from_url(url, decode_responses=True)
        sha = client.script_load("return 1")
        return lambda: client.evalsha(sha, 0)
    if kind == "limits":
        from limits import RateLimitItemPerSecond
        from limits.storage import storage_from_string
        from limits.strategies import MovingWindowRateLimiter

        storage = storage_from_string(url)
        limiter = MovingWindowRateLimiter(storage)
        item = RateLimitItemPerSecond(int(rate), 1)
        return lambda: limiter.hit(item, prefix)
    raise ValueError(kind)


def _caller(kind: str, url: str, rate: float, prefix: str, start_at: float, seconds: float, out: mp.Queue) -> None:
    """Call as fast as possible until the shared deadline; report calls and when each grant happened.

    Ours reports the server time of each decision (Grant.at), so its grants
    are placed exactly. The `limits` library does not say, so its grants are
    placed between the client's send and receive times.
    """
    call = _make_call(kind, url, rate, prefix)
    call()  # warm the connection (and load scripts) before the clock starts
    while time.time() < start_at:
        time.sleep(0.001)
    end = start_at + seconds
    calls = 0
    grants: list[tuple[float, float]] = []
    now = time.time()
    while now < end:
        sent = now
        result = call()
        now = time.time()
        calls += 1
        if kind == "ours":
            if result.granted:
                grants.append((result.at, result.at))
        elif kind == "limits" and result:
            grants.append((sent, now))
        elif kind == "evalsha":
            pass  # every call "grants"; nothing to audit
    out.put(json.dumps({"calls": calls, "grants": grants if kind != "evalsha" else calls}))


def run_contender(kind: str, url: str, rate: float, procs: int, seconds: float, burst: int) -> Row:
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    prefix = f"rl{kind}{procs}x{int(time.time() * 1000) % 100000}"
    lead = START_LEAD + 0.3 * procs
    start_at = time.time() + lead
    workers = [
        ctx.Process(target=_caller, args=(kind, url, rate, prefix, start_at, seconds, out)) for _ in range(procs)
    ]
    for w in workers:
        w.start()
    results = [json.loads(out.get(timeout=lead + seconds + 60)) for _ in workers]
    for w in workers:
        w.join(10)
    calls = sum(r["calls"] for r in results)
    if kind == "evalsha":
        return Row("raw EVALSHA `return 1`", procs, calls / seconds, calls / seconds, float("nan"), 0, "-", float("nan"))
    grants = sorted((s, e) for r in results for s, e in r["grants"])
    if kind == "ours":
        # Token bucket: at most rate × w + burst in any window of w seconds.
        checks = [(w, rate * w + burst) for w in WINDOWS]
        name = f"ours (token bucket, burst {burst})"
    else:
        # Moving window: at most `rate` hits in any window of one second.
        checks = [(1.0, rate)]
        name = "limits moving window (1 s)"
    over, worst = over_grants(grants, checks)
    return Row(name, procs, calls / seconds, len(grants) / seconds, rate, over, worst, most_in(grants, 0.1))


def over_grants(grants: list[tuple[float, float]], checks: list[tuple[float, float]]) -> tuple[int, str]:
    """Largest excess of proven grants over the allowance in any window, and which window.

    ``grants`` holds (earliest, latest) times of each grant sorted by the
    first; ``checks`` holds (window seconds, grants allowed in it). A window
    starting at each grant is tried; a grant counts in it only when both of
    its times fall inside, so the count is a lower bound and any excess is real.
    """
    starts = [s for s, _ in grants]
    worst_excess, worst = 0, "none"
    for w, allowed in checks:
        for i, (a, _) in enumerate(grants):
            hi = bisect.bisect_right(starts, a + w, lo=i)
            inside = sum(1 for _, e in grants[i:hi] if e <= a + w)
            if inside > allowed and int(inside - allowed) > worst_excess:
                worst_excess, worst = int(inside - allowed), f"{inside} in {w:g} s (allowed {allowed:g})"
    return worst_excess, worst


def most_in(grants: list[tuple[float, float]], w: float) -> int:
    """Most grants proven inside any window of ``w`` seconds (how bursty the limiter is)."""
    starts = [s for s, _ in grants]
    best = 0
    for i, (a, _) in enumerate(grants):
        hi = bisect.bisect_right(starts, a + w, lo=i)
        best = max(best, sum(1 for _, e in grants[i:hi] if e <= a + w))
    return best


# --- Celery's per-worker rate limit ----------------------------------------------------------


def celery_demo(url: str, workers: int, seconds: float) -> tuple[float, list[float]]:
    """``workers`` Celery workers (prefork, 1 child each), task rate_limit '10/s'.

    Returns (observed runs/s of all workers together, runs/s per worker), over
    ``seconds`` of steady running after the first run of each worker.
    """
    import os

    os.environ["BENCH_REDIS_URL"] = url
    from bench.peers import celery_app

    celery_app.app.conf.broker_url = url
    r = common.redis_client(url)
    r.flushdb()
    # More tasks than the workers could run at twice the advertised rate: the queue never runs dry.
    for _ in range(int(2 * CELERY_RATE * workers * (seconds + 5))):
        celery_app.limited.delay()
    procs = [
        common.spawn([
            common.venv_script("celery"), "-A", "bench.peers.celery_app", "worker", "--pool", "prefork",
            "--concurrency", "1", "-n", f"w{i}@%h", "--loglevel", "WARNING",
        ], env={"BENCH_REDIS_URL": url})
        for i in range(workers)
    ]
    try:
        common.wait_until(lambda: r.llen("bench:celery:limited") >= workers, timeout=60, what="first Celery runs")
        time.sleep(seconds + 1.0)
    finally:
        for p in procs:
            common.stop_process(p, grace=5)
    runs = [json.loads(x) for x in r.lrange("bench:celery:limited", 0, -1)]
    r.flushdb()
    by_pid: dict[int, list[float]] = {}
    for run in runs:
        by_pid.setdefault(run["pid"], []).append(run["t"])
    # The window opens one second after the last worker's first run, so every worker is up.
    t0 = max(min(ts) for ts in by_pid.values()) + 1.0
    t1 = t0 + seconds
    per_worker = [sum(1 for t in ts if t0 <= t < t1) / seconds for ts in by_pid.values()]
    return sum(per_worker), per_worker


# --- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="calling time per contender and process count")
    ap.add_argument("--rate", type=float, default=1000.0, help="limit under test, grants per second")
    ap.add_argument("--procs", default="1,4", help="process counts, comma separated")
    ap.add_argument("--skip-celery", action="store_true", help="leave out the Celery rate_limit demonstration")
    args = ap.parse_args(argv)
    procs_list = [int(x) for x in args.procs.split(",")]
    common.print_machine()
    burst = 1
    rows: list[Row] = []
    with common.redis_server() as server:
        for kind in ("evalsha", "ours", "limits"):
            for procs in procs_list:
                try:
                    row = run_contender(kind, server.url, args.rate, procs, args.seconds, burst)
                except ImportError as exc:
                    print(f"  {kind}: not available ({exc})")
                    continue
                rows.append(row)
                print(f"  {row.name} × {procs}: {row.calls_per_s:,.0f} calls/s, {row.grants_per_s:,.1f} grants/s, "
                      f"over-grants {row.over_grants}", flush=True)
        print()
        print(f"limit under test: {args.rate:g}/s, burst {burst}; {args.seconds:g} s per line. Over-grants: proven "
              f"grants above each limiter's own promise (ours: rate × w + burst for w in {WINDOWS} s; limits: "
              "rate in any 1 s)")
        print(common.table(
            ["contender", "processes", "acquire calls/s", "grants/s", "limit/s", "over-grants", "worst window",
             "most grants in 0.1 s"],
            [[r.name, r.procs, r.calls_per_s, r.grants_per_s, r.allowed_per_s, r.over_grants, r.worst,
              r.most_in_100ms] for r in rows],
        ))
        if not args.skip_celery:
            print()
            print(f"Celery rate_limit='{CELERY_RATE:g}/s' (Redis broker, prefork with 1 child per worker), "
                  f"{CELERY_SECONDS:g} s of steady running:")
            demo = []
            for workers in (1, 2):
                total, per_worker = celery_demo(server.url, workers, CELERY_SECONDS)
                demo.append([workers, total, ", ".join(f"{x:.1f}" for x in per_worker)])
            print(common.table(["workers", "observed runs/s (all)", "runs/s per worker"], demo))
            print(f"two workers run it {demo[1][1] / demo[0][1]:.1f}× as often as one: the limit is per worker, "
                  "so N workers allow N × the advertised rate")
    by = {(r.name.split()[0], r.procs): r for r in rows}
    top = max(procs_list)
    ours, raw = by.get(("ours", top)), by.get(("raw", top))
    ratio = ours.calls_per_s / raw.calls_per_s if ours and raw else float("nan")
    common.headline(f"limiter calls/s vs raw EVALSHA ({top} procs)", ratio)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
