"""Rate limiter benchmark: reservations under contention, the cost of one call, and the peers.

    .venv/bin/python -m bench.ratelimit            # ~1.5 min
    .venv/bin/python -m bench.ratelimit --seconds 3 --skip-celery

1. Contention. ``--procs`` processes × ``--threads`` threads (4 × 16) share one
   bucket of ``--rate``/s (1,000), burst 1, for ``--seconds``. Each thread takes
   tokens the way a task does (engine.ratelimit: ``reserve`` with MAX_TOKEN_SLEEP,
   sleep once until the slot, use the token). Reported: grants ÷ limit (slots
   inside the run ÷ rate × seconds), limiter calls per grant, over-grants (a
   window of 0.1, 0.5 or 1 s holding more than rate × w + burst slots, on the
   Redis server's clock), the most grants in any 0.1 s, and how late the
   threads woke after their slot (client clock, same host). The same threads
   then take tokens the way the engine did before issue 13 (``acquire``: a free
   token now or "wait N", sleep N, ask again), for comparison.
2. Uncontended. One caller alone, in alternating rounds: raw EVALSHA of
   ``return 1`` (one round trip through the Lua engine, the floor of any
   Redis-side limiter), ours (``reserve`` on a bucket fast enough that every
   call is granted at once: the full cost of a token) and the ``limits``
   library's moving window (``hit``). Ours ÷ raw is the median of the
   per-round ratios, so load that comes and goes hits both sides alike.
3. Celery's ``rate_limit="10/s"`` (a demonstration; ``--skip-celery``): it is
   enforced per worker, so two workers run the task at about 20/s.

The last line is ``headline: limiter grants ÷ limit under contention ratio=…``.
"""

from __future__ import annotations

import argparse
import bisect
import json
import multiprocessing as mp
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench import common

#: Windows in which over-grants are counted, in s.
WINDOWS = (0.1, 0.5, 1.0)
#: Lead time given to child processes so they all start calling together, in s.
START_LEAD = 1.5
#: Longest wait a caller reserves for: the engine's default MAX_TOKEN_SLEEP, in s.
MAX_WAIT = 10.0
#: Bucket rate of the uncontended rounds: far above what one caller can ask, so every call is granted, per s.
UNCONTENDED_RATE = 1e9
#: Bucket rate of the uncontended row that polls as the engine did before: most calls are refused, per s.
REFUSING_RATE = 1000.0
#: Names of the uncontended rows the summary reads.
RAW, OURS = "raw EVALSHA `return 1`", "ours: reserve (granted at once)"
#: The `limits` window's allowance per second in the uncontended rounds: every hit granted (its list is
#: capped at this many entries, so not 1e9).
LIMITS_AMOUNT = 1_000_000
#: Calls per contender in one uncontended round.
ROUND_CALLS = 200
#: Advertised Celery rate limit of the demonstration task, per second.
CELERY_RATE = 10.0
#: Steady running time measured in the Celery demonstration, per worker count, in s.
CELERY_SECONDS = 8.0


@dataclass
class Contended:
    name: str
    procs: int
    threads: int
    calls_per_s: float
    grants_per_s: float
    rate: float
    calls_per_grant: float
    over_grants: int
    worst: str
    most_in_100ms: int
    late_p50_ms: float
    late_p99_ms: float
    #: From the start of the run to the first slot, in ms (the threads' start-up).
    first_slot_ms: float
    #: Longest time between two consecutive slots, in ms (1/rate while the bucket never runs dry).
    longest_gap_ms: float

    @property
    def grants_of_limit(self) -> float:
        return self.grants_per_s / self.rate


# --- 1. contention: one process of many threads ----------------------------------------------


def _take_tokens(mode: str, limiter, start_at: float, end: float) -> tuple[int, list[tuple[float, float]]]:  # type: ignore[no-untyped-def]
    """One thread: take tokens until ``end``; returns (limiter calls, [(slot, woke)] of the grants used).

    ``reserve``: as TaskContext.acquire does, one call per token and one sleep
    until its slot. ``poll``: as the engine did before, ask for a token now,
    sleep the answered wait, ask again. A token whose slot lies past ``end``
    is not used (its call still counts).
    """
    while time.time() < start_at:
        time.sleep(0.001)
    calls = 0
    used: list[tuple[float, float]] = []
    while time.time() < end:
        grant = limiter.reserve("bench", MAX_WAIT) if mode == "reserve" else limiter.acquire("bench")
        calls += 1
        if grant.granted and grant.slot >= end:
            break
        if grant.wait > 0:
            time.sleep(grant.wait)
        if grant.granted:
            used.append((grant.slot, time.time()))
    return calls, used


def _process(mode: str, url: str, prefix: str, rate: float, threads: int, start_at: float, seconds: float,
             out: mp.Queue) -> None:
    """One process of ``threads`` callers sharing a limiter (and its connection pool), as a worker's do."""
    import threading

    import redis

    from engine.ratelimit import Limit, RateLimiter
    from engine.settings import EngineSettings

    client = redis.Redis.from_url(url, decode_responses=True)
    limiter = RateLimiter(client, EngineSettings(redis_url=url, key_prefix=prefix), {"bench": Limit(rate=rate)})
    client.script_load(limiter.scripts.acquire_token.script)
    results: list[tuple[int, list[tuple[float, float]]]] = []
    end = start_at + seconds

    def run() -> None:
        results.append(_take_tokens(mode, limiter, start_at, end))

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    out.put(json.dumps({"calls": sum(c for c, _ in results), "used": [u for _, us in results for u in us]}))


def _prime(url: str, prefix: str, rates: dict[str, float]) -> None:
    """Open the new buckets now, as the first worker of a fleet does (else they open MAX_TOKEN_SLEEP later)."""
    import redis

    from engine.ratelimit import Limit, RateLimiter
    from engine.settings import EngineSettings

    client = redis.Redis.from_url(url, decode_responses=True)
    RateLimiter(client, EngineSettings(redis_url=url, key_prefix=prefix),
                {api: Limit(rate=r) for api, r in rates.items()}).prime()
    client.close()


def run_contended(mode: str, url: str, rate: float, procs: int, threads: int, seconds: float) -> Contended:
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    prefix = f"rl{mode}{procs}x{threads}x{int(time.time() * 1000) % 100000}"
    _prime(url, prefix, {"bench": rate})
    lead = START_LEAD + 0.3 * procs
    start_at = time.time() + lead
    workers = [ctx.Process(target=_process, args=(mode, url, prefix, rate, threads, start_at, seconds, out))
               for _ in range(procs)]
    for w in workers:
        w.start()
    results = [json.loads(out.get(timeout=lead + seconds + MAX_WAIT + 60)) for _ in workers]
    for w in workers:
        w.join(10)
    calls = sum(r["calls"] for r in results)
    used = sorted((slot, woke) for r in results for slot, woke in r["used"])
    slots = [slot for slot, _ in used if start_at <= slot < start_at + seconds]
    late = sorted(max(0.0, woke - slot) * 1000 for slot, woke in used)
    over, worst = over_grants(slots, [(w, rate * w + 1) for w in WINDOWS])
    name = "ours: reserve, sleep once" if mode == "reserve" else "ours as before: poll (acquire, sleep, ask again)"
    gaps = [(b - a) * 1000 for a, b in zip(slots, slots[1:])]
    return Contended(name, procs, threads, calls / seconds, len(slots) / seconds, rate,
                     calls / max(1, len(used)), over, worst, most_in(slots, 0.1),
                     _percentile(late, 0.5), _percentile(late, 0.99),
                     (slots[0] - start_at) * 1000 if slots else float("nan"), max(gaps, default=float("nan")))


def _percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def over_grants(times: list[float], checks: list[tuple[float, float]]) -> tuple[int, str]:
    """Largest excess of grants over the allowance in any window, and which window.

    ``times`` are the sorted server times of the grants; ``checks`` holds
    (window seconds, grants allowed in it). A window starting at each grant is tried.
    """
    worst_excess, worst = 0, "none"
    for w, allowed in checks:
        for i, start in enumerate(times):
            inside = bisect.bisect_left(times, start + w, lo=i) - i
            if inside > allowed and int(inside - allowed) > worst_excess:
                worst_excess, worst = int(inside - allowed), f"{inside} in {w:g} s (allowed {allowed:g})"
    return worst_excess, worst


def most_in(times: list[float], w: float) -> int:
    """Most grants inside any window of ``w`` seconds (how bursty the limiter is)."""
    return max((bisect.bisect_left(times, start + w, lo=i) - i for i, start in enumerate(times)), default=0)


# --- 2. uncontended: one caller, alternating rounds ------------------------------------------


def _callers(url: str) -> dict[str, Callable[[], object]]:
    """A zero-argument call per contender, each warmed up (connection open, script loaded)."""
    import redis

    from engine.ratelimit import Limit, RateLimiter
    from engine.settings import EngineSettings

    client = redis.Redis.from_url(url, decode_responses=True)
    sha = client.script_load("return 1")
    limiter = RateLimiter(client, EngineSettings(redis_url=url, key_prefix="rlsolo"),
                          {"bench": Limit(rate=UNCONTENDED_RATE), "slow": Limit(rate=REFUSING_RATE)})
    limiter.prime()
    calls: dict[str, Callable[[], object]] = {
        RAW: lambda: client.evalsha(sha, 0),
        OURS: lambda: limiter.reserve("bench", MAX_WAIT),
        f"ours: acquire on a {REFUSING_RATE:g}/s bucket (mostly refused)": lambda: limiter.acquire("slow"),
    }
    try:
        from limits import RateLimitItemPerSecond
        from limits.storage import storage_from_string
        from limits.strategies import MovingWindowRateLimiter

        window = MovingWindowRateLimiter(storage_from_string(url))
        item = RateLimitItemPerSecond(LIMITS_AMOUNT, 1)
        calls["limits moving window (hit)"] = lambda: window.hit(item, "rlsolo")
    except ImportError as exc:
        print(f"  limits: not available ({exc})")
    for call in calls.values():
        call()
    return calls


def run_uncontended(url: str, seconds: float) -> dict[str, tuple[float, float]]:
    """Per contender: (calls/s over all rounds, median per-round ratio to raw EVALSHA)."""
    calls = _callers(url)
    spent: dict[str, list[float]] = {name: [] for name in calls}
    end = time.monotonic() + seconds * len(calls)
    while time.monotonic() < end:
        for name, call in calls.items():
            t0 = time.perf_counter()
            for _ in range(ROUND_CALLS):
                call()
            spent[name].append(time.perf_counter() - t0)
    raw = spent[RAW]
    return {name: (ROUND_CALLS * len(s) / sum(s), statistics.median(r / x for r, x in zip(raw, s)))
            for name, s in spent.items()}


# --- 3. Celery's per-worker rate limit -------------------------------------------------------


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


def _print_contended(rows: list[Contended], seconds: float) -> None:
    print(f"Contention: one bucket, burst 1, {seconds:g} s per line. Over-grants: windows of {WINDOWS} s holding "
          "more than rate × w + burst slots (server clock). Woke late: client clock − slot, same host.")
    print(common.table(
        ["contender", "processes × threads", "limiter calls/s", "grants/s", "limit/s", "grants ÷ limit",
         "calls per grant", "over-grants", "most grants in 0.1 s", "woke late p50 / p99 ms"],
        [[r.name, f"{r.procs} × {r.threads}", r.calls_per_s, r.grants_per_s, r.rate, f"{r.grants_of_limit:.4f}",
          f"{r.calls_per_grant:.3f}", r.over_grants, r.most_in_100ms, f"{r.late_p50_ms:.2f} / {r.late_p99_ms:.2f}"]
         for r in rows]))


def _print_uncontended(solo: dict[str, tuple[float, float]], seconds: float) -> None:
    print(f"Uncontended: one caller alone, alternating rounds of {ROUND_CALLS} calls, about {seconds:g} s each "
          "in all; ÷ raw is the median of the per-round ratios.")
    print(common.table(["contender", "calls/s", "÷ raw EVALSHA"],
                       [[name, cps, f"{ratio:.3f}"] for name, (cps, ratio) in solo.items()]))


def _print_celery(url: str) -> None:
    print(f"Celery rate_limit='{CELERY_RATE:g}/s' (Redis broker, prefork with 1 child per worker), "
          f"{CELERY_SECONDS:g} s of steady running:")
    demo = []
    for workers in (1, 2):
        total, per_worker = celery_demo(url, workers, CELERY_SECONDS)
        demo.append([workers, total, ", ".join(f"{x:.1f}" for x in per_worker)])
    print(common.table(["workers", "observed runs/s (all)", "runs/s per worker"], demo))
    print(f"two workers run it {demo[1][1] / demo[0][1]:.1f}× as often as one: the limit is per worker, "
          "so N workers allow N × the advertised rate")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="run time per contention line and per uncontended "
                                                               "contender")
    ap.add_argument("--rate", type=float, default=1000.0, help="limit of the contended bucket, grants per second")
    ap.add_argument("--procs", type=int, default=4, help="calling processes under contention")
    ap.add_argument("--threads", type=int, default=16, help="calling threads per process under contention")
    ap.add_argument("--skip-poll", action="store_true", help="leave out the polling comparison")
    ap.add_argument("--skip-celery", action="store_true", help="leave out the Celery rate_limit demonstration")
    args = ap.parse_args(argv)
    common.print_machine()
    with common.redis_server() as server:
        rows = []
        for mode in ("reserve",) if args.skip_poll else ("reserve", "poll"):
            row = run_contended(mode, server.url, args.rate, args.procs, args.threads, args.seconds)
            rows.append(row)
            print(f"  {row.name}: {row.grants_of_limit:.4f} of the limit, {row.calls_per_grant:.3f} calls per "
                  f"grant, over-grants {row.over_grants}; first slot {row.first_slot_ms:.1f} ms after the start, "
                  f"longest gap between slots {row.longest_gap_ms:.2f} ms", flush=True)
        solo = run_uncontended(server.url, args.seconds)
        print()
        _print_contended(rows, args.seconds)
        print()
        _print_uncontended(solo, args.seconds)
        if not args.skip_celery:
            print()
            _print_celery(server.url)
    ours = rows[0]
    print()
    print(f"targets: grants ÷ limit {ours.grants_of_limit:.4f} (≥ 0.99), calls per grant "
          f"{ours.calls_per_grant:.3f} (≤ 1.2), over-grants {ours.over_grants} (0), uncontended calls ÷ raw "
          f"EVALSHA {solo[OURS][1]:.3f} (≥ 0.9)")
    common.headline("limiter grants ÷ limit under contention", ours.grants_of_limit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
