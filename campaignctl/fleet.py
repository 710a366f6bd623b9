"""One snapshot of the whole fleet, read from Redis and the database: the source of the fleet gauges and the overview.

Queues (ready, in flight, delayed, age of the oldest ready task), dead
letters, workers (alive or dead, what each holds), rate-limit buckets
(tokens, pause, 429s) and campaigns per status and stage. A few pipelined
Redis calls and two GROUP BY queries: cheap, but never to be repeated per
scrape per process — recovery's /metrics and the dashboard each read it at
most every FLEET_REFRESH seconds through engine.metrics.FleetCollector.
"""

from __future__ import annotations

import json
import time
from typing import Any

from campaignctl import wiring
from campaignctl.context import AppContext
from engine import throttles
from engine.task import Task

#: Longest the fleet gauges and the dashboard's overview may lag behind Redis and the database, in s.
FLEET_REFRESH = 3.0


def read_snapshot(ctx: AppContext) -> dict[str, Any]:
    """Everything the fleet gauges and the dashboard's overview show, as plain data."""
    queue = wiring.build_queue(ctx)
    stats = queue.stats()
    queues = stats["queues"]
    oldest = _oldest_ready_ages(ctx, queue, list(queues))
    for name, q in queues.items():
        q.pop("key", None)
        q["oldest_age"] = oldest.get(name)
    limiter = wiring.build_limiter(ctx)
    limits = limiter.status()
    for api, count in throttles.counts(ctx.redis, limiter.keys, limits).items():
        limits[api]["throttled"] = count
    workers = read_workers(ctx)
    counts = ctx.store.counts()
    return {
        "taken_at": time.time(),
        "queues": queues,
        "dead_letters": stats["dead_letters"],
        "workers": {"alive": sum(1 for w in workers if w["alive"]), "dead": sum(1 for w in workers if not w["alive"]),
                    "list": workers},
        "limits": limits,
        "campaigns": counts["campaigns"],
        "stages": counts["stages"],
    }


def read_workers(ctx: AppContext) -> list[dict[str, Any]]:
    """Registered workers with ``alive`` (liveness key present) and the tasks each holds."""
    keys = wiring.build_queue(ctx).keys
    raw = ctx.redis.hgetall(keys.workers)
    ids = sorted(raw)
    if not ids:
        return []
    pipe = ctx.redis.pipeline(transaction=False)
    for worker_id in ids:
        pipe.exists(keys.worker(worker_id))
    workers = []
    for worker_id, up in zip(ids, pipe.execute()):
        try:
            entry = json.loads(raw[worker_id])
        except ValueError:
            entry = {}
        entry.update(id=worker_id, alive=bool(up))
        entry.setdefault("current_tasks", [])
        workers.append(entry)
    return workers


def _oldest_ready_ages(ctx: AppContext, queue: Any, names: list[str]) -> dict[str, float | None]:
    """Seconds since the oldest ready task of each queue was enqueued (workers take from the right end)."""
    pipe = ctx.redis.pipeline(transaction=False)
    for name in names:
        pipe.lindex(queue.keys.queue(name), -1)
    now = time.time()
    ages: dict[str, float | None] = {}
    for name, raw in zip(names, pipe.execute()):
        if raw is None:
            ages[name] = None
            continue
        try:
            ages[name] = max(0.0, now - Task.from_json(raw).enqueued_at)
        except Exception:  # noqa: BLE001 - a malformed payload waits to be dead-lettered by a claim
            ages[name] = None
    return ages
