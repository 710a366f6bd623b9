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
and queue workers side by side with duplicate email_sending tasks. A fifth,
CLUSTER_FAILOVER, runs on a Redis Cluster in a test of its own
(``test_cluster_failover``), which also checks the failover itself.

Generated schedules use one redis-server; CHAOS_REDIS=cluster draws them on
a Redis Cluster (with master kills instead of the single-server Redis
faults), CHAOS_REDIS=single,cluster draws both.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, Phase, example, given, note, seed, settings
from hypothesis.control import currently_in_test_context

from tests.chaos import invariants
from tests.chaos.harness import Cluster, Evidence, example_dir, scan_log
from tests.chaos.invariants import pid_of
from tests.chaos.schedule import Fault, Schedule, schedules
from tests.servers import PostgresServer, slot_in_spec

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
#: Redis shapes the generated schedules are drawn on: "single", "cluster" or both ("single,cluster").
REDIS_SHAPES = tuple(m.strip() for m in os.environ.get("CHAOS_REDIS", "single").split(",") if m.strip())
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

#: A Redis Cluster (3 masters + 3 replicas, node timeout 2 s) loses two masters mid-run, one after the other.
#: First the registry's: every heartbeat and liveness key lives there, so for the ~4 s until its replica is
#: promoted no worker can beat (longer than the liveness TTL) and recovery must not take that for deaths.
#: Then, while campaigns reach email creation and sending, the master of email_sending's slot (the same shard
#: holds recent_sales and email_creation). A worker is SIGKILLed while the registry is down (its tasks come
#: back). Each killed node starts again 6 s after its kill and rejoins as a replica. Workers, producer and
#: recovery must follow each failover (calls to the dead node fail; RedisCluster refreshes its slot map and
#: retries) without dying, every campaign must be SENT, and no recipient may get two emails.
CLUSTER_FAILOVER = Schedule(
    redis="cluster",
    campaigns=8,
    workers=3,
    concurrency=3,
    recoveries=2,
    faults=(
        Fault(2.0, "master_kill", spec="registry", duration=6.0),
        Fault(4.0, "kill_worker", target=1),
        Fault(9.0, "master_kill", spec="email_sending", duration=6.0),
    ),
)

#: Tallies over the whole session, printed at the end of the test.
COVERAGE: Counter[str] = Counter()


@attrs.frozen
class Run:
    """What one example left for a test to look at beyond the invariants (they held, or it raised)."""

    evidence: Evidence
    report: invariants.Report
    timeline: str
    took: float
    workdir: Path


def run_and_check(schedule: Schedule, pg: PostgresServer, workdir: Path | None = None, *, keep: bool = False) -> Run:
    """One example: run the schedule to rest, check the invariants, raise with everything a reader needs.

    The example's folder (logs, the sandbox's call log) is removed when the invariants hold, unless ``keep``
    (a caller that checks more removes it itself).
    """
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
    for k in ("clock_skew", "crash_after_ses_call", "two_recoveries", "polling_workers", "redis_cluster"):
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
    if report.ok and not VERBOSE and not keep:
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
    return Run(evidence=evidence, report=report, timeline=timeline, took=took, workdir=workdir)


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
    @given(schedule=schedules(max_campaigns=MAX_CAMPAIGNS, redis=REDIS_SHAPES))
    def chaos_example(schedule: Schedule) -> None:
        run_and_check(schedule, chaos_pg)

    if FIXED:
        for fixed in (ROLLOUT, BLIPS, ZOMBIES, EVERYTHING):
            chaos_example = example(schedule=fixed)(chaos_example)

    try:
        chaos_example()
    finally:
        print("[chaos] coverage: " + json.dumps(dict(sorted(COVERAGE.items()))))


#: A master kill's replica must be promoted within this long (node timeout 2 s; ~4 s seen on loopback), in s.
PROMOTION_BOUND_S = 20.0
#: A worker that reconnected logs this once its heartbeat works again (engine.loop's outage report).
RECONNECTED = re.compile(r"heartbeat: working again after")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cluster_failover(chaos_pg: PostgresServer) -> None:
    """CLUSTER_FAILOVER: masters die mid-run, the cluster promotes their replicas, the workers follow.

    Beyond the nine invariants (every campaign at rest, one email per
    recipient, nothing left leased, no live lease taken): each kill promoted a
    replica that was in sync, the cluster's own view at rest agrees (the new
    master serves the slot, the old node is its replica), no process died on
    its own, every worker running through a kill logged that it was working
    again afterwards, the same processes moved campaigns on after the
    promotion, and every campaign was SENT with exactly one email.
    """
    # Given a Redis Cluster and the whole system on it; When the schedule kills two masters mid-run
    run = run_and_check(CLUSTER_FAILOVER, chaos_pg, keep=True)
    print(run.timeline)
    check_failover(run.evidence, run.timeline)
    if not VERBOSE:
        shutil.rmtree(run.workdir, ignore_errors=True)  # kept (with its logs) when a check above failed


def check_failover(ev: Evidence, timeline: str) -> None:
    """test_cluster_failover's checks beyond the invariants (see there)."""
    # Then each kill promoted one of the master's synced replicas, within a few node timeouts
    assert [m["target"] for m in ev.master_kills] == ["registry", "email_sending"], timeline
    for m in ev.master_kills:
        assert m["new_master"] in m["replicas"], m
        took = m["promoted_at"] - m["killed_at"]
        assert 0 < took < PROMOTION_BOUND_S, m
        print(f"[cluster] {m['target']}: master {m['port']} killed at {m['at']:.1f}s, replica {m['new_master']} "
              f"promoted after {took:.1f}s, old node back as a replica after {m['rejoined_at'] - m['killed_at']:.1f}s; "
              + _during(ev, m))
        # And the cluster agrees at rest: the new master serves the slot, the old node replicates it
        nodes = {n.port: n for n in ev.cluster_nodes}
        new, old = nodes[m["new_master"]], nodes[m["port"]]
        serves = any(slot_in_spec(m["slot"], r) for r in new.slots)
        assert new.is_master and not new.failed and serves, ev.cluster_nodes
        assert not old.is_master and not old.failed and old.master_id == new.node_id, ev.cluster_nodes

    # And no process died on its own: the only exit is the worker the schedule SIGKILLed
    own = [e for e in ev.exits if e.get("ended_by") is None]
    assert not own, own
    # And every worker that ran through a kill logged that it was working again after it
    workers = [p for p in ev.procs if p["role"] == "worker"]
    for m in ev.master_kills:
        through = [p for p in workers
                   if p["started"] < m["killed_at"] and (p["ended"] is None or p["ended"] > m["promoted_at"] + 5)]
        assert through, (m, workers)
        for p in through:
            back = [e for e in scan_log(p, RECONNECTED) if e["at"] is not None and e["at"] > m["killed_at"]]
            assert back, (f"{p['name']} (pid {p['pid']}) logged no 'working again' after the kill of {m['port']} "
                          f"({m['target']}); its log: {p['log']}\n{timeline}")
        # And the processes that were running before the kill moved campaigns on after the promotion
        after = dt.datetime.fromtimestamp(m["promoted_at"], dt.UTC).replace(tzinfo=None)
        later = [e for e in ev.events if e["at"] > after and e.get("worker_id")]
        old_pids = {p["pid"] for p in through}
        if later:
            assert any(pid_of(e["worker_id"]) in old_pids for e in later), (m, later[:5])

    # And every campaign was sent, each recipient got exactly one email
    assert {c["campaign_status"] for c in ev.campaigns} == {"SENT"}, ev.campaigns
    delivered = {k.lower(): int(v) for k, v in (ev.sandbox_stats.get("emails") or {}).items()}
    assert sorted(delivered.values()) == [1] * len(ev.campaigns), delivered
    assert set(delivered) == {c["email"].lower() for c in ev.campaigns}


#: Worker log lines that tell how a worker lived through a failover (engine.worker, engine.loop).
FAILOVER_LINES = {
    "unavailable": re.compile(r": unavailable \("),
    "working again": re.compile(r": working again after"),
    "unsettled": re.compile(r"could not (?:acknowledge|settle)"),
    "lease lost": re.compile(r"lease lost"),
}


def _during(ev: Evidence, m: dict[str, object]) -> str:
    """What the workers logged and what SES was asked between a kill and 10 s after its promotion (for a reader)."""
    start, end = float(m["killed_at"]), float(m["promoted_at"]) + 10  # type: ignore[arg-type]
    counts = {name: 0 for name in FAILOVER_LINES}
    for p in ev.procs:
        if p["role"] != "worker":
            continue
        for name, pattern in FAILOVER_LINES.items():
            counts[name] += sum(1 for e in scan_log(p, pattern) if e["at"] is not None and start <= e["at"] <= end)
    at, promoted = float(m["at"]), float(m["at"]) + float(m["promoted_at"]) - start  # type: ignore[arg-type]
    ses = [float(c["t"]) - ev.t0 for c in ev.sandbox_calls if c["provider"] == "ses"]
    return (f"worker log lines: {counts}; SES calls before the kill {sum(1 for t in ses if t < at)}, while the "
            f"shard was down {sum(1 for t in ses if at <= t < promoted)}, after {sum(1 for t in ses if t >= promoted)}")
