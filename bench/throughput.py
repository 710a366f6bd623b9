"""No-op task throughput: our engine vs a bare reliable drain loop and the peer queues.

    .venv/bin/python -m bench.throughput                 # everything, ~5 min
    .venv/bin/python -m bench.throughput --peers none --rounds 1
    .venv/bin/python -m bench.throughput [--tasks 20000] [--concurrency 8] [--cap 30] [--peers huey,dramatiq]
    .venv/bin/python -m bench.throughput --cluster       # the engine on one node and on a 3-master cluster

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

``--cluster``: the engine on a fresh redis-server and on a fresh Redis Cluster
(3 masters, ``--replicas`` replicas each, all on this machine, AOF off like
the single node), in the same run, rounds interleaved (bare loop on the node,
engine on the node, engine on the cluster). The backlog is spread evenly over
``--types`` no-op task types picked so that their hash tags ``{bench:<type>}``
land on different masters; producers use ``TaskQueue.enqueue_many`` in
batches of ``--batch`` (one enqueue.lua call per type in a batch); the two
worker processes consume every type (REDIS_CLUSTER=true on the cluster). The
bare loop runs on the node only (its BLMOVE between two un-tagged keys is not
a cluster command); the peers do not run. Prints tasks/s, CPU per task (the
cluster's masters and replicas apart), Redis memory per queued task (summed
over the masters) and ends with
``headline: engine no-op tasks/s on a 3-master cluster ÷ on one node ratio=<x>``.
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
#: With --cluster: no-op task types by default (one per master).
DEFAULT_CLUSTER_TYPES = 3
#: With --cluster: tasks per enqueue_many call by default (the producer's batch).
DEFAULT_BATCH = 500


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


# --- the engine on one node and on a cluster (--cluster) ------------------------------------


def spread_types(target: common.RedisTarget, count: int) -> list[str]:
    """``count`` no-op task types whose hash tags land on different masters of ``target`` (in turn).

    ``noop`` first, then ``noop1``, ``noop2``, ... as needed; on one node any
    names would do, and the same names are used there so both runs do the same work.
    """
    from engine.keys import Keys

    keys = Keys(PREFIX)
    if target.cluster:
        client = target.client()
        ports = [c.connection_pool.connection_kwargs["port"] for c in target.masters()]
        owner = lambda t: client.get_node_from_key(keys.queue(t)).port  # noqa: E731
    else:
        ports, owner = [0], (lambda t: 0)
    held = dict.fromkeys(ports, 0)
    chosen: list[str] = []
    for i in range(10_000):
        if len(chosen) == count:
            break
        name = "noop" if i == 0 else f"noop{i}"
        port = owner(name)
        if held[port] == min(held.values()):  # round-robin over the masters
            chosen.append(name)
            held[port] += 1
    return chosen


def run_engine_on(target: common.RedisTarget, n: int, cap: float, *, concurrency: int, types: list[str],
                  batch: int) -> tuple[Figures, dict, float]:
    """The engine contender on ``target``: enqueue_many in batches, then 2 workers over every type.

    Returns the figures, the memory per queued task and the replicas' CPU µs per task.
    """
    from engine.connection import connect
    from engine.queue import TaskQueue
    from engine.scripts import sources
    from engine.settings import EngineSettings

    env = {**target.env, "KEY_PREFIX": PREFIX}
    settings = EngineSettings.from_env(env)
    producer = connect(settings, check=False)
    queue = TaskQueue(producer, settings, types)
    r = target.client()
    for c in target.masters():  # every master caches the scripts once, before the memory is read
        for source in sources().values():
            c.script_load(source)
    target.settle()
    calls0 = target.script_calls()
    before, before_net = target.used_memory()
    items = [(types[i % len(types)], i + 1) for i in range(n)]
    t0 = time.perf_counter()
    for k in range(0, n, batch):
        queue.enqueue_many(items[k:k + batch])
    enq = n / (time.perf_counter() - t0)
    target.settle()
    after, after_net = target.used_memory()
    lists = sum(int(r.memory_usage(queue.keys.queue(t), samples=0) or 0) for t in types)
    memory = {
        "used_memory delta per task (B), summed over the masters": (after - before) / n,
        "the same less replication and AOF buffers (B)": (after_net - before_net) / n,
        "ready lists MEMORY USAGE per task (B)": lists / n,
        "dedup key MEMORY USAGE (B)": int(r.memory_usage(queue.keys.dedup(types[0], 1)) or 0),
    }
    producer.close()
    cmd = common.python_module("bench.peers.engine_app", "worker", "--types", ",".join(types),
                               "--concurrency", str(concurrency))
    procs = [common.spawn(cmd, env=env), common.spawn(cmd, env=env)]

    def left() -> int:
        p = r.pipeline(transaction=False)
        for t in types:
            p.llen(queue.keys.queue(t))
            p.hlen(queue.keys.inflight(t))
        return sum(int(x) for x in p.execute())

    samples: list[tuple[float, float]] = []

    def server_cpu() -> float:
        samples.append(target.cpu())
        return samples[-1][0]  # the masters (the one node); the replicas are reported apart

    try:
        drain = measure_drain(left, n, cap, label=f"engine on {target.label}", procs=procs, redis_cpu=server_cpu)
    finally:
        for p in procs:
            common.stop_process(p, grace=5)
    # Every script call of the run (enqueue, claims, leases, acks, heartbeats), the tail after the timed part too.
    memory["script calls (EVALSHA) per task, enqueue to shutdown"] = (target.script_calls() - calls0) / n
    replicas_us = ((samples[-1][1] - samples[0][1]) / drain.done * 1e6
                   if target.cluster and drain.done > 0 and len(samples) >= 2 else float("nan"))
    kinds = f"{len(types)} type{'s' if len(types) != 1 else ''}"
    name = f"campaign-engine ×2 (concurrency {concurrency}), {kinds}, on {target.label}"
    return Figures.of(name, n, enq, drain), memory, replicas_us


def main_cluster(args: argparse.Namespace) -> int:
    """The engine on one redis-server and on a 3-master cluster, rounds interleaved; the ratio of the two."""
    common.print_machine()
    results: dict[str, list[Figures]] = {"bare": [], "node": [], "cluster": []}
    replicas_us: list[float] = []
    memory: dict[str, dict] = {}
    with common.redis_server() as node_srv, common.redis_cluster(appendonly=False,
                                                                 replicas=args.replicas) as cluster_srv:
        node = common.RedisTarget.of_server(node_srv)
        cluster = common.RedisTarget.of_cluster(cluster_srv)
        types = spread_types(cluster, args.types)
        from engine.keys import Keys

        where = {t: cluster.client().get_node_from_key(Keys(PREFIX).queue(t)).port for t in types}
        print(f"{args.tasks} no-op tasks per contender over {len(types)} task type(s) "
              f"({', '.join(f'{t} on :{p}' for t, p in where.items())}), enqueue_many batches of {args.batch}, "
              f"2 worker processes × concurrency {args.concurrency}; one redis-server and a cluster of "
              f"{len(cluster.masters())} masters + {len(cluster.replicas())} replicas, AOF off, all on "
              f"{os.cpu_count()} cores; {args.rounds} round(s), interleaved", flush=True)
        runs = {
            "bare": lambda: run_bare(node.url, args.tasks, args.cap),
            "node": lambda: run_engine_on(node, args.tasks, args.cap, concurrency=args.concurrency, types=types,
                                          batch=args.batch),
            "cluster": lambda: run_engine_on(cluster, args.tasks, args.cap, concurrency=args.concurrency,
                                             types=types, batch=args.batch),
        }
        for round_no in range(1, args.rounds + 1):
            for key, run in runs.items():
                target = cluster if key == "cluster" else node
                target.flush()
                out = run()
                figures, mem = out[0], out[1]
                memory.setdefault(key, mem)
                if key == "cluster":
                    replicas_us.append(out[2])
                results[key].append(figures)
                print(f"  round {round_no}: {figures.name}: enqueue {figures.enqueue_per_s:,.0f}/s, "
                      f"processed {figures.processed_per_s:,.0f}/s", flush=True)
        node.close()
        cluster.close()
    final = {k: _median(v) for k, v in results.items()}
    at_node = final["node"].processed_per_s
    per_round = [c.processed_per_s / n.processed_per_s for n, c in zip(results["node"], results["cluster"])]
    median_replicas = sorted(replicas_us)[(len(replicas_us) - 1) // 2] if replicas_us else float("nan")
    print()
    print(common.table(
        ["contender", "server", "rounds", "enqueue/s", "processed/s (median)", "processed/s (all rounds)",
         "÷ engine on one node", "worker CPU µs/task", "redis CPU µs/task (masters)", "replicas CPU µs/task"],
        [[f.name.rsplit(", on ", 1)[0], cluster.label if k == "cluster" else node.label,
          len(results[k]), f.enqueue_per_s, f.processed_per_s,
          " / ".join(f"{x.processed_per_s:,.0f}" for x in results[k]), f.processed_per_s / at_node,
          f.worker_cpu_us, f.redis_cpu_us, median_replicas if k == "cluster" else float("nan")]
         for k, f in final.items()],
    ))
    print("(the bare loop runs on the node only; the enqueue of the bare loop is LPUSH one by one, the engine's "
          "enqueue_many; CPU per task is summed over both worker processes; every server process shares the "
          f"same {os.cpu_count()} cores)")
    print()
    print(common.table(["per queued task", "engine on one node", "engine on the cluster"],
                       [[k, memory["node"].get(k, float("nan")), memory["cluster"].get(k, float("nan"))]
                        for k in memory["node"]]))
    ratio = final["cluster"].processed_per_s / at_node
    print(f"\nengine on the cluster {final['cluster'].processed_per_s:,.0f}/s, on one node {at_node:,.0f}/s: "
          f"{ratio:.2f} (per round: {' / '.join(f'{x:.2f}' for x in per_round)}); enqueue "
          f"{final['cluster'].enqueue_per_s:,.0f}/s vs {final['node'].enqueue_per_s:,.0f}/s")
    cpu_node = final["node"].worker_cpu_us + final["node"].redis_cpu_us
    cpu_cluster = final["cluster"].worker_cpu_us + final["cluster"].redis_cpu_us + (
        median_replicas if median_replicas == median_replicas else 0.0)
    print(f"CPU per task, workers + every server process: {cpu_node:.0f} µs on one node, {cpu_cluster:.0f} µs on "
          f"the cluster: on {os.cpu_count()} shared cores the CPU-bound ceiling is {cpu_node / cpu_cluster:.2f} of "
          "the node's")
    common.headline("engine no-op tasks/s on a 3-master cluster ÷ on one node", ratio)
    return 0


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
    ap.add_argument("--cluster", action="store_true",
                    help="run the engine on one redis-server and on a 3-master Redis Cluster on this machine, rounds "
                    "interleaved, beside the bare loop on the node (no peers); ratio cluster ÷ node")
    ap.add_argument("--types", type=int, default=DEFAULT_CLUSTER_TYPES,
                    help=f"with --cluster: no-op task types, one per master in turn (default {DEFAULT_CLUSTER_TYPES})")
    ap.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                    help=f"with --cluster: tasks per TaskQueue.enqueue_many call (default {DEFAULT_BATCH})")
    ap.add_argument("--replicas", type=int, default=1,
                    help="with --cluster: replicas per master (default 1, as deployed)")
    ap.add_argument("--bare-worker", metavar="URL", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.bare_worker:
        return bare_worker(args.bare_worker)
    if args.cluster:
        if args.peers != "all":
            ap.error("--cluster runs the engine (and the bare loop on the node) only: leave out --peers")
        return main_cluster(args)

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
