"""Recovery benchmark: SIGKILL a worker holding tasks; how long until each task runs elsewhere?

    .venv/bin/python -m bench.recovery              # ~2.5 min (the peers' bounded wait)
    .venv/bin/python -m bench.recovery --wait 60 --tasks 4

For each system, on its own database of one throwaway redis-server and all
three at the same time (they only sleep, so they do not compete for CPU):

1. a victim worker takes ``--tasks`` "hold" tasks, whose first run blocks;
2. once every task has started on the victim, a second worker starts (and,
   for ours, the recovery loop that runs in every deployment);
3. the victim's whole process group gets SIGKILL — no shutdown code runs;
4. we wait up to ``--wait`` s for each task to start again on another process.

Ours runs with every timer at its default, the visibility timeout included
(5 min): recovery does not wait for it, nor for the worker's liveness key
(LIVENESS_TTL, 10 s): the worker named its Redis connections with its id,
and once none of them is left (the kernel closed them with the process)
recovery judges it dead on its next pass (RECOVERY_INTERVAL, 0.5 s). Celery runs with ``acks_late`` and
``task_reject_on_worker_lost`` (its at-least-once setting) on the Redis
broker, whose own visibility timeout (1 h by default) decides redelivery.
Dramatiq's Redis broker requeues the messages of a worker whose heartbeat is
older than 60 s, during a "maintenance" pass that runs on a random 0.1 % of
its commands. Each peer keeps its defaults.

The last line is ``headline: recovery seconds, best peer / ours ratio=…``
(a peer that did not recover counts as the wait).
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench import common
from bench.peers import probe

#: Longest wait for the victim to start all its tasks, in s.
START_TIMEOUT = 60.0


@dataclass
class Outcome:
    system: str
    setting: str
    tasks: int
    times: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def recovered(self) -> int:
        return len(self.times)


def _wait_starts(url: str, system: str, count: int, *, first: bool, timeout: float,
                 after: float = 0.0) -> list[dict]:
    """Wait until ``count`` distinct tasks have a (first | later) start after ``after``; return those starts."""
    found: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for s in probe.starts(url, system):
            if s["first"] == first and s["t"] >= after and s["tag"] not in found:
                found[s["tag"]] = s
        if len(found) >= count:
            break
        time.sleep(0.05)
    return list(found.values())


def _kill_and_watch(out: Outcome, url: str, system: str, victim, start_survivors: Callable[[], list],
                    wait: float) -> None:
    firsts = _wait_starts(url, system, out.tasks, first=True, timeout=START_TIMEOUT)
    if len(firsts) < out.tasks:
        out.note = f"victim started only {len(firsts)} of {out.tasks} tasks"
        return
    survivors = start_survivors()
    time.sleep(3.0)  # survivors up and idle before the crash
    t_kill = time.time()
    common.kill_process(victim)
    agains = _wait_starts(url, system, out.tasks, first=False, timeout=wait, after=t_kill)
    victim_pids = {s["pid"] for s in firsts}
    out.times = sorted(s["t"] - t_kill for s in agains if s["pid"] not in victim_pids)
    if out.recovered < out.tasks:
        out.note = f"{out.tasks - out.recovered} not recovered within {wait:.0f} s"
    for p in survivors:
        common.stop_process(p, sig=signal.SIGKILL if system != "engine" else signal.SIGTERM, grace=5)


def run_engine(url: str, tasks: int, wait: float, out: Outcome) -> None:
    from engine.queue import TaskQueue
    from engine.settings import EngineSettings

    env = {"REDIS_URL": url, "KEY_PREFIX": "benchrec", "BENCH_REDIS_URL": url}
    settings = EngineSettings.from_env(common.bench_env(env))
    out.setting = (f"visibility {settings.visibility_timeout:g} s, liveness TTL {settings.liveness_ttl:g} s, "
                   f"heartbeat {settings.heartbeat_interval:g} s, recovery every {settings.recovery_interval:g} s")
    queue = TaskQueue(common.redis_client(url), settings, ("noop", "hold"))
    for cid in range(1, tasks + 1):
        queue.enqueue("hold", cid)
    cmd = lambda: common.python_module("bench.peers.engine_app", "worker", "--types", "hold",  # noqa: E731
                                       "--concurrency", str(tasks))
    # Recovery runs in every deployment, long before a crash: it judges nobody dead during its first
    # LIVENESS_TTL (it gives the workers one TTL to beat), so it starts first and has watched for that long.
    recovery = common.spawn(common.python_module("bench.peers.engine_app", "recovery"), env=env)
    time.sleep(settings.liveness_ttl)
    victim = common.spawn(cmd(), env=env)

    def survivors() -> list:
        return [common.spawn(cmd(), env=env), recovery]

    _kill_and_watch(out, url, "engine", victim, survivors, wait)


def run_celery(url: str, tasks: int, wait: float, out: Outcome) -> None:
    env = {"BENCH_REDIS_URL": url, "BENCH_CELERY_ACKS_LATE": "1"}
    os.environ.update(env)
    from bench.peers import celery_app

    app = celery_app.app
    app.conf.broker_url = url
    vt = app.conf.broker_transport_options.get("visibility_timeout", 3600)
    out.setting = f"acks_late + reject_on_worker_lost, Redis visibility_timeout {vt:g} s (default)"
    for i in range(tasks):
        app.send_task("hold", args=[f"c{i}"])
    cmd = lambda name: [  # noqa: E731
        common.venv_script("celery"), "-A", "bench.peers.celery_app", "worker", "--pool", "prefork",
        "--concurrency", str(tasks), "-n", f"{name}@%h", "--loglevel", "WARNING",
    ]
    victim = common.spawn(cmd("victim"), env=env)
    _kill_and_watch(out, url, "celery", victim, lambda: [common.spawn(cmd("survivor"), env=env)], wait)


def run_dramatiq(url: str, tasks: int, wait: float, out: Outcome) -> None:
    env = {"BENCH_REDIS_URL": url}
    from dramatiq.brokers import redis as dredis

    out.setting = (f"Redis broker, heartbeat_timeout {dredis.DEFAULT_HEARTBEAT_TIMEOUT / 1000:g} s, maintenance on "
                   f"{dredis.DEFAULT_MAINTENANCE_CHANCE / dredis.MAINTENANCE_SCALE:.1%} of commands (defaults)")
    # The actor module binds its broker at import, so enqueue from a child that imports it with this URL.
    code = ("from bench.peers import dramatiq_app as d\n"
            f"[d.hold.send('d{{}}'.format(i)) for i in range({tasks})]\nd.broker.close()\n")
    common.spawn([common.PYTHON, "-c", code], env=env).wait(30)
    cmd = [common.venv_script("dramatiq"), "bench.peers.dramatiq_app", "--processes", "1",
           "--threads", str(tasks)]
    victim = common.spawn(cmd, env=env)
    _kill_and_watch(out, url, "dramatiq", victim, lambda: [common.spawn(cmd, env=env)], wait)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=4, help="hold tasks the victim holds when killed")
    ap.add_argument("--wait", type=float, default=120.0, help="bounded wait for a task to run elsewhere, s")
    ap.add_argument("--only", default="engine,celery,dramatiq", help="systems to run, comma separated")
    args = ap.parse_args(argv)
    common.print_machine()
    systems = {"engine": ("ours", run_engine, 0), "celery": ("Celery", run_celery, 1),
               "dramatiq": ("Dramatiq", run_dramatiq, 2)}
    chosen = [s for s in args.only.split(",") if s]
    outcomes: list[Outcome] = []
    with common.redis_server() as server:
        threads = []
        for key in chosen:
            label, fn, db = systems[key]
            url = server.url.rsplit("/", 1)[0] + f"/{db}"
            out = Outcome(label, "", args.tasks)
            outcomes.append(out)
            # Celery's app reads BENCH_* at import: run it in the main thread's environment first.
            t = threading.Thread(target=_guarded, args=(fn, url, args.tasks, args.wait, out), daemon=True)
            threads.append(t)
            t.start()
            time.sleep(0.5)
        for t in threads:
            t.join(START_TIMEOUT + args.wait + 60)
    rows = []
    for o in outcomes:
        if o.times:
            spread = f"{o.times[0]:.1f} – {o.times[-1]:.1f}"
        else:
            spread = "-"
        rows.append([o.system, o.setting, f"{o.recovered}/{o.tasks}", spread,
                     max(o.times) if o.recovered == o.tasks else float("nan"), o.note or "all recovered"])
    print()
    print(f"SIGKILL of a worker holding {args.tasks} tasks; seconds from the kill until each task started on "
          f"another worker (bounded wait {args.wait:g} s):")
    print(common.table(["system", "settings", "recovered", "seconds (first – last)", "all back after s", "note"],
                       rows))
    ours = next((o for o in outcomes if o.system == "ours"), None)
    peers = [o for o in outcomes if o.system != "ours"]
    if ours and ours.recovered == ours.tasks and peers:
        best_peer = min(max(o.times) if o.recovered == o.tasks else args.wait for o in peers)
        common.headline(f"recovery seconds, best peer (>= {best_peer:.0f} s) / ours ({max(ours.times):.1f} s)",
                        best_peer / max(ours.times))
    else:
        common.headline("recovery seconds, best peer / ours (ours did not recover)", float("nan"))
    return 0


def _guarded(fn: Callable[..., None], url: str, tasks: int, wait: float, out: Outcome) -> None:
    try:
        fn(url, tasks, wait, out)
    except Exception as exc:  # noqa: BLE001 - one system failing must not hide the others' figures
        out.note = f"failed: {type(exc).__name__}: {exc}"


if __name__ == "__main__":
    raise SystemExit(main())
