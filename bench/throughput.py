"""No-op task throughput: our engine vs a bare reliable drain loop (and, with --peers, other queues).

    .venv/bin/python -m bench.throughput [--tasks 20000] [--concurrency 8] [--cap 30] [--peers celery,rq,...]

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

Also prints Redis memory per queued task (INFO used_memory delta over the
enqueue, and MEMORY USAGE of the ready list per task) and ends with
``headline: engine/bare ratio=<x>``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid

import redis

from bench import common
from bench.peers.throughput import Figures, measure_drain

#: Default backlog per contender.
DEFAULT_TASKS = 20_000
#: Longest drain timed per contender, in s.
DEFAULT_CAP = 30.0
#: Handler threads (and claim batch) per engine worker process.
DEFAULT_CONCURRENCY = 8
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
        rate, _ = measure_drain(left, n, cap, label="engine")
    finally:
        for p in procs:
            common.stop_process(p, grace=5)
    return Figures(f"campaign-engine ×2 (concurrency {concurrency})", n, enq, rate), memory


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
        rate, _ = measure_drain(left, n, cap, label="bare")
    finally:
        for p in procs:
            common.stop_process(p, grace=5)
    return Figures("bare BLMOVE + LREM ×2", n, enq, rate), memory


# --- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.throughput", description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=DEFAULT_TASKS, help=f"backlog per contender (default {DEFAULT_TASKS})")
    ap.add_argument("--cap", type=float, default=DEFAULT_CAP, help=f"longest timed drain, s (default {DEFAULT_CAP:g})")
    ap.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                    help=f"handler threads per engine worker (default {DEFAULT_CONCURRENCY})")
    ap.add_argument("--peers", default="", help="also run these peers (comma-separated names of "
                    "bench.peers.throughput.PEERS, or 'all')")
    ap.add_argument("--bare-worker", metavar="URL", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.bare_worker:
        return bare_worker(args.bare_worker)

    common.print_machine()
    rows, memory = [], {}
    with common.redis_server() as server:
        url = server.url
        r = redis.Redis.from_url(url)
        print(f"{args.tasks} no-op tasks per contender, 2 worker processes each, redis-server AOF off")
        bare, memory["bare"] = run_bare(url, args.tasks, args.cap)
        r.flushall()
        engine, memory["engine"] = run_engine(url, args.tasks, args.cap, concurrency=args.concurrency)
        rows += [engine, bare]
        if args.peers:
            from bench.peers.throughput import PEERS

            names = list(PEERS) if args.peers == "all" else [p.strip() for p in args.peers.split(",") if p.strip()]
            for name in names:
                r.flushall()
                rows.append(PEERS[name](url, args.tasks, args.cap))
    print()
    print(common.table(["contender", "tasks", "enqueue/s", "processed/s", "note"],
                       [[f.name, f.enqueued, f.enqueue_per_s, f.processed_per_s, f.note] for f in rows]))
    print()
    print(common.table(["memory", "engine", "bare"],
                       [[k, memory["engine"].get(k, float("nan")), memory["bare"].get(k, float("nan"))]
                        for k in memory["engine"]]))
    ratio = engine.processed_per_s / bare.processed_per_s
    print(f"\nengine {engine.processed_per_s:,.0f}/s vs bare {bare.processed_per_s:,.0f}/s")
    common.headline("engine/bare", ratio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
