"""Engine commands: worker, producer, recovery, and the queue/worker/limit/DLQ inspection.

The long-running commands wait at start-up for Redis and the database
(logging once, with backoff; STARTUP_TIMEOUT bounds it, ``--no-wait`` and
``--once`` try once and exit 1), and then survive their outages: see
engine.loop and the worker's outage deferral.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
from typing import Any

from campaignctl.cli import Refused, UsageError, positive_int
from campaignctl.output import add_watch, console, duration, print_json, watch, when

log = logging.getLogger(__name__)


def _task_types() -> tuple[str, ...]:
    from workflow.states import TASK_TYPES

    return TASK_TYPES


def _queue_name(text: str) -> str:
    if text not in _task_types():
        raise argparse.ArgumentTypeError(f"unknown queue {text!r}; known: {', '.join(_task_types())}")
    return text


def _queue_list(text: str) -> list[str]:
    from workflow.states import TASK_TYPES

    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in TASK_TYPES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown queue(s) {', '.join(unknown) or repr(text)}; known: {', '.join(TASK_TYPES)}")
    return names


def _command(sub: argparse._SubParsersAction, name: str, func: Any, summary: str, *,  # type: ignore[type-arg]
             json_flag: bool = False, service: bool = False, once: bool = False) -> argparse.ArgumentParser:
    """Add one subcommand with the flags it shares with its siblings."""
    p = sub.add_parser(name, help=summary)
    if json_flag:
        p.add_argument("--json", action="store_true", help="machine-readable output")
    if once:
        p.add_argument("--once", action="store_true", help="one pass, then exit (1 if it failed)")
    if service:
        p.add_argument("--no-wait", action="store_true",
                       help="exit 1 at once when Redis or the database is unreachable at start-up "
                            "(default: wait for them, up to STARTUP_TIMEOUT)")
    p.set_defaults(func=func)
    return p


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = _command(sub, "worker", _worker, "run task handlers (until SIGTERM, or until empty with --burst)",
                 service=True)
    p.add_argument("--queues", type=_queue_list, default=None,
                   help="comma-separated task types to consume, in priority order (default: all, last stage "
                        "first: " + ", ".join(reversed(_task_types())) + ")")
    p.add_argument("--concurrency", type=positive_int, default=None,
                   help="handler threads (default: engine.worker.DEFAULT_CONCURRENCY, 16; polling mode 1)")
    p.add_argument("--burst", action="store_true", help="exit once the queues and this worker are empty")
    _command(sub, "producer", _producer, "start due campaigns and enqueue their first task", service=True, once=True)
    _command(sub, "recovery", _recovery,
             "requeue tasks of dead workers and lapsed leases; re-enqueue stalled campaigns", service=True, once=True)
    p = _command(sub, "queues", _queues, "tasks per queue (ready, in flight, delayed, oldest ready age, done and "
                 "failed in the last hour, paused) and dead letters", json_flag=True)
    add_watch(p)
    _command(sub, "workers", _workers, "registered workers, their liveness and current tasks", json_flag=True)
    p = _command(sub, "limits", _limits, "rate limit per API in plan units: rate, override, tokens, paused until, "
                 "calls and 429s", json_flag=True)
    change = p.add_mutually_exclusive_group()
    change.add_argument("--set", nargs=2, metavar=("API", "RATE"),
                        help="override API's plan rate at runtime, e.g. --set zillow 20/min (every worker follows "
                             "within seconds; stored in Redis until cleared)")
    change.add_argument("--clear", metavar="API", help="drop API's runtime override (back to RATE_<API> or the default)")
    p = sub.add_parser("check", help="settings valid, Redis and the database answer (a healthcheck): exit 0, 1 or 2",
                       description="Validates every setting, then pings Redis and the database once. Exit 0 when "
                                   "both answer, 1 when one is unavailable, 2 for a bad setting (one line why).")
    p.add_argument("--quiet", action="store_true", help="print nothing when all is well")
    p.set_defaults(func=_check)
    for name, verb in (("pause", "stop claiming"), ("resume", "claim again")):
        p = _command(sub, name, _pause if name == "pause" else _resume,
                     f"{verb} a queue's tasks, fleet-wide (running tasks finish; queued ones wait)")
        p.add_argument("queue", type=_queue_name, help=", ".join(_task_types()))

    p = sub.add_parser("dlq", help="dead letters: list, requeue, purge")
    dsub = p.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    _command(dsub, "list", _dlq_list, "list dead letters, oldest first", json_flag=True)
    d = _command(dsub, "show", _dlq_show, "one dead letter in full, with its campaign's state now", json_flag=True)
    d.add_argument("id", help="dead-letter id or task id")
    d = _command(dsub, "requeue", _dlq_requeue,
                 "retry the campaign of one dead letter (or all) if it is in ERROR at that step", json_flag=True)
    which = d.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", help="dead-letter id or task id")
    which.add_argument("--all", action="store_true", help="every dead letter")
    _command(dsub, "purge", _dlq_purge, "delete every dead letter", json_flag=True)


def _ctx(client_name: str | None = None) -> Any:
    from campaignctl.context import AppContext

    return AppContext(client_name=client_name)


# -- long-running commands -------------------------------------------------------------


def _services_up(ctx: Any, args: argparse.Namespace, stop: Any) -> bool:
    """Redis and the database answer (and Redis holds no work in the old key layout); False when a signal
    stopped the wait.

    Waits with the outage backoff (engine.loop.wait_until_up) unless
    ``--no-wait`` or ``--once`` (one try; a cron job or a script wants the
    exit code, not a process that hangs), up to STARTUP_TIMEOUT. An error
    that is not an outage (a bad URL) and a wait that timed out exit 1 with
    the reason. URLs are logged with their credentials masked.
    """
    from campaignctl import wiring
    from engine.redact import redact_url
    from engine.errors import describe
    from engine.loop import wait_until_up

    from campaignctl.config_check import EXIT_CONFIG, ConfigError, explain, is_redis_auth_error

    def redis_up() -> None:
        try:
            ctx.redis.ping()
            # Inside the wait: on a cluster PING answers from any node, and this reads the registry's slot,
            # whose master may be failing over right now (a restarted worker must wait it out, not exit).
            _refuse_old_layout(ctx)
        except Refused:
            raise
        except Exception as exc:
            # A wrong or missing password, or REDIS_CLUSTER not matching the server, is configuration:
            # never wait for it.
            explained = explain(exc, ctx.env)
            if explained is not None and (is_redis_auth_error(exc) or explained[0] == EXIT_CONFIG):
                raise ConfigError(explained[1]) from None
            raise

    settings = ctx.settings
    checks = (
        (f"Redis at {redact_url(settings.redis_url)}", redis_up),
        (f"the database at {redact_url(ctx.database_url)}", lambda: wiring.ping_database(ctx)),
    )
    for what, check in checks:
        try:
            if args.no_wait or getattr(args, "once", False):
                check()
            elif not wait_until_up(what, check, backoff_max=settings.outage_backoff_max,
                                   timeout=settings.startup_timeout, is_outage=wiring.database_outage, stop=stop):
                return False
        except (ConfigError, Refused):
            raise
        except Exception as exc:  # noqa: BLE001 - reported as a refusal, without a traceback
            raise Refused(f"{what} is unavailable: {describe(exc)}") from None
    return True


def _refuse_old_layout(ctx: Any) -> None:
    """A service of this version never looks at the old single-tag keys: work there would wait for nobody."""
    from engine.upgrade import old_layout_present
    from workflow.states import TASK_TYPES

    found = old_layout_present(ctx.redis, ctx.settings.key_prefix, TASK_TYPES)
    if found:
        raise Refused(f"Redis holds work in the old single-tag key layout ({', '.join(found[:3])}"
                      f"{', …' if len(found) > 3 else ''}): stop the old fleet and run `campaignctl upgrade-redis` "
                      "first (docs/deployment.md, \"Upgrading from the single-tag key layout\")")


def _worker(args: argparse.Namespace) -> int:
    from campaignctl import wiring
    from engine.identity import new_worker_id
    from engine.loop import StopFlag
    from engine.worker import DEFAULT_CONCURRENCY, Worker
    from workflow.states import TASK_TYPES

    worker_id = new_worker_id()
    ctx = _ctx(worker_id)
    # Each handler thread holds a database connection at a time: a smaller pool would starve them.
    ctx.db_concurrency = args.concurrency or DEFAULT_CONCURRENCY
    registry = wiring.build_registry(ctx, worker_id=worker_id)
    # Last stage first: a campaign near the end frees its slot before new ones start,
    # so the slow providers early in the pipeline never starve the later ones.
    queues = args.queues or list(reversed(registry.task_types))
    if not queues:
        raise Refused("no task handlers are registered (is stages.handlers installed?)")
    missing = [q for q in queues if registry.handler(q) is None]
    if missing:
        raise Refused(f"no handler registered for {', '.join(missing)}")
    # Feature flag (SPEC §3): DISPATCH_MODE=polling runs the same handlers from the legacy database polling.
    from campaignctl.polling import parse_dispatch_mode, run_polling_worker

    try:
        mode = parse_dispatch_mode(ctx.env.get("DISPATCH_MODE"))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    stop = StopFlag()
    _stop_on_signals(stop.set)
    from campaignctl import service_endpoints
    service_endpoints.start(ctx, "worker")
    if not _services_up(ctx, args, stop) or stop.is_set():
        log.info("worker %s stopped before it started", worker_id)
        return 0
    if mode == "polling":
        return run_polling_worker(store=ctx.store, registry=registry, limiter=wiring.build_limiter(ctx),
                                  max_token_sleep=ctx.settings.max_token_sleep, task_types=queues,
                                  concurrency=args.concurrency or 1, burst=args.burst, env=ctx.env)
    worker = Worker(ctx.redis, ctx.settings, registry, wiring.build_limiter(ctx), queues=queues,
                    concurrency=args.concurrency or DEFAULT_CONCURRENCY, burst=args.burst, task_types=TASK_TYPES,
                    worker_id=worker_id)
    # The ~90k objects of the imports live as long as the process: keep them out of the collector's full
    # passes, which otherwise stop every thread for ~0.1 s of CPU (several times that on a busy machine),
    # also between a rate-limit grant and its request, bunching requests at the provider (docs/reliability.md).
    gc.freeze()
    code = worker.run()
    log.info("worker %s stopped (exit %d)%s", worker_id, code,
             ", handlers still running were abandoned" if worker.left_running else "")
    if worker.left_running:
        # Handler threads still running past the grace period hold no lease any more; do not wait for them.
        logging.shutdown()
        sys.stdout.flush()
        os._exit(code)
    return code


def _producer(args: argparse.Namespace) -> int:
    from campaignctl import wiring
    from engine.identity import new_worker_id

    from engine import logcontext

    name = f"producer:{new_worker_id()}"
    logcontext.set_worker(name)  # on every JSON log line
    return _run_loop(args, lambda ctx, stop: wiring.build_producer(ctx, name, stop), client_name=name)


def _recovery(args: argparse.Namespace) -> int:
    from campaignctl import wiring
    from engine.identity import new_worker_id
    from engine.recovery import Recovery

    from engine import logcontext

    name = f"recovery:{new_worker_id()}"
    logcontext.set_worker(name)  # on every JSON log line

    def build(ctx: Any, stop: Any) -> Recovery:
        registry = wiring.build_registry(ctx, worker_id=name, handlers={})
        return Recovery(ctx.redis, ctx.settings, wiring.build_queue(ctx), registry, wiring.reconcile_source(ctx),
                        stop=stop)

    return _run_loop(args, build, client_name=name)


def _run_loop(args: argparse.Namespace, build: Any, *, client_name: str | None = None) -> int:
    """Wait for Redis and the database, then run the ServiceLoop ``build(ctx, stop)`` until SIGTERM/SIGINT."""
    from engine.loop import StopFlag

    ctx = _ctx(client_name)
    stop = StopFlag()
    _stop_on_signals(stop.set)
    from campaignctl import service_endpoints
    service_endpoints.start(ctx, args.command)
    if not _services_up(ctx, args, stop):
        log.info("%s stopped before it started (signal while waiting for Redis or the database)", args.command)
        return 0
    code = int(build(ctx, stop).run(once=args.once))
    log.info("%s stopped (exit %d)", args.command, code)
    return code


def _stop_on_signals(stop: Any) -> None:
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop())


# -- inspection ------------------------------------------------------------------------


def _print_json(data: Any) -> None:
    print_json(data)


def _when(ts: float | None) -> str:
    return when(ts)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def _queues_view(stats: dict[str, Any]) -> Any:
    from rich.console import Group
    from rich.table import Table

    hours = stats.get("window", 3600) / 3600
    table = Table(title="Queues")
    for name, justify in (("queue", "left"), ("ready", "right"), ("in flight", "right"), ("delayed", "right"),
                          ("oldest ready", "right"), (f"done {hours:g}h", "right"), (f"failed {hours:g}h", "right"),
                          ("state", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for name, q in stats["queues"].items():
        table.add_row(name, str(q["ready"]), str(q["in_flight"]), str(q["delayed"]), duration(q["oldest_ready_age"]),
                      "-" if q["processed"] is None else str(q["processed"]),
                      "-" if q["failed"] is None else str(q["failed"]),
                      "[bold yellow]PAUSED[/]" if q["paused"] else "")
    return Group(table, f"dead letters: {stats['dead_letters']}")


def _queues(args: argparse.Namespace) -> int:
    from campaignctl import operations as ops

    ctx = _ctx()
    if args.json:
        _print_json(ops.queue_stats(ctx))
        return 0
    if args.watch:
        return watch(lambda: _queues_view(ops.queue_stats(ctx)), args.watch)
    console().print(_queues_view(ops.queue_stats(ctx)))
    return 0


def _workers(args: argparse.Namespace) -> int:
    from campaignctl import wiring

    ctx = _ctx()
    keys = wiring.build_queue(ctx).keys
    raw = ctx.redis.hgetall(keys.workers)
    ids = sorted(raw)
    pipe = ctx.redis.pipeline(transaction=False)
    for worker_id in ids:
        pipe.exists(keys.worker(worker_id))
    alive = pipe.execute() if ids else []
    workers = []
    for worker_id, up in zip(ids, alive):
        info = raw[worker_id]
        try:
            entry = json.loads(info)
        except ValueError:
            entry = {"id": worker_id}
        entry["alive"] = bool(up)
        workers.append(entry)
    if args.json:
        _print_json({"workers": workers})
        return 0
    rows = [[w.get("id"), "alive" if w["alive"] else "DEAD", ",".join(w.get("queues", [])), w.get("concurrency"),
             len(w.get("current_tasks", [])), _when(w.get("heartbeat"))] for w in workers]
    print(_table(["worker", "state", "queues", "concurrency", "tasks", "last heartbeat"], rows) if rows
          else "no workers registered")
    return 0


def _limits(args: argparse.Namespace) -> int:
    from campaignctl import operations as ops

    ctx = _ctx()
    if args.set or args.clear:
        try:
            result = ops.set_rate(ctx, *args.set) if args.set else ops.clear_rate(ctx, args.clear)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        print(result.message)
        return 0
    status = ops.limits(ctx)
    if args.json:
        _print_json({"limits": status})
        return 0
    rows = [[api, s["plan"], s["override"] or "-", s["granted"], s["burst"], f"{s['tokens']:.3f}",
             when(s["paused_until"]) if s["paused_until"] else "-", s["calls"], s["throttled"]]
            for api, s in status.items()]
    print(_table(["api", "plan", "override", "granted", "burst", "tokens", "paused until", "calls", "429s"], rows))
    return 0


def _check(args: argparse.Namespace) -> int:
    """Redis (one node, or every node of a cluster: slots served, eviction policy) and the database answer."""
    from campaignctl import redis_check, wiring
    from engine.connection import connect
    from engine.redact import redact_url

    ctx = _ctx()
    client = connect(ctx.settings, check=False)  # the eviction policy is looked at below, on every node
    try:
        report = redis_check.inspect(client)
    finally:
        client.close()
    where = f"Redis{' Cluster' if report.cluster else ''} at {redact_url(ctx.settings.redis_url)}"
    for warning in report.warnings:
        print(f"campaignctl check: warning: {warning}", file=sys.stderr)
    if report.problems:
        raise Refused(f"{where}: {'; '.join(report.problems)}")
    wiring.ping_database(ctx)
    if not args.quiet:
        print(f"ok: {where} ({report.summary()}) and the database at {redact_url(ctx.database_url)} answer")
    return 0


def _pause(args: argparse.Namespace) -> int:
    from campaignctl import operations as ops

    print(ops.pause_queue(_ctx(), args.queue).message)
    return 0


def _resume(args: argparse.Namespace) -> int:
    from campaignctl import operations as ops

    print(ops.resume_queue(_ctx(), args.queue).message)
    return 0


def _dlq_list(args: argparse.Namespace) -> int:
    from campaignctl import operations as ops

    entries = ops.dead_letters(_ctx())
    if args.json:
        _print_json({"dead_letters": entries, "count": len(entries)})
        return 0
    if not entries:
        print("no dead letters")
        return 0
    rows = [[e.get("id"), e.get("task_type") or "-", e.get("campaign_id") or "-", when(e.get("at")),
             str(e.get("reason"))[:80]] for e in entries]
    print(_table(["id", "task type", "campaign", "at", "reason"], rows))
    return 0


def _dlq_show(args: argparse.Namespace) -> int:
    from campaignctl import operations as ops

    entry = ops.dead_letter(_ctx(), args.id)
    if entry is None:
        raise UsageError(f"no dead letter with id {args.id!r}")
    if args.json:
        _print_json(entry)
        return 0
    campaign = entry.get("campaign")
    where = "-" if campaign is None else campaign["campaign_status"] + (
        f":{campaign['processing_stage']}" if campaign["processing_stage"] != "idle" else "")
    task = entry.get("task")
    rows = [["id", entry.get("id")], ["task type", entry.get("task_type") or "-"],
            ["campaign", f"{entry.get('campaign_id') or '-'} (now {where})"], ["at", when(entry.get("at"))],
            ["worker", entry.get("worker_id") or "-"], ["reason", entry.get("reason")],
            ["task", json.dumps(task) if isinstance(task, dict) else str(task)]]
    print(_table(["field", "value"], rows))
    if entry.get("error"):
        print("\nerror:\n" + str(entry["error"]))
    return 0


def _dlq_requeue(args: argparse.Namespace) -> int:
    from campaignctl import operations as ops

    ctx = _ctx()
    if args.all:
        ids = [str(e.get("id")) for e in ops.dead_letters(ctx)]
    else:
        ids = [args.id]
    results = [ops.requeue_dead_letter(ctx, entry_id) for entry_id in ids]
    if args.json:
        _print_json({"results": [dict(r.to_dict(), id=i) for i, r in zip(ids, results)]})
    elif not results:
        print("no dead letters")
    code = 0
    for entry_id, result in zip(ids, results):
        if not args.json:
            if result.applied:
                print(f"dead letter {entry_id}: {result.message}")
                for line in result.queued:
                    print(line)
            else:
                print(f"campaignctl dlq requeue: {result.message}", file=sys.stderr)
        code = max(code, result.code)
    return code


def _dlq_purge(args: argparse.Namespace) -> int:
    from campaignctl import wiring

    n = wiring.build_queue(_ctx()).dlq_purge()
    if args.json:
        _print_json({"purged": n})
    else:
        print(f"purged {n} dead letter(s)")
    return 0
