"""Our engine with benchmark handlers, as a process the benchmarks start and kill.

    python -m bench.peers.engine_app worker --types hold --concurrency 4
    python -m bench.peers.engine_app worker --types noop,noop3,noop4   # more no-op types (bench.throughput --cluster)
    python -m bench.peers.engine_app recovery

Settings come from the environment exactly as in production
(EngineSettings.from_env: REDIS_URL, KEY_PREFIX, VISIBILITY_TIMEOUT, ...), so
a benchmark measures the defaults unless it says otherwise.
"""

from __future__ import annotations

import argparse
import logging
import os

from bench.peers import probe
from engine.connection import connect
from engine.identity import new_worker_id
from engine.queue import TaskQueue
from engine.recovery import Recovery
from engine.registry import Registry
from engine.retry import RetryPolicy
from engine.settings import EngineSettings
from engine.worker import Worker

#: The task types of the benchmarks.
TASK_TYPES = ("noop", "hold")


def noop_types(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Extra no-op task types among ``names``: any name starting with ``noop`` (each its own hash tag)."""
    return tuple(t for t in names if t.startswith("noop") and t not in TASK_TYPES)


def build_registry(url: str, extra_noop: tuple[str, ...] = ()) -> Registry:
    registry = Registry()
    registry.register("noop", lambda task, ctx: None, RetryPolicy())
    for name in extra_noop:
        registry.register(name, lambda task, ctx: None, RetryPolicy())
    registry.register("hold", lambda task, ctx: probe.hold(url, "engine", task.task_id), RetryPolicy())
    return registry


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.peers.engine_app")
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker")
    w.add_argument("--types", default="noop")
    w.add_argument("--concurrency", type=int, default=1)
    w.add_argument("--burst", action="store_true")
    sub.add_parser("recovery")
    args = ap.parse_args(argv)
    logging.basicConfig(level=os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    settings = EngineSettings.from_env()
    # Named connections, as campaignctl names them: recovery sees a SIGKILLed worker's at once.
    name = new_worker_id() if args.cmd == "worker" else f"recovery:{new_worker_id()}"
    client = connect(settings, client_name=name)
    extra = noop_types(args.types.split(",")) if args.cmd == "worker" else ()
    registry = build_registry(settings.redis_url, extra)
    if args.cmd == "worker":
        worker = Worker(client, settings, registry, None, queues=args.types.split(","),
                        concurrency=args.concurrency, burst=args.burst, task_types=TASK_TYPES + extra,
                        worker_id=name)
        return worker.run()
    queue = TaskQueue(client, settings, TASK_TYPES)
    return Recovery(client, settings, queue, registry).run()


if __name__ == "__main__":
    raise SystemExit(main())
