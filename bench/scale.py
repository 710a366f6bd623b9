"""Scale benchmark: 100,000 campaigns in PostgreSQL and in the queues.

    .venv/bin/python -m bench.scale                      # 10k then 100k, ~5 min
    .venv/bin/python -m bench.scale --sizes 10000        # quick look

For each size, on a fresh PostgreSQL database and an emptied redis-server
(AOF on, as deployed), with the application's own code paths
(campaignctl.wiring producer and reconcile sources, engine Producer and
Recovery):

* seed:     insert the campaigns, all due now (set-up, timed for reference);
* producer: one ``Producer.run_once`` — start every due campaign (compare-and-
            set UPDATE + history rows, PRODUCER_BATCH per transaction) and
            enqueue its first task;
* memory:   Redis ``used_memory`` grown by the enqueue, per queued task, and
            what one task holds (ready-list entry + dedup key);
* recovery: one ``Recovery.run_once`` with STALL_THRESHOLD=0, so that every
            campaign is a reconcile candidate: page through all of them and
            re-enqueue (dedup makes it a no-op while the tasks are live) —
            the worst case of a normal pass;
* rebuild:  FLUSHALL, then the same pass puts every task back (Redis lost).

Per-item costs are printed for each size; flat per-item cost from 10k to 100k
means the work is linear. The last line is
``headline: producer µs per campaign, 100k vs 10k ratio=…`` (1.0 = flat).
"""

from __future__ import annotations

import argparse
import logging
import time
import types
from dataclasses import dataclass

from bench import common

#: Default sizes, campaigns.
DEFAULT_SIZES = "10000,100000"


@dataclass
class Run:
    size: int
    seed_s: float
    producer_s: float
    enqueued: int
    bytes_per_task: float
    list_bytes_per_task: float
    dedup_bytes: float
    recovery_s: float
    rebuild_s: float
    rebuilt: int


def run_size(pg, redis_url: str, size: int) -> Run:
    from campaignctl.wiring import producer_source, reconcile_source
    from engine.producer import Producer
    from engine.queue import TaskQueue
    from engine.recovery import Recovery
    from engine.settings import EngineSettings
    from workflow.db import make_engine
    from workflow.models import Base
    from workflow.seed import fake_campaigns, insert_campaigns
    from workflow.states import TASK_TYPES
    from workflow.store import CampaignStore

    url = pg.create_database(f"scale_{size}")
    db = make_engine(url)
    Base.metadata.create_all(db)
    store = CampaignStore(db)
    r = common.redis_client(redis_url)
    r.flushall()
    # Defaults everywhere except the stall threshold (0: every PROCESSING campaign is a reconcile candidate).
    settings = EngineSettings.from_env({"REDIS_URL": redis_url, "STALL_THRESHOLD": "0"})
    queue = TaskQueue(r, settings, TASK_TYPES)
    ctx = types.SimpleNamespace(store=store, settings=settings)

    t0 = time.perf_counter()
    insert_campaigns(db, fake_campaigns(size, seed=size))
    seed_s = time.perf_counter() - t0
    print(f"  {size:,}: seeded in {seed_s:.1f} s", flush=True)

    mem0 = int(r.info("memory")["used_memory"])
    t0 = time.perf_counter()
    enqueued = Producer(queue, settings, producer_source(ctx, "bench-producer")).run_once()
    producer_s = time.perf_counter() - t0
    mem1 = int(r.info("memory")["used_memory"])
    print(f"  {size:,}: producer enqueued {enqueued:,} in {producer_s:.1f} s", flush=True)

    qkeys = [k for k in r.scan_iter(match=f"{{{settings.key_prefix}}}:queue:*", count=1000)]
    list_bytes = sum(int(r.memory_usage(k, samples=0) or 0) for k in qkeys)
    dedup_key = next(r.scan_iter(match=f"{{{settings.key_prefix}}}:dedup:*", count=1000), None)
    dedup_bytes = float(r.memory_usage(dedup_key, samples=0) or 0) if dedup_key else float("nan")

    recovery = Recovery(r, settings, queue, None, reconcile=reconcile_source(ctx))
    t0 = time.perf_counter()
    report = recovery.run_once()
    recovery_s = time.perf_counter() - t0
    print(f"  {size:,}: recovery pass over all in {recovery_s:.1f} s (re-enqueued {report.reconciled})", flush=True)

    r.flushall()
    t0 = time.perf_counter()
    rebuilt = recovery.run_once().reconciled
    rebuild_s = time.perf_counter() - t0
    print(f"  {size:,}: after FLUSHALL, rebuilt {rebuilt:,} tasks in {rebuild_s:.1f} s", flush=True)
    db.dispose()
    return Run(size, seed_s, producer_s, enqueued, (mem1 - mem0) / max(1, enqueued),
               list_bytes / max(1, enqueued), dedup_bytes, recovery_s, rebuild_s, rebuilt)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=DEFAULT_SIZES, help="campaign counts, comma separated")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    # The reconcile warning ("N campaigns had no live task") is the expected outcome of the rebuild step.
    logging.getLogger("engine").setLevel(logging.ERROR)
    common.print_machine()
    runs: list[Run] = []
    with common.postgres_server() as pg, common.redis_server(appendonly=True) as redis_srv:
        for size in sizes:
            runs.append(run_size(pg, redis_srv.url, size))
    us = lambda s, n: s / max(1, n) * 1e6  # noqa: E731
    print()
    print(common.table(
        ["campaigns", "seed s", "producer s", "producer µs/campaign", "Redis bytes/queued task",
         "of which ready list", "dedup key bytes", "recovery pass s", "recovery µs/campaign",
         "rebuild after FLUSHALL s", "rebuild µs/campaign"],
        [[r.size, r.seed_s, r.producer_s, us(r.producer_s, r.size), r.bytes_per_task, r.list_bytes_per_task,
          r.dedup_bytes, r.recovery_s, us(r.recovery_s, r.size), r.rebuild_s, us(r.rebuild_s, r.size)]
         for r in runs],
    ))
    for r in runs:
        if r.enqueued != r.size or r.rebuilt != r.size:
            print(f"WARNING: {r.size:,} campaigns but {r.enqueued:,} enqueued and {r.rebuilt:,} rebuilt")
    if len(runs) >= 2:
        small, big = runs[0], runs[-1]
        growth = us(big.producer_s, big.size) / us(small.producer_s, small.size)
        print(f"per-campaign cost {big.size:,} vs {small.size:,}: producer ×{growth:.2f}, recovery pass "
              f"×{us(big.recovery_s, big.size) / us(small.recovery_s, small.size):.2f}, Redis bytes "
              f"×{big.bytes_per_task / small.bytes_per_task:.2f} (1.00 = flat)")
        common.headline(f"producer µs per campaign, {big.size // 1000}k vs {small.size // 1000}k", growth)
    else:
        common.headline(f"producer µs per campaign at {runs[0].size:,}", us(runs[0].producer_s, runs[0].size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
