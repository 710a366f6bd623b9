"""Pipeline efficiency: campaigns/minute against the bound the slowest provider sets.

    .venv/bin/python -m bench.pipeline                       # 300 campaigns, 4 workers, ×30: 180 s at best
    .venv/bin/python -m bench.pipeline --queues pipeline     # workers drain in pipeline order (0.51 before it was changed)
    .venv/bin/python -m bench.pipeline --campaigns 100 --time-scale 60
    .venv/bin/python -m bench.pipeline --cluster --campaigns 100  # one node, then a 3-master cluster

The whole system, as deployed, on one machine: a throwaway redis-server (AOF
on) and PostgreSQL, the provider sandbox (``campaignctl sandbox``) at time
scale S, and the real ``campaignctl`` producer, recovery and W worker
processes with RATE_SCALE=S (the same factor), auto-approve on. Every
campaign runs all stages and ends SENT.

The bound: each provider allows ``rate × S / calls per campaign`` campaigns per
second; the slowest (zillow: 10/min, 3 calls per campaign) sets the bound.
Achieved: campaigns SENT ÷ time from the first campaign's start to the last
one's send (both from campaign_events, the database's own history). When
the first send comes late, the stages ran one after the other rather than
side by side. The sandbox counts 429s per provider; the target is none.

Also printed, from the sandbox's call log: how busy the slowest provider was
kept (calls ÷ (scaled rate × its active span)) — below 1 means the limiter or
the workers left its tokens unused.

The last line is ``headline: pipeline campaigns/min vs slowest-provider bound ratio=…``.

``--cluster``: the same run on a fresh redis-server and then on a fresh Redis
Cluster (3 masters + 3 replicas, AOF on everywhere as on the node, all on
this machine; every child gets REDIS_CLUSTER=true), each with a fresh
database and sandbox; ``--rounds`` repeats the pair. Prints each run's
tables, then one row per run and ends with
``headline: pipeline efficiency on a 3-master cluster (<c>) ÷ on one node (<n>), <k> × 429 ratio=…``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from typing import Any

import requests

from bench import common

#: Campaigns by default.
DEFAULT_CAMPAIGNS = 300
#: Worker processes by default.
DEFAULT_WORKERS = 4
#: Time scale by default. At ×30 the sandbox's one-token tolerance is still 200 ms for zillow
#: and 33 ms for rentcast; at ×60 calls bunched by a busy 2-core machine drew 429s.
DEFAULT_TIME_SCALE = 30.0
#: Longest wait for the run, as a multiple of the bound's time (plus a minute).
TIMEOUT_FACTOR = 3.0


def campaignctl(*args: str) -> list[str]:
    return common.python_module("campaignctl", *args)


def sandbox_get(url: str, path: str) -> Any:
    response = requests.get(f"{url}{path}", timeout=10)
    response.raise_for_status()
    return response.json()


def wait_sandbox(url: str, proc, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the sandbox exited with {proc.returncode}; see its log")
        try:
            sandbox_get(url, "/_sandbox/stats")
            return
        except (requests.RequestException, ValueError):
            time.sleep(0.1)
    raise SystemExit(f"the sandbox did not answer on {url} within {timeout:.0f} s")


def event_times(db_url: str, trigger: str) -> list[float]:
    """Wall times (UTC epoch s) of every ``trigger`` event in the history, sorted."""
    from sqlalchemy import select

    from workflow.db import make_engine
    from workflow.models import CampaignEvent

    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(CampaignEvent.at).where(CampaignEvent.trigger == trigger)).scalars().all()
    finally:
        engine.dispose()
    return sorted(a.replace(tzinfo=dt.timezone.utc).timestamp() for a in rows)


def count_status(db_url: str) -> dict[str, int]:
    from workflow.db import make_engine
    from workflow.store import CampaignStore

    engine = make_engine(db_url)
    try:
        return dict(CampaignStore(engine).counts()["campaigns"])
    finally:
        engine.dispose()


def provider_busy(calls: list[dict], provider: str, rate: float) -> tuple[float, float]:
    """(calls ÷ (rate × active span), active span in s) of one provider, from the sandbox's call log."""
    ts = sorted(c["t"] for c in calls if c.get("provider") == provider)
    if len(ts) < 2:
        return float("nan"), 0.0
    span = ts[-1] - ts[0]
    # n calls spaced exactly 1/rate apart span (n - 1)/rate seconds.
    return (len(ts) - 1) / (rate * span) if span > 0 else float("nan"), span


def run_pipeline(args: argparse.Namespace, *, redis_url: str, db_url: str, logdir: Any, scale: float,
                 bound_seconds: float, extra_env: dict[str, str] | None = None, tag: str = "") -> dict[str, Any]:
    """One whole run on ``redis_url`` and ``db_url``: seed, sandbox, workers, recovery, producer, until every
    campaign rests (or the timeout); returns what the report needs. ``tag`` prefixes the log files."""
    from campaignctl.demo import child_env

    sandbox_url = f"http://127.0.0.1:{common_free_port()}"
    env = child_env(os.environ, redis_url=redis_url, database_url=db_url, sandbox_url=sandbox_url,
                    scale=scale, auto_approve=True)
    env["LOG_LEVEL"] = "WARNING"
    env.update(extra_env or {})
    for step in (["migrate"], ["seed", "--count", str(args.campaigns)]):
        proc = common.spawn(campaignctl(*step), env=env, log=logdir / f"{tag}{step[0]}.log")
        if proc.wait(180) != 0:
            raise SystemExit(f"campaignctl {step[0]} failed; see {logdir / (tag + step[0] + '.log')}")
    port = sandbox_url.rsplit(":", 1)[1]
    sandbox = common.spawn(campaignctl("sandbox", "--port", port, "--time-scale", f"{scale:g}"), env=env,
                           log=logdir / f"{tag}sandbox.log")
    wait_sandbox(sandbox_url, sandbox)
    # Workers and recovery first, so the producer's first batch meets warm workers.
    worker_args = ["worker", "--concurrency", str(args.concurrency)]
    if args.queues:
        from workflow.states import TASK_TYPES

        named = {"pipeline": ",".join(TASK_TYPES), "reverse": ",".join(reversed(TASK_TYPES))}
        order = named.get(args.queues, args.queues)
        worker_args += ["--queues", order]
        print(f"worker queue order: {order}")
    services = [common.spawn(campaignctl(*worker_args), env=env, log=logdir / f"{tag}worker-{i}.log")
                for i in range(1, args.workers + 1)]
    services.append(common.spawn(campaignctl("recovery"), env=env, log=logdir / f"{tag}recovery.log"))
    time.sleep(2.0)
    launched = time.time()
    services.append(common.spawn(campaignctl("producer"), env=env, log=logdir / f"{tag}producer.log"))
    timeout = TIMEOUT_FACTOR * bound_seconds + 60
    resting = {"SENT", "ERROR", "UNSUBSCRIBED", "SEND_OUTCOME_UNKNOWN"}
    last_print = 0.0
    counts: dict[str, int] = {}
    while time.time() - launched < timeout:
        counts = count_status(db_url)
        done = sum(n for s, n in counts.items() if s in resting)
        if time.time() - last_print > 10:
            last_print = time.time()
            print(f"  [{time.time() - launched:5.0f} s] {counts}", flush=True)
        if done >= args.campaigns:
            break
        dead = [p for p in services if p.poll() is not None]
        if dead:
            raise SystemExit(f"a service exited ({[p.args for p in dead]}); logs in {logdir}")
        time.sleep(0.5)
    stats = sandbox_get(sandbox_url, "/_sandbox/stats")
    calls = sandbox_get(sandbox_url, "/_sandbox/calls").get("calls", [])
    for p in services:
        common.stop_process(p, grace=10)
    common.stop_process(sandbox)
    return {"stats": stats, "calls": calls, "launched": launched, "starts": event_times(db_url, "start"),
            "sends": event_times(db_url, "mark_sent"), "counts": count_status(db_url)}


def report(run: dict[str, Any], rates: dict[str, float], scale: float, bound_per_s: float) -> dict[str, Any]:
    """Print the provider table, any 429s' context and the summary row of one run; returns the summary."""
    from campaignctl.demo import PROVIDER_PLANS

    stats, calls, starts, sends = run["stats"], run["calls"], run["starts"], run["sends"]
    sent = len(sends)
    whole = sent / (sends[-1] - starts[0])
    rows = []
    for plan in PROVIDER_PLANS:
        rate = rates[plan.name] * scale
        busy, span = provider_busy(calls, plan.name, rate)
        rows.append([plan.name, f"{rate:g}/s", plan.calls_per_campaign,
                     rate / plan.calls_per_campaign * 60 if plan.calls_per_campaign else float("nan"),
                     stats.get("calls", {}).get(plan.name, 0), stats.get("throttled", {}).get(plan.name, 0),
                     busy, span])
    print(common.table(["provider", "scaled rate", "calls/campaign", "bound campaigns/min", "calls", "429s",
                        "busy (calls ÷ rate × span)", "active span s"], rows))
    throttled = sum(stats.get("throttled", {}).values())
    for plan in PROVIDER_PLANS:
        for line in throttle_context(calls, plan.name, rates[plan.name] * scale):
            print(line)
    print()
    print(common.table(
        ["campaigns sent", "first start → last send s", "achieved campaigns/min", "bound campaigns/min",
         "ratio", "first send after s", "429s (all providers)", "producer launch → first start s"],
        [[sent, sends[-1] - starts[0], whole * 60, bound_per_s * 60, whole / bound_per_s, sends[0] - starts[0],
          throttled, starts[0] - run["launched"]]],
    ))
    return {"sent": sent, "span": sends[-1] - starts[0], "per_min": whole * 60, "ratio": whole / bound_per_s,
            "throttled": throttled, "first_send": sends[0] - starts[0]}


def main(argv: list[str] | None = None) -> int:
    from campaignctl.demo import bottleneck, plan_rates

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--campaigns", type=int, default=DEFAULT_CAMPAIGNS)
    ap.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="worker processes")
    ap.add_argument("--concurrency", type=int, default=4, help="handler threads per worker process")
    ap.add_argument("--time-scale", type=float, default=DEFAULT_TIME_SCALE,
                    help=f"provider and limiter time scale (default {DEFAULT_TIME_SCALE:g})")
    ap.add_argument("--queues", default=None,
                    help="the workers' --queues (drain order): 'pipeline' for property_data first, 'reverse' for "
                    "the last stage first, or a list; default: the worker's own default (last stage first)")
    ap.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    ap.add_argument("--cluster", action="store_true",
                    help="run the pipeline on one redis-server and on a 3-master Redis Cluster (3 replicas, AOF on, "
                    "all on this machine), one after the other; efficiency of each and the ratio cluster ÷ node")
    ap.add_argument("--rounds", type=int, default=1,
                    help="with --cluster: rounds, each one node then the cluster (default 1)")
    ap.add_argument("--keep-logs", action="store_true", help="leave the children's logs in the temp folder")
    args = ap.parse_args(argv)

    rates = plan_rates(os.environ)
    slowest, _ = bottleneck(rates, 1.0)
    scale = args.time_scale
    _, bound_per_s = bottleneck(rates, scale)
    bound_seconds = args.campaigns / bound_per_s
    common.print_machine()
    print(f"{args.campaigns} campaigns, {args.workers} workers × {args.concurrency} threads, time scale ×{scale:g}; "
          f"bound {bound_per_s * 60:.1f} campaigns/min ({slowest}), i.e. {bound_seconds:.0f} s at best", flush=True)

    import tempfile
    from pathlib import Path

    logdir = Path(tempfile.mkdtemp(prefix="ce-bench-pipeline-"))
    if not args.keep_logs:
        import shutil

        common.at_exit(lambda: shutil.rmtree(logdir, ignore_errors=True))
    if args.cluster:
        return main_cluster(args, rates=rates, scale=scale, bound_per_s=bound_per_s, bound_seconds=bound_seconds,
                            logdir=logdir)
    with common.redis_server(appendonly=True) as redis_srv, _database(args.db, logdir) as db:
        run = run_pipeline(args, redis_url=redis_srv.url, db_url=db.url("pipeline"), logdir=logdir, scale=scale,
                           bound_seconds=bound_seconds)
    counts = run["counts"]
    print()
    print(f"final: {counts}; logs in {logdir}" if args.keep_logs else f"final: {counts}")
    if len(run["sends"]) < 2:
        common.headline("pipeline campaigns/min vs slowest-provider bound (nothing sent)", 0.0)
        return 1
    summary = report(run, rates, scale, bound_per_s)
    common.headline("pipeline campaigns/min vs slowest-provider bound", summary["ratio"])
    return 0


def main_cluster(args: argparse.Namespace, *, rates: dict[str, float], scale: float, bound_per_s: float,
                 bound_seconds: float, logdir: Any) -> int:
    """The same run on one redis-server and on a 3-master cluster (fresh database and sandbox each time)."""
    summaries: list[tuple[str, int, dict[str, Any]]] = []
    with common.redis_server(appendonly=True) as node_srv, common.redis_cluster(appendonly=True) as cluster_srv, \
            _database(args.db, logdir) as db:
        node, cluster = common.RedisTarget.of_server(node_srv), common.RedisTarget.of_cluster(cluster_srv)
        print(f"one redis-server and a cluster of {len(cluster.masters())} masters + {len(cluster.replicas())} "
              f"replicas, AOF on everywhere, all on {os.cpu_count()} cores; {args.rounds} round(s), each one node "
              "then the cluster", flush=True)
        for round_no in range(1, args.rounds + 1):
            for key, target in (("node", node), ("cluster", cluster)):
                target.flush()
                print(f"round {round_no} on {target.label}:", flush=True)
                run = run_pipeline(args, redis_url=target.url, db_url=db.url(f"pipeline_{key}_{round_no}"),
                                   logdir=logdir, scale=scale, bound_seconds=bound_seconds, extra_env=target.env,
                                   tag=f"{key}-{round_no}-")
                print()
                print(f"final on {target.label} (round {round_no}): {run['counts']}")
                if len(run["sends"]) < 2:
                    raise SystemExit(f"nothing sent on {target.label}; logs in {logdir}")
                summaries.append((target.label, round_no, report(run, rates, scale, bound_per_s)))
                print(flush=True)
        labels = (node.label, cluster.label)
        node.close()
        cluster.close()
    if args.keep_logs:
        print(f"logs in {logdir}")
    print(common.table(
        ["server", "round", "campaigns sent", "first start → last send s", "achieved campaigns/min",
         "bound campaigns/min", "ratio to the bound", "429s (all providers)"],
        [[label, r, x["sent"], x["span"], x["per_min"], bound_per_s * 60, x["ratio"], x["throttled"]]
         for label, r, x in summaries],
    ))
    median = lambda xs: sorted(xs)[(len(xs) - 1) // 2]  # noqa: E731
    at = {label: median([x["ratio"] for lbl, _, x in summaries if lbl == label]) for label in labels}
    throttled = sum(x["throttled"] for _, _, x in summaries)
    ratio = at[labels[1]] / at[labels[0]]
    print(f"\nefficiency vs the bound: {at[labels[0]]:.3f} on {labels[0]}, {at[labels[1]]:.3f} on {labels[1]} "
          f"(median of {args.rounds} round(s)); {throttled} × 429 in all")
    common.headline(f"pipeline efficiency on a {labels[1]} ({at[labels[1]]:.2f}) ÷ on {labels[0]} "
                    f"({at[labels[0]]:.2f}), {throttled} × 429", ratio)
    return 0


def throttle_context(calls: list[dict], provider: str, rate: float, most: int = 3) -> list[str]:
    """For a few 429s of ``provider``: the gaps between the calls that reached the sandbox just before.

    The limiter spaces grants 1/rate apart on the Redis clock; the sandbox's
    bucket (capacity 2) tolerates one call's worth of early arrival. Gaps well
    under 1/rate right before a 429 mean the calls were bunched on their way
    from the grant to the provider (thread scheduling, the GIL, a busy CPU).
    """
    ts = sorted((c["t"], c.get("status")) for c in calls if c.get("provider") == provider)
    out = []
    for i, (t, status) in enumerate(ts):
        if status != 429 or len(out) >= most:
            continue
        before = [x for x, _ in ts[max(0, i - 4): i + 1]]
        gaps = ", ".join(f"{(b - a) * 1000:.0f}" for a, b in zip(before, before[1:]))
        out.append(f"  {provider} 429: gaps between the last calls before it {gaps} ms "
                   f"(limiter spacing {1000 / rate:.0f} ms)")
    return out


def common_free_port() -> int:
    from tests.servers import free_port

    return free_port()


class _database:
    """A throwaway PostgreSQL server (a fresh database per ``url(name)``), or SQLite files in the log folder."""

    def __init__(self, kind: str, folder) -> None:
        self.kind, self.folder, self._pg = kind, folder, None

    def __enter__(self) -> _database:
        if self.kind == "postgres":
            self._cm = common.postgres_server()
            self._pg = self._cm.__enter__()
        return self

    def url(self, name: str) -> str:
        if self._pg is None:
            return f"sqlite:///{self.folder / ('campaigns.db' if name == 'pipeline' else name + '.db')}"
        return self._pg.create_database(name)

    def __exit__(self, *exc: object) -> None:
        if self._pg is not None:
            self._cm.__exit__(*exc)


if __name__ == "__main__":
    raise SystemExit(main())
