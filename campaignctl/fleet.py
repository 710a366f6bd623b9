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

from campaignctl import operations, wiring
from campaignctl.context import AppContext

#: Longest the fleet gauges and the dashboard's overview may lag behind Redis and the database, in s.
FLEET_REFRESH = 3.0


def read_snapshot(ctx: AppContext) -> dict[str, Any]:
    """Everything the fleet gauges and the dashboard's overview show, as plain data.

    The queue and limit figures come from campaignctl.operations, the very
    functions behind ``campaignctl queues`` and ``limits``.
    """
    stats = operations.queue_stats(ctx)
    workers = read_workers(ctx)
    counts = ctx.store.counts()
    return {
        "taken_at": time.time(),
        "queues": stats["queues"],
        "dead_letters": stats["dead_letters"],
        "workers": {"alive": sum(1 for w in workers if w["alive"]), "dead": sum(1 for w in workers if not w["alive"]),
                    "list": workers},
        "limits": operations.limits(ctx),
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
