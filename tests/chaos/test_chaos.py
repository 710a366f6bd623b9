"""The chaos suite: hypothesis picks fault schedules, the real system runs under them, invariants judge.

Each example starts a fresh Redis, database and sandbox, runs a small batch of
campaigns to rest under its schedule (tests/chaos/harness.py) and checks the
nine invariants (tests/chaos/invariants.py). A failure prints the schedule
hypothesis shrank it to, what happened when, the violations, the warnings in
the processes' logs, and the replay string:

    pytest tests/chaos --chaos-replay=<string>

Budget: CHAOS_EXAMPLES generated schedules (default 6) plus the four fixed
schedules below: EVERYTHING runs every fault kind in every CI build, ZOMBIES
the lease-fencing case, BLIPS Redis outages that lose no data (a pause longer
than the liveness TTL, a failover) under two recovery loops, ROLLOUT polling
and queue workers side by side with duplicate email_sending tasks.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, example, given, note, seed, settings
from hypothesis.control import currently_in_test_context

from tests.chaos import invariants
from tests.chaos.harness import Cluster, example_dir
from tests.chaos.schedule import Fault, Schedule, schedules
from tests.servers import PostgresServer

#: Generated schedules per run (CI default; raise with CHAOS_EXAMPLES).
EXAMPLES = int(os.environ.get("CHAOS_EXAMPLES", "6"))
#: Providers' time scale: 30 turns 10/min into 5/s (every provider runs at 10/min in chaos runs), 200 ms
#: between grants: well above the scheduling jitter of a busy 2-core CI machine.
TIME_SCALE = float(os.environ.get("CHAOS_TIME_SCALE", "30"))
#: How long a run may take to come to rest after its schedule ends, in s.
REST_TIMEOUT_S = float(os.environ.get("CHAOS_REST_TIMEOUT", "120"))
#: Campaigns per generated batch.
MAX_CAMPAIGNS = int(os.environ.get("CHAOS_CAMPAIGNS", "8"))
#: CHAOS_FIXED=0 leaves out the fixed EVERYTHING schedule (to watch hypothesis find and shrink a failure alone).
FIXED = os.environ.get("CHAOS_FIXED", "1") != "0"
#: CHAOS_VERBOSE=1 prints every example's timeline, not only failing ones.
VERBOSE = os.environ.get("CHAOS_VERBOSE", "") not in ("", "0")
#: Set CHAOS_SHRINK=0 to report the first failing schedule without shrinking it.
SHRINK = os.environ.get("CHAOS_SHRINK", "1") != "0"

#: Every fault kind at least once, in CI on every build (then hypothesis adds random schedules).
EVERYTHING = Schedule(
    campaigns=8,
    unknown_addresses=1,
    bad_emails=1,
    workers=3,
    concurrency=3,
    clock_skew=3600.0,
    ses_crash_worker=True,
    recoveries=2,
    polling_workers=1,
    faults=(
        Fault(0.5, "provider_faults", duration=3.0, spec="bedrock:429=0.6;zillow:5xx=0.3,malformed=0.2"),
        Fault(1.0, "kill_worker", target=1),
        Fault(1.5, "stop_worker", target=2, duration=5.0),
        Fault(2.0, "unsubscribe", target=3),
        Fault(2.2, "stop_producer", duration=4.0),
        Fault(2.5, "kill_producer"),
        Fault(3.0, "redis_crash"),
        Fault(3.5, "stop_recovery", duration=1.0),
        Fault(4.0, "kill_recovery"),
        Fault(4.5, "pg_restart", duration=2.0),
        Fault(5.0, "provider_faults", duration=2.0, spec="*:timeout=0.3,5xx=0.3"),
        Fault(6.0, "redis_wipe"),
        Fault(7.0, "redis_restart", duration=1.0),
        Fault(8.0, "unsubscribe", target=7),
        Fault(7.5, "redis_failover", duration=0.0),
        Fault(8.0, "duplicate_send"),
        Fault(8.5, "redis_flushall"),
        Fault(9.0, "kill_worker", target=0),
        Fault(9.5, "redis_stop", duration=3.0),
    ),
)

#: Zombies and nothing else that touches Redis afterwards: two workers frozen (SIGSTOP) past the liveness TTL
#: while they hold tasks, so recovery hands their tasks to the third; one wakes up (SIGCONT) while the new
#: holder is still running them (Zillow answers a second late), the other long after they were done. Every
#: ack, retry and renewal the zombies then send must be refused (SPEC §4, fencing); invariant 5 sees a
#: lease entry or a held-task record they leave behind when one is not. EVERYTHING cannot show this: the
#: Redis wipes after its zombie wakes up erase the evidence.
ZOMBIES = Schedule(
    campaigns=8,
    workers=3,
    concurrency=3,
    faults=(
        Fault(0.5, "provider_faults", duration=6.0, spec="zillow:latency=1"),
        Fault(1.0, "stop_worker", target=1, duration=3.0),
        Fault(1.2, "stop_worker", target=2, duration=8.0),
    ),
)

#: Redis goes away without losing data, under two recovery loops and no provider fault: the pause (3 s) and the
#: failover's dead endpoint (3 s) both outlast the liveness TTL (2 s) while every worker holds valid leases.
#: Recovery must wait one liveness TTL with Redis reachable before it judges anyone dead (SPEC §4a), so no
#: worker may lose a lease (invariant 9) and no task may be charged an attempt (invariant 8).
BLIPS = Schedule(
    campaigns=8,
    workers=3,
    concurrency=3,
    recoveries=2,
    faults=(
        Fault(1.5, "redis_stop", duration=3.0),
        Fault(6.5, "redis_failover", duration=3.0),
    ),
)

#: A rollout: one polling worker beside two queue workers on one database, two recovery loops, and two
#: duplicate email_sending tasks pushed while a send is in flight (SES answers a second late, so the first
#: sender is still inside its intent). A second sender must defer to a live intent's owner, never mark the
#: run SEND_OUTCOME_UNKNOWN (invariant 7) or send twice (invariant 2).
ROLLOUT = Schedule(
    campaigns=8,
    workers=2,
    concurrency=3,
    recoveries=2,
    polling_workers=1,
    faults=(
        Fault(0.0, "provider_faults", duration=10.0, spec="ses:latency=1"),
        Fault(0.5, "duplicate_send"),
        Fault(2.0, "duplicate_send"),
    ),
)

#: Tallies over the whole session, printed at the end of the test.
COVERAGE: Counter[str] = Counter()


def run_and_check(schedule: Schedule, pg: PostgresServer, workdir: Path | None = None) -> None:
    """One example: run the schedule to rest, check the invariants, raise with everything a reader needs."""
    workdir = workdir or example_dir()
    started = time.monotonic()
    with Cluster(pg=pg, workdir=workdir, schedule=schedule, time_scale=TIME_SCALE) as cluster:
        cluster.start()
        cluster.run_schedule()
        at_rest, state = cluster.wait_for_rest(REST_TIMEOUT_S)
        evidence = cluster.collect()
        report = invariants.check(evidence, at_rest=at_rest)
        timeline = cluster.describe_run()
        tails = cluster.log_tails() if not report.ok else ""
    took = time.monotonic() - started
    COVERAGE["examples"] += 1
    COVERAGE["campaigns"] += schedule.campaigns
    for f in schedule.faults:
        COVERAGE[f.kind] += 1
    for k in ("clock_skew", "crash_after_ses_call", "two_recoveries", "polling_workers"):
        if k in schedule.fault_kinds():
            COVERAGE[k] += 1
    summary = f"[chaos] {took:5.1f}s  {schedule.describe().splitlines()[0]}; {len(schedule.faults)} faults; " + (
        "ok" if report.ok else "FAILED"
    )
    print(summary)
    print("        " + "\n        ".join(report.notes))
    if VERBOSE:
        print(timeline)
    replay = schedule.replay_string()
    if currently_in_test_context():  # not when replaying outside hypothesis
        note(f"replay: pytest tests/chaos --chaos-replay={replay}")
    if report.ok and not VERBOSE:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        # The sandbox's call log, on the schedule's clock (seconds since the producer started), for a reader.
        calls = [dict(c, at=round(float(c["t"]) - evidence.t0, 4)) for c in evidence.sandbox_calls]
        (workdir / "sandbox_calls.json").write_text(json.dumps(calls))
    if not report.ok:
        raise report.exception_type(
            "\n".join(
                [
                    "chaos schedule broke the system's guarantees",
                    "schedule: " + schedule.describe(),
                    "what happened:",
                    timeline,
                    report.render(),
                    f"final quiet state: {state}",
                    f"process logs: {workdir / 'logs'}; the sandbox's call log: {workdir / 'sandbox_calls.json'}",
                    tails,
                    f"replay: pytest tests/chaos --chaos-replay={replay}",
                ]
            )
        )


#: pytest-timeout for the whole hypothesis run: every example may take up to ~3 min on a slow machine,
#: plus hypothesis' 5-minute shrinking cap (pyproject's 600 s default is for one ordinary test).
RUN_TIMEOUT_S = 600 + (EXAMPLES + 4) * 180


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_S)
def test_chaos(chaos_pg: PostgresServer, chaos_replay: Schedule | None) -> None:
    """Random fault schedules (plus the fixed ones) keep all nine invariants."""
    if chaos_replay is not None:
        print(f"[chaos] replaying: {chaos_replay.describe()}")
        run_and_check(chaos_replay, chaos_pg)
        return

    chosen_seed = int(os.environ.get("CHAOS_SEED", str(int.from_bytes(os.urandom(4), "big"))))
    print(f"[chaos] hypothesis seed {chosen_seed} (CHAOS_SEED={chosen_seed} reproduces the same draws), "
          f"{EXAMPLES} generated examples{' + 4 fixed' if FIXED else ''}, time scale {TIME_SCALE}")
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if SHRINK else [])

    @seed(chosen_seed)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=phases,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(schedule=schedules(max_campaigns=MAX_CAMPAIGNS))
    def chaos_example(schedule: Schedule) -> None:
        run_and_check(schedule, chaos_pg)

    if FIXED:
        for fixed in (ROLLOUT, BLIPS, ZOMBIES, EVERYTHING):
            chaos_example = example(schedule=fixed)(chaos_example)

    try:
        chaos_example()
    finally:
        print("[chaos] coverage: " + json.dumps(dict(sorted(COVERAGE.items()))))
