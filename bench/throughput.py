"""No-op task throughput: our engine vs a bare reliable drain loop and the peer queues.

    .venv/bin/python -m bench.throughput                 # everything, ~5 min
    .venv/bin/python -m bench.throughput --peers none --rounds 1
    .venv/bin/python -m bench.throughput [--tasks 20000] [--concurrency 8] [--cap 30] [--peers huey,dramatiq]

One contender per function, all on the same throwaway redis-server (flushed in
between), all timed the same way (bench.peers.throughput.measure_drain: from
5 % of the backlog gone to 95 %, polling the contender's own keys):

- ``run_engine``: TaskQueue.enqueue one by one (Lua, dedup), then 2 worker
  processes (engine.worker.Worker, production defaults for heartbeat and
  visibility) with a no-op handler: two-phase claim in batches of up to
  ``concurrency``, lease with fencing token, fenced ack.
- ``run_bare``: the floor a reliable Redis queue can reach: LPUSH, then 2
  processes looping BLMOVE (queue -> own in-flight list) + LREM (ack), with no
  lease, no dedup, no liveness, no fencing, no framework.
- the peers (bench/peers/throughput.py): Celery (prefork 2), RQ (2 forking
  workers, and 2 SimpleWorkers), Dramatiq (2 processes), Huey (2 process
  workers), arq (2 processes, at its defaults and tuned), each with its
  ordinary enqueue call and no result storage.

Rounds are interleaved (every contender once, then again) so a burst of other
load on the machine hits everyone; the median round is reported. Also prints
Redis memory per queued task (INFO used_memory delta over the enqueue, and
MEMORY USAGE of the ready list per task) and ends with
``headline: engine no-op tasks/s vs best peer <name> (engine/bare <x>) ratio=<y>``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
import uuid
from collections.abc import Callable

import redis

from bench import common
from bench.peers.throughput import Figures, measure_drain

#: Default backlog per contender.
DEFAULT_TASKS = 20_000
#: Longest drain timed per contender, in s.
DEFAULT_CAP = 30.0
#: Handler threads (and claim batch) per engine worker process.
DEFAULT_CONCURRENCY = 8
#: Rounds by default (interleaved; the median is reported).
DEFAULT_ROUNDS = 3
#: Key prefix of the engine's keys in the benchmark.
PREFIX = "bench"
#: Queue of the bare loop.
BARE_QUEUE = "bare:queue"


def _memory(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def _payload(i: int) -> str:
    """The same payload shape as the engine's, so memory figures compare."""
    return json.dumps({"task_id": uuid.uuid4().hex, "campaign_id": i + 1, "task_type": "noop", "retry_count": 0,
                       "enqueued_at": time.time()}, separators=(",", ":"))


# --- our engine -----------------------------------------------------------------------------


def run_engine(url: str, n: int, cap: float, *, concurrency: int = DEFAULT_CONCURRENCY) -> tuple[Figures, dict]:
    from engine.queue import TaskQueue
    from engine.settings import EngineSettings

    settings = EngineSettings.from_env({"REDIS_URL": url, "KEY_PREFIX": PREFIX})
    r = redis.Redis.from_url(url, decode_responses=True)
    queue = TaskQueue(r, settings, ("noop", "hold"))
    before = _memory(r)
    t0 = time.perf_counter()
    for i in range(n):
        queue.enqueue("noop", i + 1)  # one campaign per task: dedup lets each through
    enq = n / (time.perf_counter() - t0)
    memory = {
        "used_memory delta per task (B)": (_memory(r) - before) / n,
        "ready list MEMORY USAGE per task (B)": int(r.memory_usage(queue.keys.queue("noop"), samples=0) or 0) / n,
        "dedup key MEMORY USAGE (B)": int(r.memory_usage(queue.keys.dedup("noop", 1)) or 0),
    }
    cmd = common.python_module("bench.peers.engine_app", "worker", "--types", "noop",
                               "--concurrency", str(concurrency))
    env = {"REDIS_URL": url, "KEY_PREFIX": PREFIX}
    procs = [common.spawn(cmd, env=env), common.spawn(cmd, env=env)]

    def left() -> int:
        p = r.pipeline(transaction=False)
        p.llen(queue.keys.queue("noop"))
        p.hlen(queue.keys.inflight("noop"))
        a, b = p.execute()
        return int(a) + int(b)

    try:
        drain = measure_drain(left, n, cap, label="engine", procs=procs, client=r)
    finally:
        for p in procs:
            common.stop_process(p, grace=5)
    return Figures.of(f"campaign-engine ×2 (concurrency {concurrency})", n, enq, drain), memory


# --- the bare loop --------------------------------------------------------------------------


def bare_worker(url: str) -> int:
    """BLMOVE into this process's in-flight list, then LREM: a reliable queue with nothing else."""
    import os
    import signal

    r = redis.Redis.from_url(url, decode_responses=True)
    inflight = f"bare:inflight:{os.getpid()}"
    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    while running:
        payload = r.blmove(BARE_QUEUE, inflight, 0.5, "RIGHT", "LEFT")
        if payload is not None:
            r.lrem(inflight, 1, payload)
    return 0


def run_bare(url: str, n: int, cap: float) -> tuple[Figures, dict]:
    r = redis.Redis.from_url(url, decode_responses=True)
    before = _memory(r)
    t0 = time.perf_counter()
    for i in range(n):
        r.lpush(BARE_QUEUE, _payload(i))
    enq = n / (time.perf_counter() - t0)
    memory = {
        "used_memory delta per task (B)": (_memory(r) - before) / n,
        "ready list MEMORY USAGE per task (B)": int(r.memory_usage(BARE_QUEUE, samples=0) or 0) / n,
    }
    cmd = common.python_module("bench.throughput", "--bare-worker", url)
    procs = [common.spawn(cmd), common.spawn(cmd)]

    def left() -> int:
        p = r.pipeline(transaction=False)
        p.llen(BARE_QUEUE)
        for key in r.scan_iter(match="bare:inflight:*", count=100):
            p.llen(key)
        return sum(int(x) for x in p.execute())

    try:
        drain = measure_drain(left, n, cap, label="bare", procs=procs, client=r)
    finally:
        for p in procs:
            common.stop_process(p, grace=5)
    return Figures.of("bare BLMOVE + LREM ×2", n, enq, drain), memory


# --- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.throughput", description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=DEFAULT_TASKS, help=f"backlog per contender (default {DEFAULT_TASKS})")
    ap.add_argument("--cap", type=float, default=DEFAULT_CAP, help=f"longest timed drain, s (default {DEFAULT_CAP:g})")
    ap.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                    help=f"handler threads per engine worker (default {DEFAULT_CONCURRENCY})")
    ap.add_argument("--peers", default="all", help="peers to run: comma-separated names of "
                    "bench.peers.throughput.PEERS, 'all' (default) or 'none'")
    ap.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                    help=f"rounds, interleaved; the median is reported (default {DEFAULT_ROUNDS}). Contenders "
                    "whose first drain hit --cap (the slow peers) run once")
    ap.add_argument("--bare-worker", metavar="URL", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.bare_worker:
        return bare_worker(args.bare_worker)

    from bench.peers.throughput import PEERS

    if args.peers in ("", "none"):
        names: list[str] = []
    elif args.peers == "all":
        names = list(PEERS)
    else:
        names = [p.strip() for p in args.peers.split(",") if p.strip()]
        unknown = [n for n in names if n not in PEERS]
        if unknown:
            ap.error(f"unknown peer(s) {', '.join(unknown)}; known: {', '.join(PEERS)}")

    common.print_machine()
    memory: dict[str, dict] = {}
    results: dict[str, list[Figures]] = {}
    slow: set[str] = set()
    with common.redis_server() as server:
        url = server.url
        r = redis.Redis.from_url(url)
        print(f"{args.tasks} no-op tasks per contender, 2 worker processes each, redis-server AOF off, "
              f"{args.rounds} round(s)", flush=True)
        contenders: dict[str, Callable[[], Figures]] = {
            "bare": lambda: _keep(memory, "bare", run_bare(url, args.tasks, args.cap)),
            "engine": lambda: _keep(memory, "engine",
                                    run_engine(url, args.tasks, args.cap, concurrency=args.concurrency)),
        }
        for name in names:
            contenders[name] = functools.partial(PEERS[name], url, args.tasks, args.cap)
        for round_no in range(1, args.rounds + 1):
            for name, run in contenders.items():
                if round_no > 1 and name in slow:
                    continue
                r.flushall()
                figures = run()
                if not figures.processed_per_s * args.cap > 0.85 * args.tasks:
                    slow.add(name)  # its drain was cut at --cap: one more round would only cost time
                results.setdefault(name, []).append(figures)
                print(f"  round {round_no}: {figures.name}: enqueue {figures.enqueue_per_s:,.0f}/s, "
                      f"processed {figures.processed_per_s:,.0f}/s", flush=True)
    final = {name: _median(runs) for name, runs in results.items()}
    engine, bare = final["engine"], final["bare"]
    print()
    print(common.table(
        ["contender", "rounds", "enqueue/s", "processed/s (median)", "processed/s (all rounds)", "engine ÷ this",
         "worker CPU µs/task", "redis CPU µs/task", "note"],
        [[f.name, len(results[n]), f.enqueue_per_s, f.processed_per_s,
          " / ".join(f"{x.processed_per_s:,.0f}" for x in results[n]),
          engine.processed_per_s / f.processed_per_s if f.processed_per_s == f.processed_per_s and f.processed_per_s
          else float("nan"), f.worker_cpu_us, f.redis_cpu_us, f.note]
         for n, f in final.items()],
    ))
    print("(CPU per task is summed over both worker processes and their children; on this machine "
          f"{os.cpu_count()} cores are shared by the workers, redis-server and the poller)")
    print()
    print(common.table(["memory", "engine", "bare"],
                       [[k, memory["engine"].get(k, float("nan")), memory["bare"].get(k, float("nan"))]
                        for k in memory["engine"]]))
    to_bare = engine.processed_per_s / bare.processed_per_s
    peers = [f for n, f in final.items() if n not in ("engine", "bare") and f.processed_per_s == f.processed_per_s]
    print(f"\nengine {engine.processed_per_s:,.0f}/s = {to_bare:.2f} of the bare drain loop "
          f"({bare.processed_per_s:,.0f}/s; target >= 0.7)")
    if peers:
        best = max(peers, key=lambda f: f.processed_per_s)
        ratio = engine.processed_per_s / best.processed_per_s
        print(f"engine = {ratio:.2f}× the best peer, {best.name} ({best.processed_per_s:,.0f}/s; target >= 1.3)")
        common.headline(f"engine no-op tasks/s vs best peer {best.name} (engine/bare {to_bare:.2f})", ratio)
    else:
        common.headline("engine/bare", to_bare)
    return 0


def _keep(memory: dict[str, dict], name: str, result: tuple[Figures, dict]) -> Figures:
    figures, mem = result
    memory.setdefault(name, mem)
    return figures


def _median(runs: list[Figures]) -> Figures:
    """The run with the median processed/s (enqueue/s of that same run)."""
    ordered = sorted(runs, key=lambda f: (f.processed_per_s != f.processed_per_s, f.processed_per_s))
    return ordered[(len(ordered) - 1) // 2]


if __name__ == "__main__":
    sys.exit(main())
