"""Load under fire: 1,000 campaigns, 6 worker processes, one worker SIGKILLed every few seconds.

Everything must still finish and keep the chaos invariants; the run prints the
campaigns per minute it achieved against the bound the slowest provider sets
(a ratio, never asserted: timing depends on the machine).

The test is marked ``slow`` and runs only with CHAOS_LOAD=1 (tests/chaos/conftest.py
deselects it otherwise: ~3-4 minutes on 2 cores, too much for CI on top of the rest). Sizes come from the environment so a long run and
CI use the same code: LOAD_CAMPAIGNS (1000), LOAD_WORKERS (6), LOAD_TIME_SCALE
(120: Zillow's 10/min becomes 20/s), LOAD_KILL_EVERY (seconds between kills, 3).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import pytest

from tests.chaos import invariants
from tests.chaos.harness import Cluster, example_dir
from tests.chaos.schedule import Schedule
from tests.servers import PostgresServer

CAMPAIGNS = int(os.environ.get("LOAD_CAMPAIGNS", "1000"))
WORKERS = int(os.environ.get("LOAD_WORKERS", "6"))
#: Threads per worker process.
CONCURRENCY = int(os.environ.get("LOAD_CONCURRENCY", "4"))
TIME_SCALE = float(os.environ.get("LOAD_TIME_SCALE", "120"))
#: Seconds between two worker kills.
KILL_EVERY_S = float(os.environ.get("LOAD_KILL_EVERY", "3"))
#: How long the batch may take to come to rest, in s.
DEADLINE_S = float(os.environ.get("LOAD_DEADLINE", "900"))
#: Provider calls one campaign makes per bucket (CONTRACTS.md), for the throughput bound.
CALLS_PER_CAMPAIGN = {"zillow": 3, "rentcast": 2, "bedrock": 2, "email_verification": 1, "ses": 1}


def provider_bound_per_minute(rates: dict[str, float], time_scale: float) -> tuple[float, str]:
    """Campaigns per minute the slowest provider allows, and which provider that is."""
    per_min = {api: rates[api] * time_scale * 60 / calls for api, calls in CALLS_PER_CAMPAIGN.items()}
    slowest = min(per_min, key=per_min.__getitem__)
    return per_min[slowest], slowest


def _killer(cluster: Cluster, stop: threading.Event, kills: list[str]) -> None:
    rng = random.Random(int(os.environ.get("LOAD_SEED", "7")))
    while not stop.wait(KILL_EVERY_S):
        name = f"worker{rng.randrange(WORKERS)}"
        cluster.kill(name)
        kills.append(name)


@pytest.mark.slow
@pytest.mark.timeout(int(DEADLINE_S) + 600)
def test_load_with_worker_kills(chaos_pg: PostgresServer) -> None:
    tmp_path = example_dir()
    schedule = Schedule(campaigns=CAMPAIGNS, workers=WORKERS, concurrency=CONCURRENCY)
    # INFO logs of 7,000 tasks cost CPU the workers need; failures still show warnings and tracebacks.
    env = {"PRODUCER_BATCH": "200", "LOG_LEVEL": os.environ.get("LOAD_LOG_LEVEL", "WARNING")}
    with Cluster(pg=chaos_pg, workdir=tmp_path, schedule=schedule, time_scale=TIME_SCALE, extra_env=env) as cluster:
        cluster.start()
        started = time.monotonic()
        stop, kills = threading.Event(), []
        killer = threading.Thread(target=_killer, args=(cluster, stop, kills), daemon=True)
        killer.start()
        try:
            at_rest, state = cluster.wait_for_rest(DEADLINE_S)
        finally:
            stop.set()
            killer.join()
        elapsed = time.monotonic() - started
        # The last kill may have left work behind: wait for rest again without killing.
        if at_rest:
            at_rest, state = cluster.wait_for_rest(120)
        evidence = cluster.collect()
        # The sandbox's call log, for a post-mortem of the rate checks (kept with the logs when the test fails).
        (tmp_path / "sandbox_calls.json").write_text(json.dumps(evidence.sandbox_calls))
        report = invariants.check(evidence, at_rest=at_rest)
        timeline = cluster.describe_run()
        tails = cluster.log_tails() if not report.ok else ""

    done = sum(1 for c in evidence.campaigns if c["campaign_status"] in invariants.RESTING)
    rate = done / (elapsed / 60)
    bound, slowest = provider_bound_per_minute(evidence.rates, TIME_SCALE)
    print(
        f"\n[load] {done}/{CAMPAIGNS} campaigns at rest in {elapsed:.1f}s with {WORKERS} workers x{CONCURRENCY}, "
        f"{len(kills)} worker SIGKILLs (one every {KILL_EVERY_S:.0f}s), time scale {TIME_SCALE:g}"
    )
    print(f"[load] {rate:.1f} campaigns/min; provider bound {bound:.1f}/min ({slowest}); ratio {rate / bound:.3f}")
    print("[load] " + "\n[load] ".join(report.notes))
    assert report.ok, "\n".join(
        ["load run broke the guarantees", report.render(), f"final state: {state}", timeline[-4000:],
         f"process logs: {tmp_path / 'logs'}", tails]
    )
